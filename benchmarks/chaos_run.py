"""Issue 9's chaos run: appliances stream phantom studies to the dashboard while everything between them is faulted.

Run from the repository root::

    python -m benchmarks.chaos_run                    # 3 appliances, 12 studies each (~3-4 min on 2 cores)
    python -m benchmarks.chaos_run --quick            # 2 appliances, a few dozen instances (< 2 min)
    python -m benchmarks.chaos_run --appliances 4 --studies 20

Real parts only, all on loopback:

* **appliances**: ``medge serve`` processes, each with its own data folder,
  DICOM port, health port and ``appliance.toml`` (``[mqtt]`` to the broker
  below); the last one gets a 1 MB spool quota (``[dicom] spool_quota_mb``),
  so bursts from its scanner overrun it and are refused with 0xA700;
* **scanners**: one thread per appliance running dcmtk's ``storescu`` on its
  phantom studies, one association per study, paced so the stream spans the
  fault schedule. What is refused (0xA700) or never answered (the appliance
  was killed mid-association) waits in the scanner's queue and is sent again
  later, as a modality's send queue does;
* **broker**: one Mosquitto (:class:`sdk.testing.mosquitto.MosquittoBroker`)
  with persistence;
* **dashboard**: ``medge dashboard`` (web + MQTT ingest, SQLite store) as a
  process, so it can be stopped and killed.

The fault schedule (each while the scanners stream, ``gap_s`` of streaming
between faults): the broker stopped (SIGTERM) for ``outage_s`` and started;
an appliance SIGKILLed and restarted; the broker SIGKILLed (its in-memory
queues are lost) and started after ``outage_s``; the dashboard stopped with
SIGTERM for ``outage_s`` and restarted; the dashboard SIGKILLed and restarted
after ``outage_s``; and throughout, the small-quota appliance's spool filling
up (recorded as a fault when its scanner first hears 0xA700).

At the end every scanner queue is empty (every instance accepted once) and
every appliance's outbox acknowledged; then, per appliance, the SOP Instance
UIDs the scanner heard "success" for are compared with the findings in the
dashboard's store (matched by ``instance_ref``, the HMAC pseudonym computed
here with the appliance's own site key): exactly one stored finding per
accepted instance, none missing (lost), none twice (duplicated), none extra.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import functools
import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from sqlalchemy import select

from benchmarks.report import machine_facts
from dashboard.store import Finding as StoredFinding
from dashboard.store import create_store
from sdk.messages import pseudonym
from sdk.testing import PhantomSpec, generate_studies
from sdk.testing.dicom_peers import STORESCU
from sdk.testing.medge_process import MedgeProcess
from sdk.testing.mosquitto import MosquittoBroker, free_port

__all__ = ["FULL", "QUICK", "ApplianceTally", "ChaosReport", "ChaosSettings", "FaultRecord", "format_table", "main"]

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
REPORT_DIR = REPO / "build" / "benchmarks"
SITE = "chaos-site"
_RESPONSE = re.compile(r"Received Store Response \(([^)]*)\)")
_SENDING = re.compile(r"Sending file: (.+)$")


@dataclass(frozen=True)
class ChaosSettings:
    """How big the run is and how long each fault lasts.

    Attributes:
        name: ``full`` or ``quick``.
        appliances: ``medge serve`` processes (the last one has the small spool quota).
        studies: phantom studies per appliance (one series each).
        slices: instances per study (one finding each with the reference model).
        outage_s: how long the broker and the dashboard stay away.
        gap_s: streaming between two faults.
        quota_mb: the small quota of the last appliance.
        retry_s: how long a scanner waits before sending a refused instance again.
        settle_s: the longest wait for every outbox to be acknowledged at the end.
    """

    name: str
    appliances: int
    studies: int
    slices: int
    outage_s: float
    gap_s: float
    quota_mb: int = 1
    retry_s: float = 2.0
    settle_s: float = 180.0


FULL = ChaosSettings(name="full", appliances=3, studies=12, slices=16, outage_s=10.0, gap_s=6.0)
QUICK = ChaosSettings(name="quick", appliances=2, studies=4, slices=8, outage_s=2.5, gap_s=1.5, settle_s=60.0)


@dataclass(frozen=True)
class FaultRecord:
    """One fault: when (seconds since the scanners started), what, on which part, and how it went."""

    at_s: float
    fault: str
    target: str
    detail: str = ""


@dataclass
class ApplianceTally:
    """What one appliance's scanner sent and what reached the store for it.

    Attributes:
        device: the appliance's device name.
        instances: distinct instances its scanner had to deliver.
        sent: C-STOREs attempted (re-sends included).
        accepted: distinct instances answered "success".
        refused_quota: 0xA700 answers (spool quota or outbox bound; re-sent later).
        unanswered: C-STOREs without an answer (the appliance was killed or down; re-sent later).
        not_sent: instances of an association that ended before their turn (storescu halts after a refusal).
        failed_other: other failure statuses (none expected).
        stored: finding rows in the store for this device.
        distinct_instances: distinct ``instance_ref`` among them.
        lost: accepted instances with no stored finding.
        duplicates: stored rows beyond one per instance.
        unexpected: stored findings matching no accepted instance.
        appliance_missing: accepted instances the appliance's queue does not know (lost on the appliance).
    """

    device: str
    instances: int = 0
    sent: int = 0
    accepted: int = 0
    refused_quota: int = 0
    unanswered: int = 0
    not_sent: int = 0
    failed_other: int = 0
    stored: int = 0
    distinct_instances: int = 0
    lost: int = 0
    duplicates: int = 0
    unexpected: int = 0
    appliance_missing: int = 0


@dataclass
class ChaosReport:
    """The run: settings, machine, faults in order, per-appliance tallies and the verdict."""

    settings: dict[str, Any]
    machine: dict[str, Any]
    faults: list[FaultRecord] = field(default_factory=list)
    tallies: list[ApplianceTally] = field(default_factory=list)
    settle_s: float = 0.0
    seconds: float = 0.0

    @property
    def lost(self) -> int:
        return sum(t.lost + t.appliance_missing for t in self.tallies)

    @property
    def duplicates(self) -> int:
        return sum(t.duplicates for t in self.tallies)

    @property
    def passed(self) -> bool:
        """Nothing lost, nothing twice, nothing unexpected, every instance accepted, every fault injected."""
        complete = all(t.accepted == t.instances for t in self.tallies)
        unexpected = sum(t.unexpected + t.failed_other for t in self.tallies)
        return complete and self.lost == 0 and self.duplicates == 0 and unexpected == 0 and self.quota_hit

    @property
    def quota_hit(self) -> bool:
        return any(f.fault == "spool quota hit" for f in self.faults)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready data."""
        return {
            "settings": self.settings,
            "machine": self.machine,
            "faults": [dataclasses.asdict(f) for f in self.faults],
            "appliances": [dataclasses.asdict(t) for t in self.tallies],
            "totals": {
                "instances": sum(t.instances for t in self.tallies),
                "accepted": sum(t.accepted for t in self.tallies),
                "refused_quota": sum(t.refused_quota for t in self.tallies),
                "stored": sum(t.stored for t in self.tallies),
                "lost": self.lost,
                "duplicates": self.duplicates,
            },
            "settle_s": round(self.settle_s, 1),
            "passed": self.passed,
            "seconds": round(self.seconds, 1),
        }


