"""The PACS outbox and its sender, against a real pynetdicom Storage SCP playing the PACS.

SRs are recorded with their findings (one transaction, once), sent in order,
kept with their error and retried with back-off while the PACS is away or
refuses them, and marked sent only on a success or warning status.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pynetdicom import AE, evt

from runtime.analyzer import Analysis
from runtime.findings import build_findings
from runtime.metrics import RuntimeMetrics
from runtime.results import SR_SOP_CLASSES, PacsDelivery, PacsError, PacsSender, sr_results
from runtime.work_queue import InstanceState, PacsState, WorkQueue
from sdk.appliance_config import PacsSection, PhiSection
from sdk.messages import Finding
from sdk.plugins import Classification
from sdk.testing.mosquitto import free_port


class FakeClock:
    def __init__(self, start: float = 1_000_000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t


class Pacs:
    """A C-STORE SCP for the SR classes that keeps what it stores and answers ``status``."""

    def __init__(self, port: int, ae_title: str = "PACS") -> None:
        self.port = port
        self.ae_title = ae_title
        self.status = 0x0000
        self.stored: list[Dataset] = []
        self.calling: list[str] = []
        self._lock = threading.Lock()
        self._ae: AE | None = None

    def _on_store(self, event: evt.Event) -> int:
        with self._lock:
            self.calling.append(event.assoc.requestor.ae_title)
            if self.status in (0x0000, 0xB000):
                self.stored.append(event.dataset)
        return self.status

    def start(self) -> Pacs:
        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = True
        for sop_class in SR_SOP_CLASSES.values():
            ae.add_supported_context(sop_class)
        ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self._ae = ae
        return self

    def stop(self) -> None:
        if self._ae is not None:
            self._ae.shutdown()
            self._ae = None


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def queue(tmp_path: Path, clock: FakeClock) -> Iterator[WorkQueue]:
    q = WorkQueue(tmp_path / "queue.sqlite", clock=clock)
    yield q
    q.close()


@pytest.fixture
def pacs() -> Iterator[Pacs]:
    server = Pacs(free_port())
    yield server
    server.stop()


def _section(pacs: Pacs, **overrides: object) -> PacsSection:
    fields: dict[str, object] = {
        "enabled": True,
        "host": "127.0.0.1",
        "port": pacs.port,
        "ae_title": pacs.ae_title,
        "retry_min_s": 5.0,
        "retry_max_s": 60.0,
        "timeout_s": 5.0,
    }
    return PacsSection.model_validate(fields | overrides)


def _instance(queue: WorkQueue, n: int) -> Dataset:
    """A CT instance with UIDs of its own, queued and decoded (ready for its findings)."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{n}"
    queue.add_received(
        spool_path=f"/spool/{ds.SOPInstanceUID}.dcm",
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        calling_ae="SCANNER",
        association_id=None,
        transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
        size=1,
    )
    queue.advance(str(ds.SOPInstanceUID), InstanceState.DECODED)
    return ds


def _findings(ds: Dataset, package) -> list[Finding]:
    manifest, sha = package
    result = Classification("nodule", 0.9, {"nodule": 0.9}, 0.35, True, 10.0, 12.0)
    return build_findings(
        ds, [Analysis(None, result)], manifest, sha, site="s", device="d", site_key=b"k" * 32, phi=PhiSection(),
        broker_tls=False,
    )  # fmt: skip


def _record(queue: WorkQueue, package, section: PacsSection, count: int, start: int = 0) -> list[str]:
    """``count`` instances with one finding and its SR each, recorded as the appliance's committer does."""
    manifest, sha = package
    items, results = [], {}
    for n in range(start, start + count):
        ds = _instance(queue, n)
        findings = _findings(ds, package)
        items.append((str(ds.SOPInstanceUID), findings))
        results[str(ds.SOPInstanceUID)] = sr_results(ds, findings, manifest, sha, section)
    assert all(isinstance(r, int) for r in queue.record_findings_batch(items, results=results))
    return [entry.result.sop_instance_uid for entry in queue.pacs_entries()][-count:]


def test_an_sr_is_recorded_once_with_its_finding(queue: WorkQueue, pacs: Pacs, package) -> None:
    manifest, sha = package
    section = _section(pacs)
    ds = _instance(queue, 1)
    sop = str(ds.SOPInstanceUID)
    findings = _findings(ds, package)
    results = sr_results(ds, findings, manifest, sha, section)
    assert queue.record_findings_batch([(sop, findings)], results={sop: results}) == [1]
    (entry,) = queue.pacs_entries()
    assert entry.result.finding_id == findings[0].id and entry.state is PacsState.PENDING and entry.attempts == 0
    assert pydicom.dcmread(io.BytesIO(entry.result.data)).SOPInstanceUID == entry.result.sop_instance_uid
    # A redo after a crash (the finding is there already): no second SR.
    assert queue.record_findings(sop, findings, results=sr_results(ds, findings, manifest, sha, section)) == 0
    assert len(queue.pacs_entries()) == 1

    # An instance set aside meanwhile: its findings and its SRs are dropped together.
    other = _instance(queue, 2)
    queue.quarantine(str(other.SOPInstanceUID), "test")
    other_findings = _findings(other, package)
    other_results = {str(other.SOPInstanceUID): sr_results(other, other_findings, manifest, sha, section)}
    (error,) = queue.record_findings_batch([(str(other.SOPInstanceUID), other_findings)], results=other_results)
    assert isinstance(error, Exception)
    assert len(queue.pacs_entries()) == 1 and queue.pacs_pending() == 1


