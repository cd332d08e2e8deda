"""Findings from one appliance's durable outbox through Mosquitto into the dashboard's durable store, per second.

Issue 5's budget: >= 5,000 findings/s sustained with nothing lost, reported
next to paho's bare QoS 1 publish rate into the same broker in the same run.

Each round, in alternating order:

* **bare paho**: one paho-mqtt client publishes the same finding payloads at
  QoS 1 (in-flight window 100, as the reporter uses) to a real Mosquitto on
  loopback; the rate counts until the last PUBACK. Nothing is stored.
* **medge**: the appliance's work queue holds the findings in its outbox
  (filled before the clock starts, one durable transaction per analysed
  instance, as the runtime writes them); the :class:`runtime.reporting.Reporter`
  publishes them, the dashboard's :class:`dashboard.ingest.IngestService` (its
  own process, as on a real site) validates, commits them to its SQLite store
  (WAL, ``synchronous=FULL``) and acknowledges; the clock stops when the
  outbox holds no unacknowledged finding. Then the store is checked: every
  finding exactly once, no sequence gap.

Then the outage scenario (issue 5: >= 1,000 findings/s backlog drain): the
broker is stopped for ``outage_s`` while the appliance keeps producing
findings; when it is back, the clock measures how fast the backlog drains
into the store, and the store is checked again.

Run ``python -m benchmarks.mqtt_benchmark [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from sqlalchemy import func, select

from benchmarks.report import BenchmarkReport, Figure, format_markdown, format_table, machine_facts
from dashboard.ingest import IngestService
from dashboard.settings import DashboardConfig
from dashboard.store import Finding as StoredFinding
from dashboard.store import create_store
from runtime.reporting import Reporter
from runtime.work_queue import InstanceState, WorkQueue
from sdk.appliance_config import ApplianceConfig
from sdk.messages import Finding, PackageRef, finding_id
from sdk.testing.mosquitto import MosquittoBroker
from sdk.topics import TopicKind, topic

__all__ = ["main"]

log = logging.getLogger(__name__)

SITE, DEVICE = "bench-site", "ct-1"
PACKAGE = PackageRef(name="chest-ct-nodule", version="1.0.0", precision="int8", profile="generic", sha256="ab" * 32)
BUDGET_PER_S = 5000.0
WINDOW = 100


def _finding(sop: str) -> Finding:
    return Finding(
        id=finding_id(sop, PACKAGE.sha256, origin=f"{SITE}/{DEVICE}"),
        site=SITE,
        device=DEVICE,
        seq=0,
        package=PACKAGE,
        study_ref="5" * 32,
        series_ref="7" * 32,
        instance_ref=uuid.uuid5(uuid.NAMESPACE_OID, sop).hex,
        modality="CT",
        label="nodule",
        score=0.71,
        scores={"nodule": 0.71},
        threshold=0.35,
        positive=True,
        latency_ms={"receive": 1.2, "decode": 0.8, "preprocess": 0.6, "infer": 1.9, "postprocess": 0.1, "total": 4.6},
    )


def fill_outbox(queue: WorkQueue, count: int, tag: str) -> None:
    """One instance, one finding, one durable transaction each: the way the runtime writes them."""
    for index in range(count):
        sop = f"1.2.826.0.1.3680043.10.{tag}.{index}"
        queue.add_received(
            spool_path=f"/spool/{sop}.dcm",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            sop_instance_uid=sop,
            study_instance_uid="1.2.826.0.1.3680043.10.1",
            series_instance_uid="1.2.826.0.1.3680043.10.1.1",
            calling_ae="SCANNER",
            association_id=None,
            transfer_syntax="1.2.840.10008.1.2.1",
            size=1,
            durable=False,
        )
        queue.advance(sop, InstanceState.DECODED)
        queue.record_findings(sop, [_finding(sop)])


def bare_paho_rate(port: int, payloads: Sequence[bytes]) -> float:
    """Findings/s of one paho client publishing at QoS 1 until the last PUBACK (nothing stored)."""
    done = threading.Event()
    acked = 0

    def on_publish(*_args: object) -> None:
        nonlocal acked
        acked += 1
        if acked == len(payloads):
            done.set()

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"bare-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
    )
    client.max_inflight_messages_set(WINDOW)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    name = topic(SITE, "bare", TopicKind.FINDING)
    try:
        start = time.perf_counter()
        for payload in payloads:
            client.publish(name, payload, qos=1)
        if not done.wait(120):
            raise RuntimeError(f"bare paho: only {acked} of {len(payloads)} PUBACKs")
        return len(payloads) / (time.perf_counter() - start)
    finally:
        client.disconnect()
        client.loop_stop()


def _run_ingest(config_json: str, ready: Any, stop: Any) -> None:
    """The dashboard's ingest in its own process until ``stop`` is set."""
    ingest = IngestService(DashboardConfig.model_validate_json(config_json))
    ingest.start()
    if ingest.wait_ready(30):
        ready.set()
    stop.wait()
    ingest.stop()


