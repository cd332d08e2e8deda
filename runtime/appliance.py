"""The appliance service: scanners push DICOM, findings come out, nothing is lost on the way.

::

    SCP / watched folder / submit() ─▶ spool (fsync) ─▶ work queue (SQLite) ─▶ decoder thread
        read with limits, track series, route, preprocess ──(bounded hand-off: back-pressure)──▶ inference thread
        engine, post-process, drift ──(bounded)──▶ committer thread: the findings of every instance waiting, with
        their instances' state, in ONE durable transaction (outbox) ─▶ remover thread: their spool files deleted
    series tracker (release + quiet time) ─▶ series thread: a complete series' slices, in order,
        through each package its rules route it to ─▶ one finding per series and package (outbox)

Each hop has one durable hand-off: an instance is fsync'd in the spool
before the scanner hears "success"; its findings are in the outbox in the
same transaction that marks it analysed, with ids stable for instance +
package, so ``kill -9`` at any moment loses nothing and duplicates nothing.
The committer groups the instances that finished while the previous commit
was flushing into one commit (alone, an instance is committed at once), and
a spool file is deleted only after its findings are durable: a crash in
between leaves a file whose instance is already analysed, which is swept at
the next start (its finding ids are stable, so a redo could add nothing).
Bad input is quarantined with a reason and an event; the service keeps serving.
An instance still decoding or analysing after ``[dicom] instance_timeout_s``
is quarantined as a hang and its worker thread replaced (Python cannot
interrupt a thread; the stuck one is abandoned and its late result dropped).

With ``[pacs] enabled``, each finding of the chosen packages is also written
as a DICOM SR (:mod:`runtime.results`) when it is made, and the SR goes into
the PACS outbox in the same transaction as its finding; the ``pacs`` thread
sends it to the PACS with C-STORE and retries until the PACS takes it.

Routing rules with ``unit = "series"`` make the appliance track series: the
files of a series stay in the spool until the series is complete and
analysed; instance rules are served as instances arrive.

Events (``on_event(kind, severity, message, detail)``): ``package-live``,
``package-refused``, ``engine-degraded``, ``quarantined``, ``analysis-failed``,
``instance-timeout``, ``worker-stuck``, ``sr-failed`` (a finding's SR could not be made; the finding
goes on without it), ``pacs-send-failed`` / ``pacs-send-recovered`` (:mod:`runtime.results`) and the
ingest events of :mod:`runtime.ingest`.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import shutil
import statistics
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pydicom
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydicom import Dataset
from pydicom.errors import InvalidDicomError

from device_profiles import DeviceProfile, detect_host, get_profile, list_profiles, match_profile
from runtime.analyzer import Analysis, Prepared
from runtime.decode import DecodeLimits, read_instance
from runtime.findings import OUTSIDE_CALIBRATED_RANGE, build_findings, package_ref
from runtime.health import HealthServer
from runtime.ingest.events import IngestEvent
from runtime.ingest.files import store_part10
from runtime.ingest.folder_watch import FolderWatcher
from runtime.ingest.scp import StorageSCP
from runtime.metrics import RuntimeMetrics
from runtime.packages import EventSink, LivePackage, PackageSet
from runtime.postprocess import series_result
from runtime.reporting import CommandHandler, Reporter
from runtime.results import PacsDelivery, sr_results
from runtime.sd_notify import ProgressMonitor
from runtime.selftest import SelfTest
from runtime.series import SeriesInstance, SeriesTracker
from runtime.spool import IngestSource, Spool, SpoolFullError, StoredInstance
from runtime.work_queue import AddResult, InstanceRecord, InstanceState, PacsResult, SeriesClaim, WorkQueue
from sdk.appliance_config import ApplianceConfig
from sdk.errors import DicomInputError, EngineError, MedgeError, PreprocessingError
from sdk.messages import Command, EngineHealth, Finding, Heartbeat, PackageRef
from sdk.routing import Router, RoutingSubject, build_router
from sdk.trust import TrustStore

__all__ = ["Appliance"]

log = logging.getLogger(__name__)

_DECODER = "decoder"
_SERIES = "series"
_STOP = object()
_MAX_GROUP = 64  # instances in one group commit at most
_COMMIT_BACKLOG = 32  # analysed instances waiting for their commit before inference waits (back-pressure)
_GROUP_WAIT_S = 0.003  # on a stream, how long a commit waits for the instance being analysed to join it
_MAX_STUCK_THREADS = 3  # beyond this many abandoned workers the service says it is not alive (systemd restarts it)


@dataclass
class _Job:
    record: InstanceRecord
    ds: Dataset
    prepared: dict[str, Prepared]
    stage_ms: dict[str, float]
    keep_file: bool = False  # its series still needs it


@dataclass
class _Done:
    """An analysed instance on its way to the outbox."""

    job: _Job
    findings: list[Finding]
    results: list[PacsResult]  # the findings' SRs for the PACS, committed with them


def _site_key(path: Path) -> bytes:
    """The site's pseudonym key: read it, or make one (0600) at first start."""
    if path.exists():
        return path.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
    return key