# ----------------------------------------------------------------------------- the parts


def _wait(predicate: Callable[[], object], timeout: float, what: str, poll: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


def build_package(root: Path) -> tuple[Path, Path]:
    """A signed FP32 package of the reference model and its public key's folder: (packages dir, trusted dir)."""
    from device_profiles import get_profile
    from quantization.compile import CompileOptions, compile_package
    from sdk.model_config import load_model_config
    from sdk.reference_model import config_path, onnx_path
    from sdk.signing import generate_keypair, load_private_key

    generate_studies(root / "calibration", 3, PhantomSpec(slices=12), seed=21)
    pair = generate_keypair(root / "keys")
    packages, trusted = root / "packages", root / "trusted"
    trusted.mkdir(parents=True, exist_ok=True)
    compile_package(
        onnx_path(),
        load_model_config(config_path()),
        get_profile("generic-x86_64-cpu"),
        root / "calibration",
        load_private_key(pair.private_path),
        packages / "chest-ct-nodule.medge",
        CompileOptions(precision="fp32"),
    )
    (trusted / "signing.pub").write_bytes(pair.public_path.read_bytes())
    return packages, trusted


class ApplianceProcess:
    """One ``medge serve`` with its own folder, config, DICOM and health ports; started, killed, restarted."""

    def __init__(
        self, root: Path, device: str, broker_port: int, packages: Path, trusted: Path, quota_mb: int | None
    ) -> None:
        self.device = device
        self.root = root
        self.data_dir = root / "data"
        self.dicom_port, self.health_port = free_port(), free_port()
        self.config = root / "appliance.toml"
        root.mkdir(parents=True, exist_ok=True)
        quota = f"spool_quota_mb = {quota_mb}\n" if quota_mb is not None else ""
        # resend_after_s: below the 120 s default so that a finding the broker lost without the dashboard's
        # "resend" reaching the device shows up within the run rather than after it.
        self.config.write_text(
            f'[appliance]\nsite = "{SITE}"\ndevice = "{device}"\nprofile = "generic-x86_64-cpu"\ndemo = true\n'
            f'data_dir = "{self.data_dir}"\n'
            f'[dicom]\nae_title = "MEDGE"\nhost = "127.0.0.1"\nport = {self.dicom_port}\n{quota}'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {broker_port}\nclient_id = "{SITE}.{device}"\n'
            "reconnect_min_s = 0.2\nreconnect_max_s = 1.0\nresend_after_s = 10.0\n"
            f'[packages]\ndir = "{packages}"\ntrusted_keys_dir = "{trusted}"\n',
            encoding="utf-8",
        )
        self.child = MedgeProcess(
            ["serve", "--config", str(self.config), "--health-port", str(self.health_port), "--plain-logs"],
            root / "serve.log",
            cwd=REPO,
        )

    @property
    def db(self) -> Path:
        return self.data_dir / "queue.sqlite"

    def launch(self) -> None:
        """Start the process (not waiting)."""
        self.child.start()

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until ``/readyz`` answers 200 (packages live, SCP listening)."""
        self.child.wait_http(f"http://127.0.0.1:{self.health_port}/readyz", timeout)

    def signal(self, sig: signal.Signals, timeout: float = 60.0) -> None:
        """Send ``sig`` and wait for the process to end."""
        self.child.signal(sig, timeout)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Rows from the queue database, read beside the running service."""
        with contextlib.closing(sqlite3.connect(self.db, timeout=10)) as conn:
            return conn.execute(sql).fetchall()

    def settled(self, instances: int) -> bool:
        """Every instance reported and every finding acknowledged by the dashboard."""
        if not self.db.exists():
            return False
        known = int(self.query("SELECT count(*) FROM instances")[0][0])
        unfinished = int(self.query("SELECT count(*) FROM instances WHERE state != 'reported'")[0][0])
        findings, unacked = self.query("SELECT count(*), coalesce(sum(state != 'acked'), 0) FROM outbox")[0]
        return known >= instances and unfinished == 0 and findings >= instances and unacked == 0

    def site_key(self) -> bytes:
        return (self.data_dir / "site.key").read_bytes()


class DashboardProcess:
    """``medge dashboard`` (web + ingest, SQLite store) as a process: stopped, killed, restarted."""

    def __init__(self, root: Path, broker_port: int) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.web_port = free_port()
        self.config = root / "dashboard.toml"
        self.config.write_text(
            f'demo = true\ndata_dir = "{root}"\n'
            f'[mqtt]\nhost = "127.0.0.1"\nport = {broker_port}\nclient_id = "chaos-dashboard"\n'
            f"[web]\nport = {self.web_port}\n",
            encoding="utf-8",
        )
        self.child = MedgeProcess(
            ["dashboard", "--config", str(self.config), "--plain-logs"], root / "dashboard.log", cwd=REPO
        )

    @property
    def store_url(self) -> str:
        return f"sqlite:///{(self.root / 'dashboard.sqlite').resolve()}"

    def start(self, timeout: float = 60.0) -> None:
        """Start and wait until the web server answers (the ingest connects in the background)."""
        self.child.start().wait_http(f"http://127.0.0.1:{self.web_port}/healthz", timeout)

    def signal(self, sig: signal.Signals, timeout: float = 60.0) -> None:
        self.child.signal(sig, timeout)


class Scanner(threading.Thread):
    """A modality sending its studies to one appliance, keeping what was not accepted for a later re-send.

    Args:
        appliance: the appliance it sends to.
        studies: the files of each study, in the order they are sent.
        interval_s: between two associations (one study each, plus what is due again).
        retry_s: how long a refused or unanswered instance waits.
        on_refusal: called once per 0xA700 answer.
    """

    def __init__(
        self,
        appliance: ApplianceProcess,
        studies: list[list[Path]],
        interval_s: float,
        retry_s: float,
        on_refusal: Callable[[str], None],
    ) -> None:
        super().__init__(name=f"scanner-{appliance.device}", daemon=True)
        self.appliance = appliance
        self.studies = collections.deque(studies)
        self.interval_s = interval_s
        self.retry_s = retry_s
        self.on_refusal = on_refusal
        self.retry: list[tuple[float, Path]] = []
        self.accepted: set[Path] = set()
        self.tally = ApplianceTally(device=appliance.device, instances=sum(len(s) for s in studies))
        self.stop_event = threading.Event()
        self.sending = threading.Event()  # set while an association is open: a kill then lands mid-stream
        self._wake = threading.Event()

    @property
    def done(self) -> bool:
        return len(self.accepted) == self.tally.instances

    def run(self) -> None:
        while not self.stop_event.is_set() and not self.done:
            now = time.monotonic()
            due = [path for at, path in self.retry if at <= now]
            self.retry = [(at, path) for at, path in self.retry if at > now]
            batch = (list(self.studies.popleft()) if self.studies else []) + due
            if batch:
                self._send(batch)
            self._wake.wait(self.interval_s if self.studies else min(self.interval_s, 0.5))
            self._wake.clear()

    def kick(self) -> None:
        """Send the next study now (the fault schedule wants an association open)."""
        self._wake.set()

    def halt(self) -> None:
        self.stop_event.set()
        self._wake.set()

    def _send(self, files: list[Path]) -> None:
        """One association; what is not answered "success" goes to the retry list."""
        self.sending.set()
        try:
            result = subprocess.run(
                [STORESCU, "-v", "-aet", "SCANNER1", "-aec", "MEDGE", "127.0.0.1", str(self.appliance.dicom_port)]
                + [str(path) for path in files],
                capture_output=True,
                text=True,
                env={**os.environ, "TCP_NODELAY": "1"},
                timeout=120,
                check=False,
            )
            output = result.stdout + result.stderr
        except subprocess.TimeoutExpired as exc:
            output = str(exc.stdout or "") + str(exc.stderr or "")
        finally:
            self.sending.clear()
        attempted: set[Path] = set()
        answers: dict[Path, str] = {}
        current: Path | None = None
        for line in output.splitlines():
            if sending := _SENDING.search(line):
                current = Path(sending.group(1).strip())
                attempted.add(current)
            elif (response := _RESPONSE.search(line)) and current is not None:
                answers[current] = response.group(1)
                current = None
        self.tally.sent += len(attempted)
        again = time.monotonic() + self.retry_s
        for path in files:
            status = answers.get(path)
            if status == "Success":
                self.accepted.add(path)
                continue
            if path not in attempted:
                self.tally.not_sent += 1
            elif status is None:
                self.tally.unanswered += 1
            elif "OutOfResources" in status.replace(" ", ""):
                self.tally.refused_quota += 1
                self.on_refusal(self.appliance.device)
            else:
                self.tally.failed_other += 1
                log.warning("%s: %s answered %s", self.appliance.device, path.name, status)
            self.retry.append((again, path))


# ----------------------------------------------------------------------------- the run


def _sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)