class _Dashboard:
    """The ingest in a spawned process (a site's dashboard is not in the appliance's process)."""

    def __init__(self, config: DashboardConfig) -> None:
        create_store(config.store_url).close()  # migrate once, before the child opens it
        context = multiprocessing.get_context("spawn")
        self._ready, self._stop = context.Event(), context.Event()
        self._process = context.Process(
            target=_run_ingest, args=(config.model_dump_json(), self._ready, self._stop), daemon=True
        )

    def __enter__(self) -> _Dashboard:
        self._process.start()
        if not self._ready.wait(60):
            self._process.kill()
            raise RuntimeError("the dashboard ingest did not connect")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._process.join(30)
        if self._process.is_alive():
            self._process.kill()


def _configs(port: int, data: Path, tag: str) -> tuple[ApplianceConfig, DashboardConfig]:
    appliance = ApplianceConfig(
        appliance={"site": SITE, "device": DEVICE, "demo": True, "data_dir": data / "appliance"},
        mqtt={
            "host": "127.0.0.1",
            "port": port,
            "client_id": f"medge-bench-{tag}",
            "reconnect_min_s": 0.2,
            "reconnect_max_s": 1.0,
        },
    )
    # One dashboard client id for every round, as a restarted dashboard has: a retired id's session would stay in
    # the shared subscription (until it expires) and take its share of the messages, re-sent only by the timer.
    dashboard = DashboardConfig(
        data_dir=data / "dashboard", demo=True, mqtt={"host": "127.0.0.1", "port": port, "client_id": "dashboard-1"}
    )
    (data / "appliance").mkdir(parents=True)
    return appliance, dashboard


