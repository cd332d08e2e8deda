"""The dashboard benchmark of issue 6: worklist and API latency on a full store, and live updates in a browser.

Run from the repository root::

    python -m benchmarks.dashboard_benchmark            # 100,000 findings, 200 devices (~2-3 min on 2 cores)
    python -m benchmarks.dashboard_benchmark --quick    # a smoke run at small sizes (< 1 min)
    python -m benchmarks.dashboard_benchmark --store-url postgresql+psycopg://user@host/db   # an empty PostgreSQL

It bulk-inserts the findings and devices into a fresh store, then runs the
real thing, ``medge dashboard --config ...`` (web app + MQTT ingest, in its
own process) against a loopback Mosquitto, and measures, each figure next to
its reference in the same run:

1. the worklist page (``GET /``, logged in) and the first page of
   ``GET /api/v1/findings`` (API token), p50 and p95 over interleaved rounds,
   against the bare SQL query behind them (the worklist query compiled and
   run on a DBAPI connection, rows fetched, no ORM) - for the newest
   findings, for one site's positives, and for the new findings by score
   (budget: p95 <= 100 ms);
2. live update: a finding published over MQTT by a paho client playing an
   appliance until it is in the worklist of a logged-in headless Chromium
   (Playwright; the page stamps each row with the time it was inserted),
   against publish until the dashboard's acknowledgement reaches the
   appliance (the ingest commits, then acknowledges) - budget < 1 s.

Absolute times on a shared machine are noise; the ratios, measured side by
side, say where the time goes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
from sqlalchemy import Table

from benchmarks.report import BenchmarkReport, Figure, format_markdown, machine_facts
from benchmarks.report import format_table as report_table
from dashboard.audit import CLI_ACTOR
from dashboard.auth import create_token, create_user
from dashboard.store import Device, DeviceState, Finding, FindingState, Store, create_store
from dashboard.worklist import FindingFilter, findings_query
from sdk.messages import Ack, PackageRef, parse_message
from sdk.messages import Finding as FindingMessage
from sdk.testing.mosquitto import MosquittoBroker, free_port
from sdk.topics import TopicKind, topic

__all__ = ["FULL", "QUICK", "Settings", "format_table", "main", "run_benchmark"]

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
REPORT_DIR = REPO / "build" / "benchmarks"
CHROMIUM = Path("/usr/bin/chromium")

GROUP_QUERIES = "worklist and API on a full store"
GROUP_LIVE = "live update, MQTT publish -> browser"
P95_BUDGET_MS = 100.0
LIVE_BUDGET_S = 1.0
PASSWORD = "benchmark password 1"

_LABELS = ("nodule", "effusion", "pneumothorax", "consolidation")
_MODALITIES = ("CT", "CT", "CT", "CR", "DX", "MR")
_PACKAGE = PackageRef(name="chest-ct", version="1.2.0", precision="int8", profile="intel-xeon", sha256="b" * 64)


@dataclass(frozen=True)
class Settings:
    """How big the run is.

    Attributes:
        name: ``full`` or ``quick``.
        findings: findings stored before measuring.
        devices: appliances they come from.
        rounds: interleaved rounds of page, API and SQL per scenario (after ``warmup``).
        warmup: untimed rounds first.
        live_findings: findings published one at a time for the live figure.
    """

    name: str
    findings: int
    devices: int
    rounds: int
    warmup: int
    live_findings: int


FULL = Settings(name="full", findings=100_000, devices=200, rounds=200, warmup=10, live_findings=20)
QUICK = Settings(name="quick", findings=5_000, devices=20, rounds=20, warmup=3, live_findings=3)


@dataclass(frozen=True)
class _Scenario:
    label: str
    params: dict[str, str]
    which: FindingFilter


def _scenarios(sites: list[str]) -> list[_Scenario]:
    site = sites[len(sites) // 2]
    return [
        _Scenario("newest findings", {}, FindingFilter()),
        _Scenario(
            f"one site's positives ({site})", {"site": site, "positive": "1"}, FindingFilter(site=site, positive=True)
        ),
        _Scenario(
            "new findings, highest score first",
            {"state": "new", "sort": "score"},
            FindingFilter(state=FindingState.NEW, sort="score"),
        ),
    ]


# ----------------------------------------------------------------------------- the store


def _populate(store: Store, settings: Settings, seed: int = 6) -> tuple[list[str], float]:
    """Bulk-insert devices and findings (30 days, newest now); returns the sites and the seconds it took."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    started = time.perf_counter()
    sites = [f"site-{index:02d}" for index in range(max(1, settings.devices // 20))]
    device_rows = []
    for index in range(settings.devices):
        device_rows.append(
            {
                "site": sites[index % len(sites)],
                "device": f"appliance-{index:03d}",
                "first_seen": now - timedelta(days=30),
                "last_seen": now,
                "state": DeviceState.ONLINE,
                "state_changed_at": now - timedelta(days=1),
                "status": {"state": "online", "version": "0.4.1", "packages": [_PACKAGE.model_dump()]},
                "last_heartbeat_at": now,
                "last_heartbeat": {"queues": {"infer": rng.randint(0, 5)}, "latency_ms_p50": 40.0, "engines": []},
                "max_seq": settings.findings // settings.devices,
                "missing_count": 0,
                "findings_count": settings.findings // settings.devices,
            }
        )
    devices: Table = Device.__table__  # type: ignore[assignment]
    findings: Table = Finding.__table__  # type: ignore[assignment]
    with store.write() as session:
        session.execute(devices.insert(), device_rows)
        ids = {(row.site, row.device): row.id for row in session.query(Device.id, Device.site, Device.device)}
    span = timedelta(days=30).total_seconds()
    chunk: list[dict[str, Any]] = []
    for index in range(settings.findings):
        device = device_rows[index % settings.devices]
        created = now - timedelta(seconds=span * (1 - index / settings.findings) + rng.random())
        score = round(rng.betavariate(1.2, 4.0), 4)
        age_days = (now - created).total_seconds() / 86400
        roll = rng.random()
        state = (
            FindingState.NEW
            if age_days < 2 or roll < 0.1
            else (FindingState.ACKNOWLEDGED if roll < 0.4 else FindingState.REVIEWED)
        )
        chunk.append(
            {
                "message_id": str(uuid.UUID(int=rng.getrandbits(128))),
                "device_id": ids[(device["site"], device["device"])],
                "site": device["site"],
                "device": device["device"],
                "seq": index // settings.devices,
                "package_name": _PACKAGE.name,
                "package_version": _PACKAGE.version,
                "package_precision": _PACKAGE.precision,
                "package_profile": _PACKAGE.profile,
                "package_sha256": _PACKAGE.sha256,
                "study_ref": f"{rng.getrandbits(128):032x}",
                "series_ref": f"{rng.getrandbits(128):032x}",
                "instance_ref": f"{rng.getrandbits(128):032x}",
                "accession_number": None,
                "modality": rng.choice(_MODALITIES),
                "frame": None,
                "label": rng.choice(_LABELS),
                "score": score,
                "scores": {"finding": score, "normal": round(1 - score, 4)},
                "threshold": 0.5,
                "positive": score >= 0.5,
                "location": None,
                "flags": [],
                "latency_ms": {"decode": 4.0, "preprocess": 2.0, "infer": round(rng.uniform(20, 60), 1)},
                "created": created,
                "received_at": created + timedelta(milliseconds=40),
                "state": state,
                "state_changed_at": None if state == FindingState.NEW else created + timedelta(hours=1),
            }
        )
        if len(chunk) == 5000:
            with store.write() as session:
                session.execute(findings.insert(), chunk)
            chunk = []
    if chunk:
        with store.write() as session:
            session.execute(findings.insert(), chunk)
    if store.dialect == "postgresql":
        with store.engine.connect() as connection:
            connection.exec_driver_sql("ANALYZE")
    return sites, time.perf_counter() - started


# ----------------------------------------------------------------------------- the dashboard process


@contextlib.contextmanager
def _dashboard(config: Path) -> Iterator[str]:
    """``medge dashboard --config`` in its own process; yields its URL once it answers."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sdk.cli.main", "dashboard", "--config", str(config), "--plain-logs"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert process.stdout is not None
    lines: list[str] = []
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                raise RuntimeError("medge dashboard exited:\n" + "".join(lines))
            lines.append(line)
            found = re.search(r"on (http://\S+)", line)
            url = found.group(1) if found else None
        if url is None:
            raise RuntimeError("medge dashboard did not start:\n" + "".join(lines))
        threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()  # type: ignore[union-attr]
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()


def _login(client: httpx.Client) -> None:
    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    response = client.post("/login", data={"username": "bench", "password": PASSWORD, "csrf_token": token.group(1)})
    if response.status_code != 303:
        raise RuntimeError(f"cannot log in: {response.status_code}")


# ----------------------------------------------------------------------------- 1: queries


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _driver_statement(store: Store, which: FindingFilter) -> tuple[str, Any]:
    """The worklist query's SQL text and DBAPI parameters, as SQLAlchemy sends them to the driver."""
    with store.engine.connect() as connection:
        result = connection.execute(findings_query(which, limit=51))
        result.fetchall()
        context = result.context
        return context.statement, context.parameters[0]


def _queries(settings: Settings, store: Store, url: str, token: str, sites: list[str], report: BenchmarkReport) -> None:
    web = httpx.Client(base_url=url, timeout=30)
    api = httpx.Client(base_url=url, timeout=30, headers={"authorization": f"Bearer {token}"})
    _login(web)
    rng = random.Random(1)
    raw = store.engine.raw_connection()  # a DBAPI connection: no SQLAlchemy between the query and the rows
    try:
        for scenario in _scenarios(sites):
            sql, parameters = _driver_statement(store, scenario.which)

            def bare(sql: str = sql, parameters: Any = parameters) -> int:
                cursor = raw.cursor()
                try:
                    cursor.execute(sql, parameters)
                    return len(cursor.fetchall())
                finally:
                    cursor.close()
                    raw.rollback()

            timings: dict[str, list[float]] = {"page": [], "api": [], "sql": []}
            calls = {
                "page": lambda scenario=scenario: web.get("/", params=scenario.params),
                "api": lambda scenario=scenario: api.get("/api/v1/findings", params={"limit": "50", **scenario.params}),
                "sql": bare,
            }
            for round_index in range(settings.warmup + settings.rounds):
                order = list(calls)
                rng.shuffle(order)
                for name in order:
                    started = time.perf_counter()
                    result = calls[name]()
                    elapsed = (time.perf_counter() - started) * 1000
                    if isinstance(result, httpx.Response) and result.status_code != 200:
                        raise RuntimeError(f"{name} {scenario.label}: HTTP {result.status_code}")
                    if round_index >= settings.warmup:
                        timings[name].append(elapsed)
            sql_p95 = _percentile(timings["sql"], 0.95)
            for name, what in (("page", "worklist page GET /"), ("api", "GET /api/v1/findings, first page")):
                p95 = _percentile(timings[name], 0.95)
                report.add(
                    Figure(
                        GROUP_QUERIES,
                        f"{what} p95: {scenario.label}",
                        p95,
                        "ms",
                        "the bare SQL query behind it (p95)",
                        sql_p95,
                        p95 / sql_p95,
                        f"{p95 / sql_p95:.1f}x",
                        f"<= {P95_BUDGET_MS:.0f} ms",
                        p95 <= P95_BUDGET_MS,
                        f"p50 {statistics.median(timings[name]):.1f} ms vs SQL p50 "
                        f"{statistics.median(timings['sql']):.2f} ms; {settings.rounds} interleaved rounds",
                    )
                )
    finally:
        raw.close()
        web.close()
        api.close()


# ----------------------------------------------------------------------------- 2: live


class _Appliance:
    """A paho client publishing findings as one appliance and timing the dashboard's acknowledgements."""

    def __init__(self, port: int, site: str, device: str) -> None:
        self.site, self.device = site, device
        self.acked: dict[str, float] = {}
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{site}.{device}", protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda client, *_: client.subscribe(topic(site, device, TopicKind.ACK), qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("the benchmark appliance could not subscribe to its acks")

    def _on_message(self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        now = time.time()
        ack = parse_message(bytes(message.payload))
        if isinstance(ack, Ack):
            for message_id in ack.ids:
                self.acked.setdefault(message_id, now)

    def publish(self, finding: FindingMessage) -> float:
        sent = time.time()
        self.client.publish(topic(self.site, self.device, TopicKind.FINDING), finding.to_json(), qos=1)
        return sent

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _live(settings: Settings, url: str, broker_port: int, report: BenchmarkReport) -> None:
    if not CHROMIUM.exists():
        log.warning("%s is missing: the live figure is not measured", CHROMIUM)
        return
    from playwright.sync_api import sync_playwright

    appliance = _Appliance(broker_port, "site-live", "appliance-live")
    browser_s: list[float] = []
    ack_s: list[float] = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--headless"])
            page = browser.new_page()
            page.goto(url + "/login")
            page.fill("input[name=username]", "bench")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(url + "/")
            page.wait_for_selector("#live-status.on", timeout=15_000)
            time.sleep(0.5)
            for seq in range(settings.live_findings):
                finding = FindingMessage(
                    site="site-live",
                    device="appliance-live",
                    seq=seq,
                    package=_PACKAGE,
                    study_ref="s",
                    series_ref="s",
                    instance_ref=f"live-{seq}",
                    modality="CT",
                    label="nodule",
                    score=0.9,
                    scores={"nodule": 0.9},
                    threshold=0.5,
                    positive=True,
                )
                sent = appliance.publish(finding)
                # The newest finding is the first row; rows the feed inserted carry the time they were.
                # (A locator, not wait_for_function: the page's CSP forbids evaluating strings.)
                page.locator("tr.finding.arrived").nth(seq).wait_for(timeout=10_000)
                stamp = page.locator("tr.finding.arrived").first.get_attribute("data-arrived-at")
                arrived = int(stamp or 0) / 1000
                browser_s.append(arrived - sent)
                deadline = time.monotonic() + 10
                while finding.id not in appliance.acked and time.monotonic() < deadline:
                    time.sleep(0.005)
                ack_s.append(appliance.acked.get(finding.id, float("nan")) - sent)
                time.sleep(_pause(seq))
            browser.close()
    finally:
        appliance.close()
    p95, ack_p95 = _percentile(browser_s, 0.95), _percentile(ack_s, 0.95)
    report.add(
        Figure(
            GROUP_LIVE,
            "MQTT publish -> row in the worklist of a headless Chromium, p95",
            p95,
            "s",
            "publish -> the dashboard's Ack at the appliance (committed), p95",
            ack_p95,
            p95 / ack_p95,
            f"{p95 / ack_p95:.1f}x",
            f"< {LIVE_BUDGET_S:.0f} s",
            p95 < LIVE_BUDGET_S,
            f"{len(browser_s)} findings one at a time; browser p50 {statistics.median(browser_s) * 1000:.0f} ms, "
            f"max {max(browser_s) * 1000:.0f} ms; Ack p50 {statistics.median(ack_s) * 1000:.0f} ms; "
            "the feed polls the store every 200 ms",
        )
    )


def _pause(seq: int) -> float:
    """A pause between live findings that does not line up with the feed's 200 ms poll."""
    return 0.25 + (seq * 0.037) % 0.2


# ----------------------------------------------------------------------------- the run


def run_benchmark(settings: Settings, workdir: Path, store_url: str | None = None) -> BenchmarkReport:
    """Run every measurement in ``workdir`` (the store there too, unless ``store_url`` names an empty one)."""
    started = time.monotonic()
    report = BenchmarkReport(settings=dataclasses.asdict(settings), machine=machine_facts())
    workdir.mkdir(parents=True, exist_ok=True)
    url = store_url or f"sqlite:///{workdir / 'dashboard.sqlite'}"
    with create_store(url) as store:
        sites, seconds = _populate(store, settings)
        report.add(
            Figure(
                GROUP_QUERIES,
                f"bulk insert of {settings.findings:,} findings and {settings.devices} devices ({store.dialect})",
                seconds,
                "s",
                note=f"{settings.findings / seconds:,.0f} findings/s, 5,000 per transaction (setup, not budgeted)",
            )
        )
        create_user(store, "bench", "admin", PASSWORD, actor=CLI_ACTOR)
        token = create_token(store, "benchmark", "clinician", actor=CLI_ACTOR).secret
        with MosquittoBroker(workdir / "broker") as broker:
            config = workdir / "dashboard.toml"
            config.write_text(
                f'demo = true\ndata_dir = "{workdir}"\n[store]\nurl = "{url}"\n'
                f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\nclient_id = "dashboard-benchmark"\n'
                f"[web]\nport = {free_port()}\n",
                encoding="utf-8",
            )
            with _dashboard(config) as base:
                log.info("dashboard at %s", base)
                _queries(settings, store, base, token, sites, report)
                _live(settings, base, broker.port, report)
    report.machine["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    report.machine["store"] = store_url.split("://")[0] if store_url else "sqlite"
    report.seconds = time.monotonic() - started
    return report


def format_table(report: BenchmarkReport) -> str:
    """The report as a plain-text table (see :func:`benchmarks.report.format_table`)."""
    return report_table(report, f"dashboard (store {report.machine.get('store')})")


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (1 with ``--strict`` when a budget is missed)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.dashboard_benchmark", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run at small sizes (budgets not meaningful)")
    parser.add_argument("--store-url", help="an empty database to fill instead of a SQLite file (e.g. PostgreSQL)")
    parser.add_argument("--workdir", type=Path, help="keep the store, config and broker here (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="write the JSON report here (default: build/benchmarks/)")
    parser.add_argument("--markdown", type=Path, help="also write the figures as Markdown tables to this file")
    parser.add_argument("--strict", action="store_true", help="exit with 1 when a budget is missed")
    parser.add_argument("--verbose", "-v", action="store_true", help="log each step")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s: %(message)s"
    )
    settings = QUICK if args.quick else FULL
    if args.workdir is not None:
        report = run_benchmark(settings, args.workdir, args.store_url)
    else:
        with tempfile.TemporaryDirectory(prefix="medge-dashboard-benchmark-") as tmp:
            report = run_benchmark(settings, Path(tmp), args.store_url)
    print(format_table(report))
    out = args.json or REPORT_DIR / f"dashboard-benchmark-{settings.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report.to_json(), indent=2, default=str), encoding="utf-8")
    print(f"JSON report: {out}")
    if args.markdown is not None:
        args.markdown.write_text(format_markdown(report), encoding="utf-8")
    return 1 if args.strict and report.missed else 0


if __name__ == "__main__":
    sys.exit(main())