class Appliance:
    """One appliance: ingest, queue, live packages, pipeline, health.

    Args:
        config: the appliance config.
        profile: this board's profile (default: ``config.appliance.profile``, else detected).
        trusted: package-signing keys (default: ``packages.trusted_keys_dir``, else the local config's).
        dicom_port: listen here instead of ``config.dicom.port`` (0: a free port, for tests).
        health_port: the health/metrics port (0: a free port).
        queue_size: the bounded hand-off between decoding and inference.
        limits: what an instance may declare before it is refused.
        on_event: receives the service's events (logged and contained if it raises).
        report: run the MQTT reporter (``[mqtt]``): findings, events, heartbeats and status to
            the dashboard, commands back. Off for embedders that read the outbox themselves.
        commands: more command handlers by name (``update`` and ``rotate-keys`` from
            :mod:`firmware_integration.ota`, which the runtime cannot import itself).

    Raises:
        MedgeError: a config, profile or key problem at :meth:`start`.
    """

    def __init__(
        self,
        config: ApplianceConfig,
        *,
        profile: DeviceProfile | None = None,
        trusted: Mapping[str, Ed25519PublicKey] | None = None,
        dicom_port: int | None = None,
        health_port: int = 0,
        queue_size: int = 8,
        limits: DecodeLimits | None = None,
        on_event: EventSink | None = None,
        report: bool = True,
        commands: Mapping[str, CommandHandler] | None = None,
    ) -> None:
        self.config = config
        self.profile = profile or self._profile(config)
        self.data_dir = config.appliance.data_dir
        self.metrics = RuntimeMetrics()
        self.limits = limits or DecodeLimits()
        self._trusted = trusted
        self._dicom_port = dicom_port
        self._health_port = health_port
        self._handoff: queue.Queue[_Job | object] = queue.Queue(maxsize=queue_size)
        self._commits: queue.Queue[_Done | object] = queue.Queue(maxsize=_COMMIT_BACKLOG)
        self._removals: queue.SimpleQueue[Path | object] = queue.SimpleQueue()  # files whose findings are durable
        self._committing = threading.Event()  # the committer is inside a commit
        self._user_sink = on_event
        self._stop = threading.Event()
        self._work = threading.Event()  # set when an instance arrives: the decoder does not poll
        self._threads: dict[str, threading.Thread] = {}
        self._generation: Counter[str] = Counter()
        self._busy: dict[str, tuple[str, float, int]] = {}  # role → (SOP Instance UID, since, generation)
        self._abandoned: list[threading.Thread] = []
        self.series: SeriesTracker | None = None
        self.reporter: Reporter | None = None
        self._report = report
        self._extra_commands = dict(commands or {})
        # Per package name: instances analysed and analyses failed (an update's probation compares them).
        self._outcomes: dict[str, Counter[str]] = {}
        # Held while an engine runs and while packages are swapped (activate-package): no run on a closed engine.
        self._packages_lock = threading.RLock()
        self.progress = ProgressMonitor()  # the supervisor beats; a hang that keeps threads "alive" is still seen
        self._latencies: deque[float] = deque(maxlen=1000)
        self._drift_by_scanner: Counter[str] = Counter()
        self._started_at = time.monotonic()
        self.events: deque[tuple[str, str, str]] = deque(maxlen=200)
        self.scp: StorageSCP | None = None
        self.watcher: FolderWatcher | None = None
        self.health: HealthServer | None = None
        self.pacs: PacsDelivery | None = None  # with [pacs] enabled: sends the SRs of the PACS outbox
        self._pacs_work = threading.Event()  # set when SRs were committed: the sender does not wait out its poll

    @staticmethod
    def _profile(config: ApplianceConfig) -> DeviceProfile:
        if config.appliance.profile:
            return get_profile(config.appliance.profile)
        return get_profile(match_profile(detect_host(), list_profiles()).profile_id)

    # -- events ----------------------------------------------------------------------------------------------------

    def _emit(self, kind: str, severity: str, message: str, detail: Mapping[str, object] | None = None) -> None:
        self.events.append((kind, severity, message))
        level = {"info": logging.INFO, "warning": logging.WARNING}.get(severity, logging.ERROR)
        log.log(level, "%s: %s", kind, message, extra={"event": kind})
        if self._user_sink is not None:
            try:
                self._user_sink(kind, severity, message, dict(detail or {}))
            except Exception:  # a notification handler must not take the service down
                log.exception("event handler failed for %s", kind)
        if self.reporter is not None:
            self.reporter.event(kind, severity, message, dict(detail or {}))  # durable; never raises

    def emit(self, kind: str, severity: str, message: str, detail: Mapping[str, object] | None = None) -> None:
        """Report an event of the appliance's own (an embedder's part, e.g. an update's steps): logged, counted
        in :attr:`events`, and made durable for the dashboard like the service's own events."""
        self._emit(kind, severity, message, detail)

    def _on_ingest_event(self, event: IngestEvent) -> None:
        if "quarantin" in event.kind.value:
            self.metrics.quarantined.labels(reason=event.kind.value).inc()
        self._emit(event.kind.value, "warning", event.message, {"calling_ae": event.calling_ae})

    # -- lifecycle ---------------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the queue and spool, resume, bring packages live, start ingest, workers and health."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.site_key = _site_key(self.config.phi.site_key_file or self.data_dir / "site.key")
        self.queue = WorkQueue(self.data_dir / "queue.sqlite")
        resumed = self.queue.resume()
        self.spool = Spool(self.data_dir / "spool", self.config.dicom.spool_quota_mb * 1024 * 1024)
        self.router = self._router()
        self._reconcile(sweep=self.router is None or "series" not in self.router.units)
        trusted = self._trusted
        if trusted is None:
            trusted = TrustStore.load(self.config.packages.trusted_keys_dir)
        if self._report:
            # Made before the packages load, so that their start-up events (package-live, package-refused,
            # engine-degraded) go into the durable outbox like every later one; it connects at start().
            self.reporter = Reporter(
                self.config,
                self.queue,
                heartbeat=self.heartbeat,
                status_packages=self.package_refs,
                commands={
                    "report-config": self._report_config,
                    "activate-package": self._activate_package,
                    "selftest": self._selftest,
                    **self._extra_commands,
                },
                on_event=self._emit,
            )
        self.packages = PackageSet(
            self.config.packages.dir,
            trusted,
            self.profile,
            fail_closed=self.config.appliance.fail_closed,
            cache_dir=self.data_dir / "engine-cache",
            on_event=self._emit,
        )
        self.packages.load()
        if self.router is not None and "series" in self.router.units:
            self.series = SeriesTracker(
                self.queue,
                quiet_time_s=self.config.dicom.quiet_time_s,
                unreleased_timeout_s=self.config.dicom.unreleased_timeout_s,
            )
        log.info("resumed: %s", resumed)
        if self.reporter is not None:
            self.reporter.start()
        self.progress.expect("supervisor", within_s=5.0)
        roles = ["decode", "infer", "commit", "remove", "watchdog"] + (["series"] if self.series is not None else [])
        if self.config.pacs.enabled:
            self.pacs = PacsDelivery(
                self.queue,
                self.config.pacs,
                self.config.pacs.calling_ae or self.config.dicom.ae_title,
                on_event=self._emit,
                metrics=self.metrics,
            )
            roles.append("pacs")
        for role in roles:
            self._spawn(role)
        self.scp = StorageSCP(
            self.config.dicom,
            self.spool,
            self._on_stored,
            on_event=self._on_ingest_event,
            on_association_released=self.series.association_released if self.series is not None else None,
            admit=self._admit,
            port=self._dicom_port,
        )
        self.scp.start()
        if self.config.dicom.watch_dir is not None:
            self.watcher = FolderWatcher(
                self.config.dicom.watch_dir, self.spool, self._on_stored, on_event=self._on_ingest_event
            )
            self.watcher.start()
        self.health = HealthServer(self.metrics.registry, self.alive, self._readiness, port=self._health_port)
        self.health.start()

    def stop(self) -> None:
        """Stop ingest first (senders retry what was not acknowledged), then the workers, then the rest."""
        if self.watcher is not None:
            self.watcher.stop()
        if self.scp is not None:
            self.scp.stop()
        self._stop.set()
        self._work.set()
        self._pacs_work.set()
        for thread in list(self._threads.values()):
            thread.join(timeout=30)
        if self.health is not None:
            self.health.stop()
        if self.reporter is not None:
            self.reporter.stop()  # after the workers: their last findings are in the outbox; unacked ones stay
        self.packages.close()
        self.queue.close()

    def __enter__(self) -> Appliance:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, role: str) -> None:
        """Start (or replace) the worker thread of a role; a replaced one sees its generation is stale and ends."""
        self._generation[role] += 1
        target = {
            "decode": self._decode_loop,
            "infer": self._infer_loop,
            "commit": self._commit_loop,
            "remove": self._remove_loop,
            "watchdog": self._watchdog_loop,
            "series": self._series_loop,
            "pacs": self._pacs_loop,
        }[role]
        thread = threading.Thread(
            target=target, args=(self._generation[role],), name=f"medge-{role}-{self._generation[role]}", daemon=True
        )
        self._threads[role] = thread
        thread.start()

    def _current(self, role: str, generation: int) -> bool:
        return self._generation[role] == generation

    def _router(self) -> Router | None:
        section = self.config.routing
        if section.rules or section.monai:
            return build_router(section)
        return None  # default: every live package that takes the instance's modality

    def _reconcile(self, *, sweep: bool = True) -> None:
        """Spooled files the queue does not know (a crash between fsync and commit) are queued again.

        With ``sweep``, files of instances already analysed (a crash between the
        commit of their findings and the deletion) are deleted: their findings
        are durable. Not with series rules: a series still to be analysed needs
        its analysed slices, and the series thread deletes them afterwards.
        """
        added = swept = 0
        for path in self.spool.instances():
            sop = path.stem
            known = self.queue.get(sop)
            if known is not None:
                if sweep and known.state in (InstanceState.ANALYSED, InstanceState.REPORTED):
                    self.spool.remove(path)
                    swept += 1
                continue
            try:
                header = pydicom.dcmread(path, stop_before_pixels=True)
                self.queue.add_received(
                    spool_path=path,
                    sop_class_uid=str(header.SOPClassUID),
                    sop_instance_uid=str(header.SOPInstanceUID),
                    study_instance_uid=str(header.StudyInstanceUID),
                    series_instance_uid=str(header.SeriesInstanceUID),
                    calling_ae=None,
                    association_id=None,
                    transfer_syntax=str(header.file_meta.TransferSyntaxUID),
                    size=path.stat().st_size,
                )
            except (OSError, ValueError, AttributeError, InvalidDicomError) as exc:
                self.spool.quarantine(path, f"unreadable after a restart: {exc}")
                continue
            added += 1
        if added:
            log.warning("re-queued %d spooled instance(s) the work queue had not recorded", added)
        if swept:
            log.info("deleted %d spooled instance(s) whose findings were already committed", swept)

    def _recover_decoded(self) -> None:
        """Instances decoded before a crash but never analysed: their tensors died with the process; redo them.

        All are claimed at once (a queue written by an earlier medge, which recorded ``decoded``).
        """
        for record in self.queue.claim_batch(InstanceState.DECODED, _DECODER, limit=1_000_000, lease_s=self._lease_s):
            self._decode_one(record)

    # -- ingest ----------------------------------------------------------------------------------------------------

    def submit(self, data: bytes | str | Path) -> str:
        """Take one DICOM Part 10 file from the embedding program (its own receiver, a test, a tool).

        The file is fsync'd into the spool and queued exactly as a C-STORE is;
        its finding appears in the outbox like any other.

        Returns:
            The instance's SOP Instance UID (the key of :meth:`WorkQueue.findings`).

        Raises:
            DicomInputError: not a DICOM file, or its identifying UIDs are missing or invalid.
            SpoolFullError: the spool's quota has no room, or the outbox is at its bound (back-pressure: try
                again later).
            SpoolError: the spool could not write it.
        """
        refusal = self._admit()
        if refusal is not None:
            raise SpoolFullError(refusal)
        raw = Path(data).read_bytes() if isinstance(data, str | Path) else bytes(data)
        if len(raw) > self.limits.max_bytes:
            raise DicomInputError(f"{len(raw)} bytes exceed the limit of {self.limits.max_bytes}")
        stored = store_part10(self.spool, raw, source=IngestSource.API, max_bytes=self.limits.max_bytes)
        self._on_stored(stored)
        return stored.sop_instance_uid

    def _admit(self) -> str | None:
        """Why new instances must be refused now (the outbox is at its bound: findings are never dropped), or None."""
        if self.reporter is not None and self.reporter.backpressure:
            return "the outbox is full: the dashboard has not acknowledged findings for a while"
        return None

    def _on_stored(self, stored: StoredInstance) -> None:
        # Not fsync'd: the spool file is, and _reconcile() re-queues what a crash lost from this commit.
        outcome = self.queue.add(stored, durable=False)
        self.metrics.received.labels(source=stored.source.value).inc()
        if outcome is AddResult.DUPLICATE:
            record = self.queue.get(stored.sop_instance_uid)
            if record is not None and record.state in (InstanceState.ANALYSED, InstanceState.REPORTED):
                # A resend of a finished instance: its findings exist; the fresh copy only takes quota.
                self.spool.remove(stored.path)
        self._work.set()

    # -- the pipeline ----------------------------------------------------------------------------------------------

    def _routes(self, ds: Dataset, subject: RoutingSubject | None = None) -> list[LivePackage]:
        live = self.packages.live
        if self.router is None:
            modality = str(ds.get("Modality", ""))
            return [p for p in live.values() if modality in p.manifest.model.preprocessing.modalities]
        subject = subject or RoutingSubject.from_dataset(ds, keywords=self.router.keywords)
        return [live[name] for name in self.router.route(subject, live=live.keys()) if name in live]

    def _set_aside(self, record: InstanceRecord, reason: str) -> None:
        self.queue.quarantine(record.sop_instance_uid, reason)
        try:
            self.spool.quarantine(Path(record.spool_path), reason)
        except (OSError, MedgeError):
            log.exception("could not move %s to quarantine", record.spool_path)
        self.metrics.quarantined.labels(reason="input").inc()
        self._emit("quarantined", "warning", f"instance quarantined: {reason}", {"sop": record.sop_instance_uid})

    def _decode_one(self, record: InstanceRecord, claimed_at: float | None = None) -> None:
        """Read, route and preprocess a claimed instance, then hand it to inference (blocks while that lags).

        The instance stays claimed (``decoding``) until its findings are
        committed: after a crash its tensors are gone and it is decoded again
        whatever state it had reached, so recording the step costs a
        transaction and buys nothing.
        """
        waited = max(0.0, (time.time() if claimed_at is None else claimed_at) - record.received_at)
        t0 = time.perf_counter()
        keep_file = False
        try:
            ds = read_instance(Path(record.spool_path), self.limits)
            t1 = time.perf_counter()
            subject = None
            if self.series is not None:
                instance = SeriesInstance.from_dataset(ds, keywords=self.router.keywords if self.router else ())
                keep_file = self.series.instance_added(instance)
                subject = RoutingSubject("instance", instance.attributes, instance.frames)  # attributes read once
            routed = self._routes(ds, subject)
            prepared = {package.name: package.analyzer.prepare(ds) for package in routed}
        except (DicomInputError, PreprocessingError) as exc:
            self._set_aside(record, str(exc))
            return
        except Exception as exc:  # an unexpected failure on one instance must not stop the service
            log.exception("decoding %s failed", record.sop_instance_uid)
            self._set_aside(record, f"could not be decoded: {exc}")
            return
        stage_ms = {"receive": round(waited * 1e3, 3), "decode": round((t1 - t0) * 1e3, 3)}
        self._handoff.put(_Job(record, ds, prepared, stage_ms, keep_file))  # blocks when inference lags

    def _decode_loop(self, generation: int) -> None:
        if generation == 1:
            try:
                self._recover_decoded()
            except Exception:
                log.exception("recovering decoded instances failed")
        while not self._stop.is_set() and self._current("decode", generation):
            self._work.clear()  # before the claim: an arrival after it sets it again
            try:
                record = self.queue.claim_next(InstanceState.RECEIVED, _DECODER, lease_s=self._lease_s)
            except Exception:
                log.exception("work queue claim failed")
                record = None
            if record is None:
                self._work.wait(0.5)
                continue
            claimed_at = time.time()
            self._busy["decode"] = (record.sop_instance_uid, time.monotonic(), generation)
            try:
                self._decode_one(record, claimed_at)
            except Exception:  # e.g. the watchdog set it aside meanwhile: its claim is gone
                log.exception("decoding %s ended in an error", record.sop_instance_uid)
            finally:
                if self._current("decode", generation):
                    self._busy.pop("decode", None)
        if self._current("decode", generation):
            self._handoff.put(_STOP)

    @property
    def _lease_s(self) -> float:
        """The decoder's claim lasts until the findings are committed: longer than any wait the watchdog allows."""
        return max(120.0, 4 * self.config.dicom.instance_timeout_s)

    def _infer_loop(self, generation: int) -> None:
        while self._current("infer", generation):
            job = self._handoff.get()
            if job is _STOP:
                self._commits.put(_STOP)
                return
            assert isinstance(job, _Job)
            self._busy["infer"] = (job.record.sop_instance_uid, time.monotonic(), generation)
            try:
                self._infer_one(job)
            except Exception as exc:  # contained: the instance stays claimable and is retried, then failed
                log.exception("analysing %s failed", job.record.sop_instance_uid)
                self._emit("analysis-failed", "error", str(exc), {"sop": job.record.sop_instance_uid})
            finally:
                if self._current("infer", generation):
                    self._busy.pop("infer", None)

    def _infer_one(self, job: _Job) -> None:
        ds = job.ds
        findings = []
        results: list[PacsResult] = []
        for name, prepared in job.prepared.items():
            with self._packages_lock:
                package = self.packages.live.get(name)
                if package is None:
                    continue
                try:
                    analyses: list[Analysis] = package.analyzer.finish(ds, prepared)
                except EngineError as exc:
                    self._count(name, "failed")
                    self._emit("analysis-failed", "error", f"{name}: {exc}", {"sop": job.record.sop_instance_uid})
                    raise
                self._count(name, "analysed")
            made = self._findings(ds, analyses, package, job.stage_ms)
            findings += made
            results += self._results(ds, made, package)
        done = _Done(job, findings, results)
        if self._handoff.empty() and self._commits.empty() and not self._committing.is_set():
            # Nothing to group it with and nothing to run meanwhile: commit here, sparing two thread hand-offs.
            self._commit([done])
        else:
            self._commits.put(done)  # blocks when the disk lags (back-pressure)

    def _commit_loop(self, generation: int) -> None:
        """Group commit: every analysed instance waiting goes into the outbox in one durable transaction.

        Alone, an instance is committed as soon as it arrives; under load the
        instances that finished during one commit's fsync share the next one.
        """
        while self._current("commit", generation):
            group = [self._commits.get()]
            while len(group) < _MAX_GROUP:
                try:
                    group.append(self._commits.get_nowait())
                except queue.Empty:
                    if _GROUP_WAIT_S <= 0 or self._handoff.empty():
                        break
                    # A stream: more instances are on their way; every commit holds the queue (ingest and claims
                    # included) for one fsync, so fewer, larger commits let the rest of the pipeline run.
                    try:
                        group.append(self._commits.get(timeout=_GROUP_WAIT_S))
                    except queue.Empty:
                        break
            done = [item for item in group if isinstance(item, _Done)]
            if done:
                self._committing.set()
                try:
                    self._commit(done)
                except Exception as exc:  # contained: the instances stay claimed and are retried after their lease
                    log.exception("committing the findings of %d instance(s) failed", len(done))
                    for item in done:
                        sop = item.job.record.sop_instance_uid
                        self._emit("analysis-failed", "error", f"findings not committed: {exc}", {"sop": sop})
                finally:
                    self._committing.clear()
            if len(done) < len(group):  # _STOP: the inference thread has ended
                self._removals.put(_STOP)
                return

    def _commit(self, done: list[_Done]) -> None:
        """Findings of analysed instances into the outbox (one durable transaction), then their spool files out.

        The files go to the remover thread: each deletion fsyncs its folder (~1 ms), which would otherwise
        hold up the next instance's inference.
        """
        results = self.queue.record_findings_batch(
            [(item.job.record.sop_instance_uid, item.findings) for item in done],
            worker=_DECODER,
            results={item.job.record.sop_instance_uid: item.results for item in done if item.results},
        )
        if any(item.results for item in done):
            self._pacs_work.set()
        for item, result in zip(done, results, strict=True):
            if isinstance(result, Exception):
                log.warning("findings of %s not recorded: %s", item.job.record.sop_instance_uid, result)
            elif not item.job.keep_file:
                # The finding is what must survive; the image has served its purpose once findings are durable
                # (unless its series is still to be analysed: the series thread removes it then).
                self._removals.put(Path(item.job.record.spool_path))

    def _remove_loop(self, generation: int) -> None:
        """Delete spool files whose findings are durable (each deletion fsyncs its folder: off the commit path)."""
        while self._current("remove", generation):
            path = self._removals.get()
            if not isinstance(path, Path):
                return
            self._remove(path)

    def _remove(self, path: Path) -> None:
        try:
            self.spool.remove(path)
        except Exception:  # contained: a leftover file of an analysed instance is swept at the next start
            log.exception("could not remove %s from the spool", path)

    # -- hangs -----------------------------------------------------------------------------------------------------

    def _watchdog_loop(self, generation: int) -> None:
        timeout = self.config.dicom.instance_timeout_s
        while not self._stop.wait(min(0.25, timeout / 4)):
            self.progress.beat("supervisor")
            now = time.monotonic()
            for role, (sop, since, worker_generation) in list(self._busy.items()):
                if now - since <= timeout or not self._current(role, worker_generation):
                    continue
                self._busy.pop(role, None)
                stuck = self._threads[role]
                self._abandoned = [t for t in self._abandoned if t.is_alive()] + [stuck]
                reason = f"timed out after {timeout:g} s in {role} (a hang); its worker was replaced"
                self._emit("instance-timeout", "error", f"instance {sop}: {reason}", {"sop": sop, "stage": role})
                try:
                    record = self.queue.get(sop)
                    if record is not None:
                        self._set_aside(record, reason)
                except Exception:
                    log.exception("could not set aside timed-out instance %s", sop)
                if len(self._abandoned) > _MAX_STUCK_THREADS:
                    self._emit("worker-stuck", "critical", f"{len(self._abandoned)} worker threads are stuck")
                self._spawn(role)

    # -- series ----------------------------------------------------------------------------------------------------

    def _series_loop(self, generation: int) -> None:
        assert self.series is not None
        while not self._stop.wait(0.2):
            try:
                self.series.tick()
                while not self._stop.is_set() and (claim := self.queue.claim_series(_SERIES)) is not None:
                    self._analyse_series(claim)
            except Exception:  # contained: a claimed series returns after its lease and is tried again
                log.exception("series analysis failed")

    def _analyse_series(self, claim: SeriesClaim) -> None:
        """One finding per package the complete series is routed to, from its slices in order.

        Each slice is read once for all its packages. The packages lock is held
        per slice, not for the whole series, so instance inference goes on
        meanwhile; a package swapped out mid-series (activate-package) aborts
        the analysis, and the series is claimed again after its lease.
        """
        assert self.series is not None and self.router is not None
        uid = claim.series_instance_uid
        info = self.series.get(uid)
        with self._packages_lock:
            live = dict(self.packages.live)
        names = [] if info is None else self.router.route(info.routing_subject(), live=live.keys())
        results: dict[str, list[tuple[Path, Analysis]]] = {name: [] for name in names}
        stage_ms: dict[str, dict[str, float]] = {name: defaultdict(float) for name in names}
        for image in self.series.slices(uid) if names else []:
            if image.spool_path is None or not image.spool_path.exists():
                continue
            t0 = time.perf_counter()
            try:
                ds = read_instance(image.spool_path, self.limits)
            except DicomInputError as exc:
                log.warning("series %s: slice %s skipped: %s", uid, image.sop_instance_uid, exc)
                continue
            decode_ms = (time.perf_counter() - t0) * 1e3
            for name in names:
                with self._packages_lock:
                    if self.packages.live.get(name) is not live[name]:
                        raise EngineError(f"package {name} changed while series {uid} was analysed; it is retried")
                    try:
                        analyses = live[name].analyzer.analyze(ds)
                    except PreprocessingError as exc:
                        log.warning("series %s: slice %s skipped by %s: %s", uid, image.sop_instance_uid, name, exc)
                        continue
                stage_ms[name]["decode"] += decode_ms
                for analysis in analyses:
                    for stage, value in analysis.latency_ms.items():
                        stage_ms[name][stage] += value
                    results[name].append((image.spool_path, analysis))
        findings = []
        sr_made: list[PacsResult] = []
        for name in names:
            if not results[name]:
                log.warning("series %s: no slice could be analysed by %s", uid, name)
                continue
            index, result = series_result([analysis.result for _, analysis in results[name]])
            drifts = [analysis.drift for _, analysis in results[name] if analysis.drift is not None]
            path, deciding = results[name][index]
            whole = Analysis(
                deciding.frame,
                result,
                {stage: round(value, 3) for stage, value in stage_ms[name].items()},
                statistics.median(drifts) if drifts else None,
            )
            header = pydicom.dcmread(path, stop_before_pixels=True)  # the deciding slice names the finding
            made = self._findings(header, [whole], live[name], {}, series=True)
            findings += made
            sr_made += self._results(header, made, live[name])
        self.queue.record_series_findings(claim, findings, sr_made)
        if sr_made:
            self._pacs_work.set()
        for image in self.series.slices(uid, include_set_aside=True):
            if image.spool_path is not None and image.state in (InstanceState.ANALYSED, InstanceState.REPORTED):
                self.spool.remove(image.spool_path)
        log.info("series %s analysed: %d finding(s) from %s", uid, len(findings), ", ".join(names) or "no package")

    def _findings(
        self,
        ds: Dataset,
        analyses: list[Analysis],
        package: LivePackage,
        stage_ms: dict[str, float],
        *,
        series: bool = False,
    ) -> list[Finding]:
        """Findings of one package's analyses, counted in the metrics, the latency window and the drift watch."""
        made = build_findings(
            ds,
            analyses,
            package.manifest,
            package.sha256,
            site=self.config.appliance.site,
            device=self.config.appliance.device,
            site_key=self.site_key,
            phi=self.config.phi,
            broker_tls=self.config.mqtt.uses_tls,
            stage_ms=stage_ms,
            series=series,
        )
        for finding in made:
            self._latencies.append(finding.latency_ms.get("total", 0.0))
            for stage, value in finding.latency_ms.items():
                self.metrics.latency.labels(stage=stage).observe(value / 1e3)
            self.metrics.findings.labels(
                package=package.name, label=finding.label, positive=str(finding.positive).lower()
            ).inc()
            if OUTSIDE_CALIBRATED_RANGE in finding.flags:
                scanner = str(ds.get("StationName", "") or ds.get("Manufacturer", "") or "unknown")
                self._drift_by_scanner[scanner] += 1
                self.metrics.drift.labels(scanner=scanner, package=package.name).inc()
        return made

    # -- results to the PACS ---------------------------------------------------------------------------------------

    def _results(self, ds: Dataset, findings: list[Finding], package: LivePackage) -> list[PacsResult]:
        """The SRs of one package's findings, if the PACS takes this package's results."""
        if self.pacs is None or not findings:
            return []
        try:
            return sr_results(ds, findings, package.manifest, package.sha256, self.config.pacs)
        except Exception as exc:  # contained: the findings go on to the dashboard without their SRs
            sop = str(ds.get("SOPInstanceUID", ""))
            log.exception("no SR for the findings of %s on %s", package.name, sop)
            self._emit("sr-failed", "error", f"{package.name}: no SR for instance {sop}: {exc}", {"sop": sop})
            return []

    def _pacs_loop(self, generation: int) -> None:
        """Send the PACS outbox's SRs as they come due; woken early when new ones are committed."""
        assert self.pacs is not None
        while not self._stop.is_set() and self._current("pacs", generation):
            try:
                wait = self.pacs.step()
            except Exception:  # contained: e.g. the queue briefly unusable; the SRs stay pending
                log.exception("sending SRs to the PACS failed")
                wait = 1.0
            if self._pacs_work.wait(wait):
                self._pacs_work.clear()

    # -- health ----------------------------------------------------------------------------------------------------

    def _liveness(self) -> list[str]:
        dead = [thread.name for thread in self._threads.values() if not thread.is_alive()]
        problems = [f"thread {name} is not running" for name in dead]
        stuck = [thread.name for thread in self._abandoned if thread.is_alive()]
        if len(stuck) > _MAX_STUCK_THREADS:
            problems.append(f"{len(stuck)} worker threads are stuck: {', '.join(stuck)}")
        return problems

    def alive(self) -> list[str]:
        """Why the service is not alive (dead or stuck threads, a supervisor that stopped beating); empty if it is.

        systemd's watchdog is pinged only while this is empty (``medge serve``).
        """
        return self._liveness() + self.progress.problems()

    def _readiness(self) -> list[str]:
        problems = self._liveness()
        if not self.packages.live:
            problems.append("no package is live")
        problems += [f"{r.path.name}: {r.reason}" for r in self.packages.refused if r.check != "superseded"]
        if self.scp is None or not self.scp.running:
            problems.append("the DICOM SCP is not listening")
        return problems

    def heartbeat(self) -> Heartbeat:
        """What the appliance reports about itself now (queue depths, latency, engines, disk, drift)."""
        counts = self.queue.counts()
        for state, count in counts.items():
            self.metrics.queue_depth.labels(state=state).set(count)
        outbox = self.queue.depth()
        self.metrics.outbox_depth.set(outbox)
        self.metrics.spool_bytes.set(self.spool.used_bytes())
        latencies = sorted(self._latencies)
        engines = []
        with self._packages_lock:
            live = list(self.packages.live.values())
        for package in live:
            placement = package.placement
            self.metrics.engine_degraded.labels(package=package.name).set(int(placement.degraded))
            engines.append(
                EngineHealth(
                    package=f"{package.name} {package.manifest.model.version}",
                    engine=placement.engine,
                    device=placement.device,
                    providers=placement.providers,
                    nodes_by_provider=placement.nodes_by_provider,
                    degraded=placement.degraded,
                    reason=placement.reason,
                )
            )
        refused = [r for r in self.packages.refused if r.check != "superseded"]
        alarms = [f"package refused: {r.path.name}: {r.reason}" for r in refused]
        if self.pacs is not None:
            waiting = self.queue.pacs_pending()
            self.metrics.pacs_pending.set(waiting)
            if self.pacs.outage is not None:
                alarms.append(f"{waiting} SR(s) wait for the PACS {self.pacs.sender.destination}: {self.pacs.outage}")
        return Heartbeat(
            site=self.config.appliance.site,
            device=self.config.appliance.device,
            uptime_s=round(time.monotonic() - self._started_at, 3),
            queues=counts,
            latency_ms_p50=statistics.median(latencies) if latencies else None,
            latency_ms_p95=latencies[int(0.95 * (len(latencies) - 1))] if latencies else None,
            engines=engines,
            disk_free_bytes=shutil.disk_usage(self.data_dir).free,
            outbox_depth=outbox,
            alarms=alarms,
            drift=dict(self._drift_by_scanner),
        )

    def _count(self, package: str, outcome: str) -> None:
        self._outcomes.setdefault(package, Counter())[outcome] += 1

    def package_outcomes(self) -> dict[str, dict[str, int]]:
        """Per live package name: instances ``analysed`` and analyses ``failed`` since start (for probation)."""
        return {name: dict(counts) for name, counts in list(self._outcomes.items())}

    def package_refs(self) -> list[PackageRef]:
        """The live packages as status messages name them."""
        with self._packages_lock:
            return [package_ref(p.manifest, p.sha256) for p in self.packages.live.values()]

    # -- commands from the dashboard -----------------------------------------------------------------------------------

    def reload_packages(self) -> list[PackageRef]:
        """Verify and accept the packages folder again (a package was installed or removed); returns the live ones.

        Engines are swapped while no inference runs; instances decoded for a
        package that is gone are analysed by what is live now (or not at all).
        """
        with self._packages_lock:
            self.packages.load()
        if self.reporter is not None:
            self.reporter.announce()
        return self.package_refs()

    def _report_config(self, command: Command) -> dict[str, object]:
        """The running config (secrets are file paths, never their content) and the profile."""
        return {
            "config": self.config.model_dump(mode="json"),
            "profile": self.profile.id,
            "packages": [ref.model_dump(mode="json") for ref in self.package_refs()],
        }

    def _activate_package(self, command: Command) -> dict[str, object]:
        """Bring the packages folder live again; with ``args.name``/``args.version``, check that one went live."""
        live = self.reload_packages()
        wanted, version = command.args.get("name"), command.args.get("version")
        if wanted is not None and not any(
            ref.name == wanted and (version is None or ref.version == version) for ref in live
        ):
            refused = [f"{r.path.name}: {r.reason}" for r in self.packages.refused]
            raise EngineError(f"{wanted} {version or ''} did not go live; refused: {'; '.join(refused) or 'none'}")
        return {"live": [ref.model_dump(mode="json") for ref in live]}

    def _selftest(self, command: Command) -> dict[str, object]:
        """``medge selftest``'s checklist, run inside the service (the C-ECHO goes to the port it listens on).

        The broker check is left out: the command came over the broker, and
        checking would connect as this device and push the reporter's own
        connection off the broker.
        """
        config = self.config
        if self.scp is not None:
            config = config.model_copy(update={"dicom": config.dicom.model_copy(update={"port": self.scp.port})})
        report = SelfTest(config, trusted=self._trusted).run(skip=("broker",))
        return report.model_dump(mode="json")
