"""Issue 9's fleet simulation: 1,000 simulated appliances against one Mosquitto and the dashboard on PostgreSQL.

Run from the repository root::

    python -m benchmarks.fleet_simulation                       # 1,000 devices, 120 s, 1 then 2 dashboards
    python -m benchmarks.fleet_simulation --dashboards 2        # only the shared-subscription pair
    python -m benchmarks.fleet_simulation --quick               # 50 devices, 10 s each (the harness check)

What runs, all on loopback:

* one Mosquitto (:class:`sdk.testing.mosquitto.MosquittoBroker`, no
  connection limit; this script raises its own ``RLIMIT_NOFILE`` to the hard
  limit first, which the broker inherits);
* one throwaway PostgreSQL (:mod:`sdk.testing.postgres`) with fsync and
  synchronous commits on, as on a site, a fresh database per configuration;
* one or two ``medge dashboard`` processes (web + ingest) in one share group
  (``$share/medge-dashboard/...``), each with its own stable client id; page
  latency is measured on the first one's web server;
* the appliances: paho MQTT 5 clients speaking the real contracts
  (:mod:`sdk.messages`, :mod:`sdk.topics`): a retained ``online`` status on
  connect and an ``offline`` will, a Heartbeat every 10 s (QoS 0), Findings at
  QoS 1 as a Poisson process of ``rate`` per device, kept until the
  dashboard's Ack names them and re-sent on its ``resend`` command. They are
  driven by a few worker processes, each running hundreds of clients on one
  thread with paho's external-loop API (one ``selectors`` loop: no thread per
  client).

The finding rate: a CT appliance during working hours analyses a 300-slice
study every ~10 minutes, one finding per instance: 0.5 findings/s. That is
the default ``rate`` per device: every appliance of the fleet at a busy CT's
pace, 500 findings/s for 1,000 devices (a real fleet mixes in radiography
appliances at a tenth of that).

Measured over the window (after every client is connected and a warm-up):
broker and dashboard CPU (% of one core, from ``/proc`` via psutil) and peak
RSS, PostgreSQL's CPU, the messages per second, the ingest lag (a finding's
``created`` on the device → ``received_at`` in the store, written in the
committing transaction: p50/p99) and the device's publish → Ack round trip,
the latency of the worklist (``/``) and the fleet page (``/fleet``) under load
(p50/p95, logged in, httpx), and that nothing is lost: the ids published
equal the ids stored, once each.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import heapq
import json
import logging
import multiprocessing
import os
import random
import re
import resource
import selectors
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sqlalchemy import select

from benchmarks.report import BenchmarkReport, Figure, format_markdown, machine_facts
from benchmarks.report import format_table as report_table
from dashboard.audit import CLI_ACTOR
from dashboard.auth import create_user
from dashboard.store import Finding as StoredFinding
from dashboard.store import create_store
from sdk.messages import Finding, Heartbeat, PackageRef, Status
from sdk.testing.medge_process import MedgeProcess
from sdk.testing.mosquitto import MosquittoBroker, free_port
from sdk.testing.postgres import PostgresServer, find_postgres_bin
from sdk.topics import TopicKind, topic

__all__ = ["FULL", "QUICK", "FleetResult", "FleetSettings", "format_table", "main", "run_fleet"]

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
REPORT_DIR = REPO / "build" / "benchmarks"
PASSWORD = "fleet benchmark password 1"
DEVICES_PER_SITE = 20
_PACKAGE = PackageRef(name="chest-ct-nodule", version="1.0.0", precision="int8", profile="generic", sha256="c" * 64)


@dataclass(frozen=True)
class FleetSettings:
    """How big the fleet is and how long it is measured.

    Attributes:
        name: ``full`` or ``quick``.
        devices: simulated appliances.
        duration_s: the measured window.
        rate: findings per second per device (Poisson).
        heartbeat_s: heartbeat period per device.
        workers: processes driving the clients.
        warmup_s: load before the window opens.
        drain_s: the longest wait for every finding's Ack after the window (a backlog the dashboard is behind by
            is still stored; its Acks are counted as "unacknowledged at the end" if they come later).
    """

    name: str
    devices: int
    duration_s: float
    rate: float = 0.5
    heartbeat_s: float = 10.0
    workers: int = 4
    warmup_s: float = 10.0
    drain_s: float = 300.0


FULL = FleetSettings(name="full", devices=1000, duration_s=120.0)
QUICK = FleetSettings(name="quick", devices=50, duration_s=10.0, workers=2, warmup_s=2.0, drain_s=30.0)


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# ----------------------------------------------------------------------------- the simulated appliances


class _Device:
    """One simulated appliance: a paho client driven by its worker's loop."""

    def __init__(self, site: str, device: str, port: int, rng: random.Random) -> None:
        self.site, self.device = site, device
        self.finding_topic = topic(site, device, TopicKind.FINDING)
        self.heartbeat_topic = topic(site, device, TopicKind.HEARTBEAT)
        self.status_topic = topic(site, device, TopicKind.STATUS)
        self.started = time.monotonic()
        self.seq = 0
        self.pending: dict[str, tuple[float, bytes]] = {}  # finding id -> (publish time, payload)
        self.published: list[str] = []
        self.rtts: list[float] = []
        self.acked = 0
        self.resent = 0
        self.heartbeats = 0
        self.connected = False
        self.connects = 0
        self.rng = rng
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"fleet.{site}.{device}", protocol=mqtt.MQTTv5)
        client.max_inflight_messages_set(100)
        client.max_queued_messages_set(0)
        offline = Status(site=site, device=device, state="offline")
        client.will_set(self.status_topic, offline.to_json(), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self.client = client
        self.port = port

    def connect(self) -> None:
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 600
        self.client.connect("127.0.0.1", self.port, keepalive=60, clean_start=False, properties=properties)

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.warning("%s/%s refused: %s", self.site, self.device, reason)
            return
        self.connected = True
        self.connects += 1
        client.subscribe(
            [(topic(self.site, self.device, TopicKind.ACK), 1), (topic(self.site, self.device, TopicKind.CMD), 1)]
        )
        online = Status(site=self.site, device=self.device, state="online", packages=[_PACKAGE], version="fleet-sim")
        client.publish(self.status_topic, online.to_json(), qos=1, retain=True)

    def _on_disconnect(self, *_args: Any) -> None:
        self.connected = False

    def _on_message(self, client: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        body = json.loads(message.payload)
        if body.get("schema") == "medge.ack/1":
            for finding_id in body.get("ids", []):
                sent = self.pending.pop(finding_id, None)
                if sent is not None:
                    self.rtts.append(now - sent[0])
                    self.acked += 1
        elif body.get("schema") == "medge.cmd/1" and body.get("command") == "resend":
            for _, payload in list(self.pending.values()):
                client.publish(self.finding_topic, payload, qos=1)
                self.resent += 1

    def publish_finding(self) -> None:
        score = round(self.rng.betavariate(1.2, 4.0), 4)
        finding = Finding(
            site=self.site,
            device=self.device,
            seq=self.seq,
            package=_PACKAGE,
            study_ref=uuid.uuid4().hex,
            series_ref=uuid.uuid4().hex,
            instance_ref=uuid.uuid4().hex,
            modality="CT",
            label="nodule",
            score=score,
            scores={"nodule": score},
            threshold=0.5,
            positive=score >= 0.5,
            latency_ms={"decode": 4.0, "preprocess": 2.0, "infer": 30.0, "total": 36.0},
        )
        self.seq += 1
        payload = finding.to_json()
        self.pending[finding.id] = (time.monotonic(), payload)
        self.published.append(finding.id)
        self.client.publish(self.finding_topic, payload, qos=1)

    def publish_heartbeat(self) -> None:
        heartbeat = Heartbeat(
            site=self.site,
            device=self.device,
            uptime_s=time.monotonic() - self.started,
            queues={"decode": 0, "infer": self.rng.randint(0, 3)},
            latency_ms_p50=36.0,
            latency_ms_p95=55.0,
            disk_free_bytes=50 * 1024**3,
            outbox_depth=len(self.pending),
        )
        self.client.publish(self.heartbeat_topic, heartbeat.to_json(), qos=0)
        self.heartbeats += 1


def _worker(
    index: int,
    devices: list[tuple[str, str]],
    port: int,
    settings_json: str,
    ready: Any,
    go: Any,
    stop: Any,
    results: Any,
) -> None:
    """Drive ``devices`` on one selectors loop; report when connected and, after ``stop`` and the drain, results."""
    settings = FleetSettings(**json.loads(settings_json))
    rng = random.Random(index)
    selector = selectors.DefaultSelector()
    sims = [_Device(site, device, port, random.Random(f"{index}/{device}")) for site, device in devices]
    registered: dict[_Device, Any] = {}

    def register(sim: _Device) -> None:
        sock = sim.client.socket()
        if sock is None:
            return
        old = registered.get(sim)
        if old is not None and old is not sock:
            with contextlib.suppress(KeyError, ValueError):
                selector.unregister(old)
        if old is not sock:
            selector.register(sock, selectors.EVENT_READ, sim)
            registered[sim] = sock

    def service(timeout: float) -> None:
        for key, _ in selector.select(timeout):
            sim = key.data
            if sim.client.loop_read() != mqtt.MQTT_ERR_SUCCESS:
                with contextlib.suppress(KeyError, ValueError):
                    selector.unregister(key.fileobj)
                registered.pop(sim, None)
        for sim in sims:
            if sim.client.want_write():
                sim.client.loop_write()

    for number, sim in enumerate(sims):
        sim.connect()
        register(sim)
        if number % 25 == 24:
            service(0)
    deadline = time.monotonic() + 120
    while not all(sim.connected for sim in sims) and time.monotonic() < deadline:
        service(0.05)
    ready.put((index, sum(sim.connected for sim in sims)))

    events: list[tuple[float, int, int, str]] = []  # (due, tiebreak, sim index, kind)
    now = time.monotonic()
    for number in range(len(sims)):
        heapq.heappush(events, (now + rng.uniform(0, settings.heartbeat_s), rng.getrandbits(32), number, "hb"))
    publishing = False
    stopped_at: float | None = None
    last_misc = now
    while True:
        now = time.monotonic()
        if not publishing and stopped_at is None and go.is_set():
            publishing = True
            for number in range(len(sims)):
                heapq.heappush(events, (now + rng.expovariate(settings.rate), rng.getrandbits(32), number, "finding"))
        if publishing and stop.is_set():
            publishing, stopped_at = False, now
        while events and events[0][0] <= now:
            due, _, number, kind = heapq.heappop(events)
            sim = sims[number]
            if kind == "hb":
                if sim.connected:
                    sim.publish_heartbeat()
                heapq.heappush(events, (due + settings.heartbeat_s, rng.getrandbits(32), number, "hb"))
            elif publishing:
                if sim.connected:
                    sim.publish_finding()
                heapq.heappush(events, (due + rng.expovariate(settings.rate), rng.getrandbits(32), number, "finding"))
        if now - last_misc >= 1.0:
            last_misc = now
            for sim in sims:
                sim.client.loop_misc()
                if not sim.connected and sim.client.socket() is None:
                    with contextlib.suppress(OSError):
                        sim.client.reconnect()
                register(sim)
        if stopped_at is not None and (not any(sim.pending for sim in sims) or now - stopped_at > settings.drain_s):
            break
        service(0.02)

    results.put(
        {
            "worker": index,
            "published": [finding_id for sim in sims for finding_id in sim.published],
            "unacked": sum(len(sim.pending) for sim in sims),
            "acked": sum(sim.acked for sim in sims),
            "rtts": [rtt for sim in sims for rtt in sim.rtts],
            "heartbeats": sum(sim.heartbeats for sim in sims),
            "resent": sum(sim.resent for sim in sims),
            "connects": sum(sim.connects for sim in sims),
        }
    )
    for sim in sims:
        sim.client.disconnect()
        with contextlib.suppress(Exception):
            sim.client.loop_write()


# ----------------------------------------------------------------------------- the servers


def raise_file_limit() -> int:
    """Raise this process's open-file limit to the hard limit (the broker started from here inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class _Dashboard:
    """One ``medge dashboard`` process (web + ingest) on the shared subscription."""

    def __init__(self, work: Path, number: int, broker_port: int, store_url: str, heartbeat_s: float) -> None:
        self.root = work / f"dashboard-{number}"
        self.root.mkdir(parents=True, exist_ok=True)
        self.web_port = free_port()
        self.url = f"http://127.0.0.1:{self.web_port}"
        self.config = self.root / "dashboard.toml"
        self.config.write_text(
            f'demo = true\ndata_dir = "{self.root}"\n[store]\nurl = "{store_url}"\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {broker_port}\nclient_id = "fleet-dashboard-{number}"\n'
            f"[web]\nport = {self.web_port}\n[fleet]\nheartbeat_interval_s = {heartbeat_s}\n",
            encoding="utf-8",
        )
        self.child = MedgeProcess(
            ["dashboard", "--config", str(self.config), "--plain-logs"], self.root / "dashboard.log", cwd=REPO
        )

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self.child.process

    def start(self) -> None:
        self.child.start()

    def wait(self, timeout: float = 60.0) -> None:
        self.child.wait_http(self.url + "/healthz", timeout)

    def stop(self) -> None:
        self.child.signal(signal.SIGTERM, 30)


class _CpuMeter:
    """CPU seconds and peak RSS of some processes (and, for PostgreSQL, their children) over a window."""

    def __init__(self, pids: Sequence[int], children: bool = False) -> None:
        self.roots = [psutil.Process(pid) for pid in pids]
        self.children = children
        self.start: dict[int, float] = {}
        self.peak_rss = 0
        self.started = 0.0

    def _processes(self) -> list[psutil.Process]:
        found = list(self.roots)
        if self.children:
            for root in self.roots:
                with contextlib.suppress(psutil.Error):
                    found += root.children(recursive=True)
        return found

    def _times(self) -> dict[int, float]:
        times = {}
        rss = 0
        for process in self._processes():
            with contextlib.suppress(psutil.Error):
                cpu = process.cpu_times()
                times[process.pid] = cpu.user + cpu.system
                rss += process.memory_info().rss
        self.peak_rss = max(self.peak_rss, rss)
        return times

    def begin(self) -> None:
        self.started = time.monotonic()
        self.start = self._times()

    def sample(self) -> None:
        self._times()

    def percent(self) -> float:
        """CPU over the window in % of one core."""
        end = self._times()
        seconds = sum(value - self.start.get(pid, 0.0) for pid, value in end.items())
        return 100.0 * seconds / max(1e-9, time.monotonic() - self.started)


def _postmaster_pid(server: PostgresServer) -> int:
    return int((server.data / "postmaster.pid").read_text().splitlines()[0])


def _login(client: httpx.Client) -> None:
    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    if token is None:
        raise RuntimeError("no login form")
    response = client.post("/login", data={"username": "fleet", "password": PASSWORD, "csrf_token": token.group(1)})
    if response.status_code != 303:
        raise RuntimeError(f"cannot log in: {response.status_code}")


def _pages(url: str, stop: threading.Event, timings: dict[str, list[float]], errors: list[str]) -> None:
    """Worklist and fleet page, alternately, until ``stop`` (one browser's worth of clicking)."""
    with httpx.Client(base_url=url, timeout=30) as client:
        _login(client)
        while not stop.is_set():
            for path in ("/", "/fleet"):
                started = time.perf_counter()
                response = client.get(path)
                elapsed = (time.perf_counter() - started) * 1000
                if response.status_code != 200:
                    errors.append(f"{path}: HTTP {response.status_code}")
                timings[path].append(elapsed)
                stop.wait(0.25)


# ----------------------------------------------------------------------------- one configuration


@dataclass
class FleetResult:
    """One configuration's figures."""

    dashboards: int
    devices: int
    connected: int
    window_s: float
    findings_published: int
    findings_stored: int
    findings_lost: int
    findings_duplicated: int
    unacked_at_end: int
    resent: int
    heartbeats: int
    messages_per_s: float
    lag_ms: dict[str, float]
    ack_rtt_ms: dict[str, float]
    broker_cpu_pct: float
    broker_rss_mb: float
    dashboard_cpu_pct: float
    dashboard_rss_mb: float
    postgres_cpu_pct: float
    simulator_cpu_pct: float
    page_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    page_errors: list[str] = field(default_factory=list)


@contextlib.contextmanager
def _workers(settings: FleetSettings, port: int) -> Iterator[tuple[list[Any], Any, Any, Any, Any]]:
    context = multiprocessing.get_context("spawn")
    ready, results = context.Queue(), context.Queue()
    go, stop = context.Event(), context.Event()
    names = [(f"site-{n // DEVICES_PER_SITE:02d}", f"appliance-{n:04d}") for n in range(settings.devices)]
    workers = max(1, min(settings.workers, settings.devices))
    processes = [
        context.Process(
            target=_worker,
            args=(w, names[w::workers], port, json.dumps(dataclasses.asdict(settings)), ready, go, stop, results),
            daemon=True,
        )
        for w in range(workers)
    ]
    for process in processes:
        process.start()
    try:
        yield processes, ready, go, stop, results
    finally:
        stop.set()
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join()


def run_configuration(settings: FleetSettings, dashboards: int, postgres: PostgresServer, work: Path) -> FleetResult:
    """One broker, a fresh database, ``dashboards`` dashboard processes and the fleet; measured over the window."""
    database = postgres.create_database()
    url = postgres.url(database)
    with create_store(url) as store:
        create_user(store, "fleet", "admin", PASSWORD, actor=CLI_ACTOR)
    broker = MosquittoBroker(work / f"broker-{dashboards}", extra_config="max_connections -1\nset_tcp_nodelay true\n")
    broker.start()
    servers = [_Dashboard(work, n + 1, broker.port, url, settings.heartbeat_s) for n in range(dashboards)]
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait()
        time.sleep(1.0)  # the ingests subscribe in the background
        with _workers(settings, broker.port) as (processes, ready, go, stop, results):
            connected = sum(ready.get(timeout=180)[1] for _ in processes)
            log.info("%d dashboard(s): %d of %d devices connected", dashboards, connected, settings.devices)
            go.set()
            time.sleep(settings.warmup_s)
            assert broker.process is not None
            meters = {
                "broker": _CpuMeter([broker.process.pid]),
                "dashboard": _CpuMeter([s.process.pid for s in servers if s.process is not None]),
                "postgres": _CpuMeter([_postmaster_pid(postgres)], children=True),
                "simulator": _CpuMeter([p.pid for p in processes if p.pid is not None]),
            }
            for meter in meters.values():
                meter.begin()
            timings: dict[str, list[float]] = {"/": [], "/fleet": []}
            errors: list[str] = []
            page_stop = threading.Event()
            pages = threading.Thread(target=_pages, args=(servers[0].url, page_stop, timings, errors), daemon=True)
            pages.start()
            window_start = time.monotonic()
            while time.monotonic() - window_start < settings.duration_s:
                time.sleep(1.0)
                for meter in meters.values():
                    meter.sample()
            cpu = {name: meter.percent() for name, meter in meters.items()}
            window = time.monotonic() - window_start
            page_stop.set()
            pages.join(30)
            stop.set()
            reports = [results.get(timeout=settings.drain_s + 60) for _ in processes]
    finally:
        for server in servers:
            server.stop()
        broker.stop()
    published = [finding_id for report in reports for finding_id in report["published"]]
    with create_store(url) as store, store.session() as session:
        rows = session.execute(select(StoredFinding.message_id, StoredFinding.created, StoredFinding.received_at)).all()
    stored_ids = [row[0] for row in rows]
    lags = [(row[2] - row[1]).total_seconds() * 1000 for row in rows]
    rtts = [rtt * 1000 for report in reports for rtt in report["rtts"]]
    total_s = settings.warmup_s + window
    heartbeats = sum(report["heartbeats"] for report in reports)
    acks = sum(report["acked"] for report in reports)
    result = FleetResult(
        dashboards=dashboards,
        devices=settings.devices,
        connected=connected,
        window_s=round(window, 1),
        findings_published=len(published),
        findings_stored=len(stored_ids),
        findings_lost=len(set(published) - set(stored_ids)),
        findings_duplicated=len(stored_ids) - len(set(stored_ids)),
        unacked_at_end=sum(report["unacked"] for report in reports),
        resent=sum(report["resent"] for report in reports),
        heartbeats=heartbeats,
        # Device → broker → dashboard (findings, heartbeats) and back (one Ack per batch and device, at most per
        # finding): the finding count stands for both directions.
        messages_per_s=round((len(published) + heartbeats) / total_s, 1),
        lag_ms={"p50": _percentile(lags, 0.5), "p99": _percentile(lags, 0.99), "max": max(lags, default=float("nan"))},
        ack_rtt_ms={"p50": _percentile(rtts, 0.5), "p99": _percentile(rtts, 0.99)},
        broker_cpu_pct=round(cpu["broker"], 1),
        broker_rss_mb=round(meters["broker"].peak_rss / 2**20, 1),
        dashboard_cpu_pct=round(cpu["dashboard"], 1),
        dashboard_rss_mb=round(meters["dashboard"].peak_rss / 2**20, 1),
        postgres_cpu_pct=round(cpu["postgres"], 1),
        simulator_cpu_pct=round(cpu["simulator"], 1),
        page_ms={
            path: {"p50": statistics.median(values) if values else float("nan"), "p95": _percentile(values, 0.95)}
            for path, values in timings.items()
        },
        page_errors=errors[:10],
    )
    log.info("acks received by the devices: %d", acks)
    return result


# ----------------------------------------------------------------------------- the run


def run_fleet(settings: FleetSettings, dashboards: Sequence[int], work: Path) -> tuple[BenchmarkReport, list[Any]]:
    """Each configuration in turn on one PostgreSQL; the report has its figures and the 2-vs-1 ratios."""
    bin_dir = find_postgres_bin()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is not installed (/usr/lib/postgresql/*/bin): run `make test` once")
    limit = raise_file_limit()
    needed = settings.devices * 3 + 200  # per client: its socket and paho's wake-up socket pair; the broker: one
    if limit < needed:
        raise RuntimeError(f"the open-file limit is {limit}; {settings.devices} devices need about {needed}")
    started = time.monotonic()
    report = BenchmarkReport(
        settings={"benchmark": "fleet", "name": settings.name, **dataclasses.asdict(settings)}, machine=machine_facts()
    )
    results: list[FleetResult] = []
    server = PostgresServer(bin_dir, durable=True, max_connections=300)
    server.start()
    try:
        for count in dashboards:
            results.append(run_configuration(settings, count, server, work))
    finally:
        server.stop()
    for result in results:
        _figures(report, settings, result)
    if len(results) == 2:
        _ratios(report, results[0], results[1])
    report.seconds = time.monotonic() - started
    report.machine["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    return report, results


def _figures(report: BenchmarkReport, settings: FleetSettings, r: FleetResult) -> None:
    group = f"{r.devices} devices, {r.dashboards} dashboard process{'es' if r.dashboards > 1 else ''}"
    fleet_rate = settings.rate * r.devices
    report.add(
        Figure(
            group,
            "findings lost or stored twice (published vs stored)",
            float(r.findings_lost + r.findings_duplicated),
            "",
            budget="== 0",
            met=r.findings_lost == 0 and r.findings_duplicated == 0,
            note=f"published {r.findings_published}, stored {r.findings_stored}, lost {r.findings_lost}, "
            f"duplicated {r.findings_duplicated}, unacknowledged at the end {r.unacked_at_end}, re-sent {r.resent}; "
            f"{r.connected}/{r.devices} connected",
        )
    )
    report.add(
        Figure(
            group,
            "messages/s device → dashboard (findings + heartbeats)",
            r.messages_per_s,
            "/s",
            note=f"findings offered {fleet_rate:.0f}/s ({settings.rate:g}/s per device), heartbeats every "
            f"{settings.heartbeat_s:g} s; window {r.window_s:g} s",
        )
    )
    report.add(
        Figure(
            group,
            "ingest lag p99: finding created → committed in the store",
            r.lag_ms["p99"],
            "ms",
            note=f"p50 {r.lag_ms['p50']:.0f} ms, max {r.lag_ms['max']:.0f} ms; device publish → Ack p50 "
            f"{r.ack_rtt_ms['p50']:.0f} ms, p99 {r.ack_rtt_ms['p99']:.0f} ms",
        )
    )
    report.add(
        Figure(
            group,
            "broker CPU (% of one core)",
            r.broker_cpu_pct,
            "%",
            note=f"Mosquitto peak RSS {r.broker_rss_mb:.0f} MB",
        )
    )
    report.add(
        Figure(
            group,
            "dashboard CPU (% of one core, all processes)",
            r.dashboard_cpu_pct,
            "%",
            note=f"peak RSS {r.dashboard_rss_mb:.0f} MB; PostgreSQL {r.postgres_cpu_pct:.0f} %; "
            f"simulators {r.simulator_cpu_pct:.0f} %",
        )
    )
    for path, name in (("/", "worklist page GET /"), ("/fleet", "fleet page GET /fleet")):
        figures = r.page_ms[path]
        report.add(
            Figure(
                group,
                f"{name} p95 under load",
                figures["p95"],
                "ms",
                note=f"p50 {figures['p50']:.0f} ms" + (f"; errors: {r.page_errors}" if r.page_errors else ""),
            )
        )


def _ratios(report: BenchmarkReport, one: FleetResult, two: FleetResult) -> None:
    group = "scale-out: 2 dashboard processes vs 1"
    for name, a, b, unit in (
        ("ingest lag p99", one.lag_ms["p99"], two.lag_ms["p99"], "ms"),
        ("ingest lag p50", one.lag_ms["p50"], two.lag_ms["p50"], "ms"),
        ("dashboard CPU, all processes", one.dashboard_cpu_pct, two.dashboard_cpu_pct, "%"),
        ("worklist page p95", one.page_ms["/"]["p95"], two.page_ms["/"]["p95"], "ms"),
        ("fleet page p95", one.page_ms["/fleet"]["p95"], two.page_ms["/fleet"]["p95"], "ms"),
        ("broker CPU", one.broker_cpu_pct, two.broker_cpu_pct, "%"),
    ):
        ratio = b / a if a else float("nan")
        report.add(Figure(group, name, b, unit, "1 dashboard process", a, ratio, f"{ratio:.2f}x"))


def format_table(report: BenchmarkReport) -> str:
    """The report as a plain-text table (see :func:`benchmarks.report.format_table`)."""
    return report_table(report, "fleet simulation")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run, print the table, write the JSON; exit 1 when a finding was lost or stored twice."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fleet_simulation", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="50 devices for 10 s per configuration")
    parser.add_argument("--devices", type=int, help="simulated appliances (default 1000; quick 50)")
    parser.add_argument("--duration", type=float, help="measured window in seconds (default 120; quick 10)")
    parser.add_argument("--rate", type=float, help="findings per second per device (default 0.5)")
    parser.add_argument(
        "--dashboards", default="1,2", help="dashboard processes: 1, 2, or 1,2 for both and the ratios (default)"
    )
    parser.add_argument("--workers", type=int, help="simulator processes (default 4; quick 2)")
    parser.add_argument(
        "--json", type=Path, help="the JSON report (default: build/benchmarks/fleet-simulation-NAME.json)"
    )
    parser.add_argument("--markdown", type=Path, help="also write the figures as Markdown tables to this file")
    parser.add_argument("--verbose", "-v", action="store_true", help="log each step")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s")
    for noisy in ("httpx", "alembic", "dashboard.store"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = QUICK if args.quick else FULL
    changes: dict[str, Any] = {}
    if args.devices is not None:
        changes["devices"] = max(1, args.devices)
    if args.duration is not None:
        changes["duration_s"] = max(1.0, args.duration)
    if args.rate is not None:
        changes["rate"] = max(0.001, args.rate)
    if args.workers is not None:
        changes["workers"] = max(1, args.workers)
    settings = dataclasses.replace(settings, **changes)
    counts = [int(part) for part in str(args.dashboards).split(",") if part.strip()]
    if not counts or any(count not in (1, 2) for count in counts):
        parser.error("--dashboards takes 1, 2 or 1,2")
    with tempfile.TemporaryDirectory(prefix="medge-fleet-") as tmp:
        report, results = run_fleet(settings, counts, Path(tmp))
    print(format_table(report))
    data = report.to_json() | {"configurations": [dataclasses.asdict(result) for result in results]}
    out = args.json or REPORT_DIR / f"fleet-simulation-{settings.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    print(f"JSON report: {out}")
    if args.markdown is not None:
        args.markdown.write_text(format_markdown(report), encoding="utf-8")
    return 1 if report.missed else 0


if __name__ == "__main__":
    sys.exit(main())