def _wait_drained(queue: WorkQueue, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while queue.depth() and time.monotonic() < deadline:
        time.sleep(0.005)
    if queue.depth():
        raise RuntimeError(f"{queue.depth()} findings still unacknowledged after {timeout:.0f} s")


def medge_rate(port: int, work: Path, count: int, round_no: int) -> tuple[float, int, int]:
    """Findings/s from the outbox into the store, acknowledged end to end; (rate, rows stored, sequence gaps)."""
    appliance, dashboard = _configs(port, work / f"round-{round_no}", str(round_no))
    queue = WorkQueue(appliance.appliance.data_dir / "queue.sqlite")
    fill_outbox(queue, count, f"{round_no}{uuid.uuid4().int % 10**6}")
    with _Dashboard(dashboard):
        reporter = Reporter(appliance, queue)
        try:
            start = time.perf_counter()
            reporter.start()
            _wait_drained(queue)
            elapsed = time.perf_counter() - start
        finally:
            reporter.stop()
            queue.close()
    rows, gaps = _check_store(dashboard)
    return count / elapsed, rows, gaps


def outage_drain(broker: MosquittoBroker, work: Path, outage_s: float, per_s: float) -> tuple[float, int, int, int]:
    """Broker down for ``outage_s`` while findings keep coming; (drain rate, backlog, rows stored, gaps)."""
    appliance, dashboard = _configs(broker.port, work / "outage", "outage")
    queue = WorkQueue(appliance.appliance.data_dir / "queue.sqlite")
    produced = 0
    with _Dashboard(dashboard):
        reporter = Reporter(appliance, queue)
        reporter.start()
        try:
            if not reporter.wait_connected(30):
                raise RuntimeError("the reporter did not connect")
            time.sleep(1.0)  # its retained "online" status registers the device with the dashboard
            broker.stop()
            started = time.monotonic()
            while (elapsed := time.monotonic() - started) < outage_s:
                due = int(elapsed * per_s) - produced
                if due > 0:
                    fill_outbox(queue, due, f"o{produced}")
                    produced += due
                time.sleep(0.01)
            backlog = queue.depth()
            broker.start()
            start = time.perf_counter()
            _wait_drained(queue)
            drain = time.perf_counter() - start
        finally:
            reporter.stop()
            queue.close()
    rows, gaps = _check_store(dashboard)
    return backlog / drain, backlog, rows - produced, gaps


def _check_store(dashboard: DashboardConfig) -> tuple[int, int]:
    """Rows stored for the device and sequence gaps; raises if a finding was stored twice."""
    store = create_store(dashboard.store_url)
    with store.session() as session:
        rows = session.scalar(select(func.count()).select_from(StoredFinding).where(StoredFinding.device == DEVICE))
        distinct = session.scalar(
            select(func.count(func.distinct(StoredFinding.seq))).where(StoredFinding.device == DEVICE)
        )
    gaps = len(store.sequence_gaps(SITE, DEVICE))
    store.close()
    if rows != distinct:
        raise RuntimeError(f"{rows} rows but {distinct} distinct sequence numbers: a finding was stored twice")
    return int(rows or 0), gaps


def run(count: int, rounds: int, work: Path, outage_s: float, outage_rate: float) -> BenchmarkReport:
    """Alternate bare and medge rounds on one broker (medians over rounds), then the outage scenario."""
    settings = {"benchmark": "MQTT", "name": f"{count} findings x {rounds}", "findings": count, "rounds": rounds}
    settings |= {"window": WINDOW, "outage_s": outage_s}
    report = BenchmarkReport(settings=settings, machine=machine_facts())
    started = time.perf_counter()
    payloads = [_finding(f"1.2.3.{i}").to_json() for i in range(count)]
    bare: list[float] = []
    ours: list[float] = []
    lost = 0
    gaps = 0
    with MosquittoBroker(work / "broker") as broker:
        for round_no in range(rounds):
            order = ("bare", "medge") if round_no % 2 == 0 else ("medge", "bare")
            for which in order:
                if which == "bare":
                    bare.append(bare_paho_rate(broker.port, payloads))
                    log.info("round %d: bare paho %.0f/s", round_no, bare[-1])
                else:
                    rate, stored, round_gaps = medge_rate(broker.port, work, count, round_no)
                    ours.append(rate)
                    lost += count - stored
                    gaps += round_gaps
                    log.info("round %d: medge %.0f/s, %d stored, %d gaps", round_no, rate, stored, round_gaps)
        drain, backlog, extra_rows, outage_gaps = outage_drain(broker, work, outage_s, outage_rate)
        log.info("outage: backlog %d drained at %.0f/s", backlog, drain)
    ratios = [m / b for m, b in zip(ours, bare, strict=True)]
    medge_median, bare_median = statistics.median(ours), statistics.median(bare)
    report.add(
        Figure(
            group="MQTT",
            name="findings outbox → Mosquitto → store, acknowledged",
            value=round(medge_median, 0),
            unit="/s",
            reference="bare paho QoS 1 publish",
            reference_value=round(bare_median, 0),
            ratio=round(statistics.median(ratios), 3),
            comparison=f"{statistics.median(ratios):.2f}x",
            budget=f">= {BUDGET_PER_S:.0f}/s",
            met=medge_median >= BUDGET_PER_S,
            note=f"{rounds} round(s) of {count}; per round medge {', '.join(f'{r:.0f}' for r in ours)}/s",
        )
    )
    report.add(
        Figure(
            group="MQTT",
            name="findings lost or duplicated; sequence gaps",
            value=float(lost + gaps),
            unit="",
            budget="== 0",
            met=lost == 0 and gaps == 0,
            note=f"lost {lost}, gaps {gaps} over {rounds * count} findings",
        )
    )
    report.add(
        Figure(
            group="MQTT",
            name=f"backlog after a {outage_s:g} s broker outage, drain rate into the store",
            value=round(drain, 0),
            unit="/s",
            budget=">= 1000/s",
            met=drain >= 1000 and extra_rows == 0 and outage_gaps == 0,
            note=f"backlog {backlog} findings produced during the outage; stored exactly once: "
            f"{'yes' if extra_rows == 0 else f'no ({extra_rows:+d})'}; gaps {outage_gaps}",
        )
    )
    report.seconds = time.perf_counter() - started
    report.machine["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run, print the table, optionally write JSON/Markdown."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mqtt_benchmark", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run at small sizes (budgets not meaningful)")
    parser.add_argument("--findings", type=int, help="findings per round (default 20000; quick 1000)")
    parser.add_argument("--rounds", type=int, help="rounds, alternating which side goes first (default 3; quick 1)")
    parser.add_argument("--outage", type=float, help="broker outage in seconds (default 60; quick 5)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON to this file")
    parser.add_argument("--markdown", type=Path, help="also write the figures as Markdown tables to this file")
    parser.add_argument("--strict", action="store_true", help="exit with 1 when a budget is missed")
    parser.add_argument("--verbose", "-v", action="store_true", help="log each round")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    count = args.findings or (1000 if args.quick else 20000)
    rounds = args.rounds or (1 if args.quick else 3)
    outage = args.outage or (5.0 if args.quick else 60.0)
    with tempfile.TemporaryDirectory(prefix="medge-mqtt-bench-") as tmp:
        report = run(count, rounds, Path(tmp), outage, 100.0)
    print(format_table(report, "MQTT"))
    if args.json:
        args.json.write_text(json.dumps(report.to_json(), indent=2), encoding="utf-8")
    if args.markdown:
        args.markdown.write_text(format_markdown(report), encoding="utf-8")
    return 1 if args.strict and report.missed else 0


if __name__ == "__main__":
    sys.exit(main())