@contextlib.contextmanager
def _parts(
    settings: ChaosSettings, work: Path, packages: Path, trusted: Path
) -> Iterator[tuple[MosquittoBroker, DashboardProcess, list[ApplianceProcess]]]:
    broker = MosquittoBroker(work / "broker").start()
    dashboard = DashboardProcess(work / "dashboard", broker.port)
    appliances = [
        ApplianceProcess(
            work / f"ct-{index + 1}",
            f"ct-{index + 1}",
            broker.port,
            packages,
            trusted,
            settings.quota_mb if index == settings.appliances - 1 else None,
        )
        for index in range(settings.appliances)
    ]
    try:
        dashboard.start()
        for appliance in appliances:
            appliance.launch()
        for appliance in appliances:
            appliance.wait_ready()
        yield broker, dashboard, appliances
    finally:
        for appliance in appliances:
            appliance.signal(signal.SIGTERM)
        dashboard.signal(signal.SIGTERM)
        broker.stop()


def run_chaos(
    settings: ChaosSettings, work: Path, *, packages: Path | None = None, trusted: Path | None = None
) -> ChaosReport:
    """Run the scenario in ``work``; ``packages``/``trusted`` reuse a built package (else one is built)."""
    started = time.monotonic()
    report = ChaosReport(settings=dataclasses.asdict(settings), machine=machine_facts())
    if packages is None or trusted is None:
        packages, trusted = build_package(work / "package")
    corpus: list[list[list[Path]]] = []
    for index in range(settings.appliances):
        out = work / "studies" / f"ct-{index + 1}"
        # The quota appliance gets 512x512 slices (512 KB each): a burst outruns its analysis within a few
        # instances on any machine, so its 1 MB spool fills whatever the load (128 KB slices did not, when quiet).
        size = {"rows": 512, "columns": 512} if index == settings.appliances - 1 else {}
        spec = PhantomSpec(slices=settings.slices, **size)
        truths = generate_studies(out, settings.studies, spec, seed=900 + index)
        corpus.append([[out / str(t.folder) / str(s.file) for s in t.series[0].slices] for t in truths])
    uids = {path: _sop_uid(path) for studies in corpus for study in studies for path in study}

    with _parts(settings, work, packages, trusted) as (broker, dashboard, appliances):
        t0 = time.monotonic()
        lock = threading.Lock()

        def note(fault: str, target: str, detail: str = "") -> None:
            with lock:
                report.faults.append(FaultRecord(round(time.monotonic() - t0, 2), fault, target, detail))
            log.info("%6.1f s  %s: %s %s", time.monotonic() - t0, fault, target, detail)

        def on_refusal(device: str) -> None:
            if not any(f.fault == "spool quota hit" for f in report.faults):
                note("spool quota hit", device, f"[dicom] spool_quota_mb = {settings.quota_mb}; C-STORE 0xA700")

        schedule_s = 5 * (settings.outage_s + settings.gap_s) + 10
        scanners = [
            Scanner(
                appliance,
                studies,
                interval_s=schedule_s / max(1, settings.studies),
                retry_s=settings.retry_s,
                on_refusal=on_refusal,
            )
            for appliance, studies in zip(appliances, corpus, strict=True)
        ]
        quota_scanner = scanners[-1]
        if len(quota_scanner.studies) >= 2:  # its first burst: two studies in one association
            first, second = quota_scanner.studies.popleft(), quota_scanner.studies.popleft()
            quota_scanner.studies.appendleft(first + second)
        for scanner in scanners:
            scanner.start()
        try:
            _inject_faults(settings, broker, dashboard, appliances[0], scanners[0], note)
            _wait(lambda: all(s.done for s in scanners), 300, "every scanner's queue to empty", poll=0.2)
            settle_started = time.monotonic()
            for appliance, scanner in zip(appliances, scanners, strict=True):
                _wait(
                    functools.partial(appliance.settled, scanner.tally.instances),
                    settings.settle_s,
                    f"{appliance.device}: every instance reported and acknowledged",
                    poll=0.25,
                )
            report.settle_s = time.monotonic() - settle_started
        finally:
            for scanner in scanners:
                scanner.halt()
            for scanner in scanners:
                scanner.join(30)
        pairs = zip(scanners, appliances, strict=True)
        report.tallies = [_tally(scanner, appliance, dashboard, uids) for scanner, appliance in pairs]
    report.seconds = time.monotonic() - started
    report.machine["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    return report


def _inject_faults(
    settings: ChaosSettings,
    broker: MosquittoBroker,
    dashboard: DashboardProcess,
    victim: ApplianceProcess,
    scanner: Scanner,
    note: Callable[..., None],
) -> None:
    """The scripted schedule; each fault is recorded when it is injected and when the part is back."""
    outage, gap = settings.outage_s, settings.gap_s
    time.sleep(gap)
    note("broker stopped (SIGTERM)", "mosquitto", f"for {outage:g} s")
    broker.stop()
    time.sleep(outage)
    broker.start()
    note("broker started", "mosquitto")
    time.sleep(gap)

    # Killed in the middle of an association, with instances received but not analysed and findings unacknowledged.
    before = _count(victim, "SELECT count(*) FROM instances")
    scanner.kick()
    scanner.sending.wait(30)
    deadline = time.monotonic() + 10
    while _count(victim, "SELECT count(*) FROM instances") < before + 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    association = "during an association" if scanner.sending.is_set() else "between associations"
    victim.signal(signal.SIGKILL)
    received = _count(victim, "SELECT count(*) FROM instances")
    waiting = _count(victim, "SELECT count(*) FROM instances WHERE state NOT IN ('analysed', 'reported')")
    unacked = _count(victim, "SELECT count(*) FROM outbox WHERE state != 'acked'")
    note(
        "appliance killed (SIGKILL)",
        victim.device,
        f"{association}; {received} instances received, {waiting} not yet analysed, {unacked} findings unacknowledged",
    )
    victim.launch()
    victim.wait_ready()
    note("appliance restarted", victim.device)
    time.sleep(gap)

    note("broker killed (SIGKILL)", "mosquitto", f"in-memory queues lost; down {outage:g} s")
    broker.kill()
    time.sleep(outage)
    broker.start()
    note("broker started", "mosquitto")
    time.sleep(gap)

    note("dashboard stopped (SIGTERM)", "medge dashboard", f"for {outage:g} s")
    dashboard.signal(signal.SIGTERM)
    time.sleep(outage)
    dashboard.start()
    note("dashboard restarted", "medge dashboard")
    time.sleep(gap)

    note("dashboard killed (SIGKILL)", "medge dashboard", f"down {outage:g} s")
    dashboard.signal(signal.SIGKILL)
    time.sleep(outage)
    dashboard.start()
    note("dashboard restarted", "medge dashboard")


def _count(appliance: ApplianceProcess, sql: str) -> int:
    return int(appliance.query(sql)[0][0]) if appliance.db.exists() else 0


def _tally(
    scanner: Scanner, appliance: ApplianceProcess, dashboard: DashboardProcess, uids: dict[Path, str]
) -> ApplianceTally:
    """Accepted instances (the scanner's view) against the appliance's queue and the dashboard's store."""
    tally = scanner.tally
    accepted = {uids[path] for path in scanner.accepted}
    tally.accepted = len(accepted)
    known = {row[0] for row in appliance.query("SELECT sop_instance_uid FROM instances")}
    tally.appliance_missing = len(accepted - known)
    key = appliance.site_key()
    expected = {pseudonym(key, uid): uid for uid in accepted}
    store = create_store(dashboard.store_url)
    try:
        with store.session() as session:
            refs = list(
                session.scalars(
                    select(StoredFinding.instance_ref).where(
                        StoredFinding.site == SITE, StoredFinding.device == appliance.device
                    )
                )
            )
    finally:
        store.close()
    counts = collections.Counter(refs)
    tally.stored = len(refs)
    tally.distinct_instances = len(counts)
    tally.lost = sum(1 for ref in expected if ref not in counts)
    tally.duplicates = sum(n - 1 for n in counts.values())
    tally.unexpected = sum(1 for ref in counts if ref not in expected)
    return tally


# ----------------------------------------------------------------------------- output


def format_table(report: ChaosReport) -> str:
    """Faults in order, then one line per appliance and the verdict."""
    machine = report.machine
    lines = [
        f"medge chaos run ({report.settings['name']}) - {machine['date']}",
        f"machine: {machine['cpu']}, {machine['nproc']} CPUs, load average {machine['load_average_start']} -> "
        f"{machine.get('load_average_end')}",
        "",
        "faults injected:",
        f"{'at':>8}  {'fault':<32} {'target':<16} detail",
    ]
    for fault in report.faults:
        lines.append(f"{fault.at_s:>7.1f}s  {fault.fault:<32} {fault.target:<16} {fault.detail}")
    lines += [
        "",
        f"{'appliance':<10} {'instances':>9} {'sent':>6} {'accepted':>8} {'0xA700':>7} {'no answer':>9} "
        f"{'stored':>7} {'lost':>5} {'dup':>5} {'extra':>5}",
    ]
    for t in report.tallies:
        lines.append(
            f"{t.device:<10} {t.instances:>9} {t.sent:>6} {t.accepted:>8} {t.refused_quota:>7} {t.unanswered:>9} "
            f"{t.stored:>7} {t.lost + t.appliance_missing:>5} {t.duplicates:>5} {t.unexpected:>5}"
        )
    totals = report.to_json()["totals"]
    lines += [
        f"{'total':<10} {totals['instances']:>9} {sum(t.sent for t in report.tallies):>6} {totals['accepted']:>8} "
        f"{totals['refused_quota']:>7} {sum(t.unanswered for t in report.tallies):>9} {totals['stored']:>7} "
        f"{report.lost:>5} {report.duplicates:>5} {sum(t.unexpected for t in report.tallies):>5}",
        "",
        f"every outbox acknowledged {report.settle_s:.1f} s after the last instance was accepted",
        f"findings lost: {report.lost} (must be 0); duplicated: {report.duplicates} (must be 0); "
        f"quota hit: {'yes' if report.quota_hit else 'NO'}  ->  {'PASS' if report.passed else 'FAIL'}",
        f"wall time: {report.seconds:.0f} s",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run, print the table, write the JSON; exit 1 on any loss, duplicate or missing fault."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos_run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 appliances, a few dozen instances, each fault once")
    parser.add_argument("--appliances", type=int, help="medge serve processes (default 3; quick 2)")
    parser.add_argument("--studies", type=int, help="studies per appliance (default 12; quick 4)")
    parser.add_argument("--workdir", type=Path, help="keep the folders and logs here (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="the JSON report (default: build/benchmarks/chaos-run-NAME.json)")
    parser.add_argument("--verbose", "-v", action="store_true", help="log each fault as it is injected")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(message)s")
    settings = QUICK if args.quick else FULL
    if args.appliances is not None:
        settings = dataclasses.replace(settings, appliances=max(1, args.appliances))
    if args.studies is not None:
        settings = dataclasses.replace(settings, studies=max(1, args.studies))
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        report = run_chaos(settings, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="medge-chaos-") as tmp:
            report = run_chaos(settings, Path(tmp))
    print(format_table(report))
    out = args.json or REPORT_DIR / f"chaos-run-{settings.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report.to_json(), indent=2), encoding="utf-8")
    print(f"JSON report: {out}")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