def test_delivery_waits_out_an_outage_and_sends_each_sr_once(
    queue: WorkQueue, pacs: Pacs, package, clock: FakeClock
) -> None:
    section = _section(pacs)
    events: list[tuple[str, str]] = []
    metrics = RuntimeMetrics()
    delivery = PacsDelivery(
        queue, section, "MEDGE", on_event=lambda kind, sev, msg, detail: events.append((kind, msg)), metrics=metrics,
        clock=clock,
    )  # fmt: skip
    uids = _record(queue, package, section, 20)  # more than one association's batch

    # The PACS is not there: one event, the error kept, every SR waits the back-off (no probe per SR).
    assert delivery.step() > 0
    assert [kind for kind, _ in events] == ["pacs-send-failed"]
    assert delivery.outage is not None and "cannot be reached" in delivery.outage
    waiting = queue.pacs_entries(PacsState.PENDING)
    assert len(waiting) == 20
    first_batch = [e for e in waiting if e.attempts == 1]
    assert first_batch and all(e.last_error == delivery.outage and e.next_try > clock.t for e in first_batch)
    delivery.step()
    assert [kind for kind, _ in events] == ["pacs-send-failed"]  # still within the back-off: no new attempt
    assert max(e.attempts for e in queue.pacs_entries()) == 1

    pacs.start()
    clock.t += section.retry_max_s
    delivery.step()
    assert sorted(ds.SOPInstanceUID for ds in pacs.stored) == sorted(uids)  # each SR, once
    assert queue.pacs_pending() == 0 and delivery.outage is None
    assert [kind for kind, _ in events] == ["pacs-send-failed", "pacs-send-recovered"]
    assert set(pacs.calling) == {"MEDGE"}
    assert metrics.registry.get_sample_value("medge_pacs_sent_total") == 20
    assert metrics.registry.get_sample_value("medge_pacs_pending") == 0
    delivery.step()
    assert len(pacs.stored) == 20  # nothing is sent twice


def test_a_refusing_pacs_keeps_the_srs_and_says_why(queue: WorkQueue, pacs: Pacs, package, clock: FakeClock) -> None:
    section = _section(pacs)
    pacs.status = 0xA700  # out of resources
    pacs.start()
    events: list[str] = []
    delivery = PacsDelivery(queue, section, "MEDGE", on_event=lambda k, s, m, d: events.append(k), clock=clock)
    _record(queue, package, section, 2)
    delivery.step()
    entries = queue.pacs_entries()
    assert all(e.state is PacsState.PENDING and e.attempts == 1 for e in entries)
    assert all("0xA700" in (e.last_error or "") for e in entries)
    assert events == ["pacs-send-failed"]

    pacs.status = 0xB000  # a warning (coercion of data elements): the PACS has it
    clock.t += section.retry_max_s
    delivery.step()
    assert queue.pacs_pending() == 0 and len(pacs.stored) == 2
    assert events == ["pacs-send-failed", "pacs-send-recovered"]


def test_sent_srs_are_purged_after_keep_sent_s(queue: WorkQueue, pacs: Pacs, package, clock: FakeClock) -> None:
    section = _section(pacs, keep_sent_s=10.0)
    pacs.start()
    delivery = PacsDelivery(queue, section, "MEDGE", clock=clock)
    _record(queue, package, section, 1)
    delivery.step()
    assert [e.state for e in queue.pacs_entries()] == [PacsState.SENT]
    clock.t += 120  # past keep_sent_s and the purge interval
    delivery.step()
    assert queue.pacs_entries() == []


def test_a_rejected_association_is_an_error_naming_the_pacs(queue: WorkQueue, pacs: Pacs, package) -> None:
    pacs.start()
    section = _section(pacs, ae_title="NOT-THE-PACS")
    _record(queue, package, section, 1)
    sender = PacsSender(section, "MEDGE")
    with pytest.raises(PacsError, match=r"NOT-THE-PACS@127\.0\.0\.1"):
        sender.send([entry.result for entry in queue.pacs_entries()])
    assert pacs.stored == []


def test_the_config_refuses_an_enabled_pacs_without_an_address() -> None:
    with pytest.raises(ValueError, match=r"pacs\.host and pacs\.ae_title"):
        PacsSection(enabled=True, host="127.0.0.1")
    with pytest.raises(ValueError, match="retry_min_s"):
        PacsSection(retry_min_s=10, retry_max_s=1)
    assert PacsSection(enabled=True, host="pacs", ae_title="PACS", packages=["a"]).wants("a")
    assert not PacsSection(enabled=True, host="pacs", ae_title="PACS", packages=["a"]).wants("b")
    assert not PacsSection().wants("a")
