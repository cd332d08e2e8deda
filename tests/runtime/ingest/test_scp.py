"""The Storage SCP against real peers: dcmtk's storescu/echoscu and pynetdicom's SCU on loopback."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, RTPlanStorage, Verification

from runtime.ingest import IngestEvent, IngestEventKind, StorageSCP, StoreStatus, nodelay_evt_handlers
from runtime.spool import IngestSource, Spool, StoredInstance
from sdk.appliance_config import DicomSection
from sdk.testing import PhantomSpec, generate_studies

STORESCU = "/usr/bin/storescu"
ECHOSCU = "/usr/bin/echoscu"
SCANNER = "SCANNER"
PYSCU = "PYSCU"

pytestmark = pytest.mark.skipif(not Path(STORESCU).exists(), reason="dcmtk is not installed")


def bundled(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    assert path is not None, name
    return Path(path)


@dataclass
class Harness:
    scp: StorageSCP
    spool: Spool
    stored: list[StoredInstance] = field(default_factory=list)
    events: list[IngestEvent] = field(default_factory=list)
    released: list[tuple[str, int]] = field(default_factory=list)

    def wait_for(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for the SCP")
            time.sleep(0.01)

    def events_of(self, kind: IngestEventKind) -> list[IngestEvent]:
        return [e for e in self.events if e.kind is kind]

    def spooled(self) -> list[Path]:
        return list(self.spool.instances())

    def leftovers(self) -> list[Path]:
        return [p for p in self.spool.root.rglob(".*") if p.is_file()]


def _start(
    tmp_path: Path, quota: int = 10**9, allowed: tuple[str, ...] = (SCANNER, PYSCU), **options: int
) -> Iterator[Harness]:
    spool = Spool(tmp_path / "spool", quota)
    harness = Harness(scp=None, spool=spool)  # type: ignore[arg-type]
    config = DicomSection(ae_title="MEDGE", host="127.0.0.1", allowed_calling_aes=list(allowed))
    harness.scp = StorageSCP(
        config,
        spool,
        harness.stored.append,
        on_event=harness.events.append,
        on_association_released=lambda assoc_id, n: harness.released.append((assoc_id, n)),
        port=0,
        **options,
    )
    harness.scp.start()
    try:
        yield harness
    finally:
        harness.scp.stop()


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[Harness]:
    yield from _start(tmp_path)


def storescu(
    port: int, *files: Path, calling: str = SCANNER, extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [STORESCU, *extra, "-aet", calling, "-aec", "MEDGE", "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        env={**os.environ, "TCP_NODELAY": "1"},
        timeout=60,
    )


def associate(port: int, *contexts: str, calling: str = PYSCU, nodelay: bool = True) -> Association:
    ae = AE(ae_title=calling)
    for context in contexts:
        ae.add_requested_context(context)
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDGE", evt_handlers=nodelay_evt_handlers() if nodelay else [])
    assert assoc.is_established
    return assoc


def same_dataset(stored: Path, source: Path) -> bool:
    """Same elements and values (pixel data still encoded), same transfer syntax.

    Ignores trailing padding and the VR of encapsulated pixel data, which storescu normalises.
    """
    a, b = dcmread(stored), dcmread(source)
    tags = {e.tag for e in a} | {e.tag for e in b}
    tags.discard(0xFFFCFFFC)
    return a.file_meta.TransferSyntaxUID == b.file_meta.TransferSyntaxUID and all(
        t in a and t in b and a[t].value == b[t].value for t in tags
    )


# -- storing -------------------------------------------------------------------------------------------------------


def test_storescu_images_and_a_phantom_series_land_in_the_spool(scp: Harness, tmp_path: Path) -> None:
    generate_studies(tmp_path / "phantom", 1, PhantomSpec(rows=64, columns=64, slices=6), seed=3)
    phantom = sorted((tmp_path / "phantom").rglob("*.dcm"))
    files = [bundled("CT_small.dcm"), bundled("MR_small.dcm"), *phantom]

    result = storescu(scp.scp.port, *files)

    assert result.returncode == 0, result.stderr
    scp.wait_for(lambda: len(scp.released) == 1)
    assert len(scp.stored) == len(files) == len(scp.spooled())
    assert len({s.sop_instance_uid for s in scp.stored}) == len(files)  # on_stored once per instance
    assert scp.released[0] == (scp.stored[0].association_id, len(files))
    assert not scp.leftovers()
    by_uid = {s.sop_instance_uid: s for s in scp.stored}
    for source in files:
        meta = dcmread(source, stop_before_pixels=True)
        instance = by_uid[meta.SOPInstanceUID]
        assert instance.path == scp.spool.root / meta.StudyInstanceUID / meta.SeriesInstanceUID / (
            f"{meta.SOPInstanceUID}.dcm"
        )
        assert (instance.sop_class_uid, instance.series_instance_uid) == (meta.SOPClassUID, meta.SeriesInstanceUID)
        assert (instance.calling_ae, instance.source, instance.duplicate) == (SCANNER, IngestSource.SCP, False)
        assert instance.size_bytes == instance.path.stat().st_size
        assert same_dataset(instance.path, source)
    assert dcmread(scp.stored[0].path).file_meta.SourceApplicationEntityTitle == SCANNER
    assert scp.events == []


@pytest.mark.parametrize(
    ("name", "propose"),
    [
        ("JPEG2000.dcm", "-xw"),  # JPEG 2000 (lossy)
        ("MR_small_jp2klossless.dcm", "-xv"),  # JPEG 2000 lossless
        ("MR_small_jpeg_ls_lossless.dcm", "-xt"),  # JPEG-LS lossless
        ("MR_small_RLE.dcm", "-xr"),  # RLE lossless
        ("SC_rgb_dcmtk_+eb+cr.dcm", "-xy"),  # JPEG baseline
        ("JPEG-lossy.dcm", "-xx"),  # JPEG extended
        ("SC_rgb_jpeg_gdcm.dcm", "-xs"),  # JPEG lossless SV1
        ("image_dfl.dcm", "-xd"),  # deflated explicit VR little endian
        ("MR_small_bigendian.dcm", "-xb"),  # explicit VR big endian
        ("MR_small_implicit.dcm", "-xi"),  # implicit VR little endian
        ("ExplVR_BigEnd.dcm", "-xb"),  # ultrasound
    ],
)
def test_transfer_syntaxes_are_stored_as_received(scp: Harness, name: str, propose: str) -> None:
    source = bundled(name)
    result = storescu(scp.scp.port, source, extra=(propose,))

    assert result.returncode == 0, result.stderr
    (instance,) = scp.stored
    assert instance.transfer_syntax_uid == dcmread(source, stop_before_pixels=True).file_meta.TransferSyntaxUID
    assert same_dataset(instance.path, source)  # bit-exact: nothing was transcoded


def test_jpeg_ls_near_lossless(scp: Harness, tmp_path: Path) -> None:
    ds = dcmread(bundled("JPEGLSNearLossless_16.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    source = tmp_path / "jls_near.dcm"
    ds.save_as(source)

    result = storescu(scp.scp.port, source, extra=("-xu",))

    assert result.returncode == 0, result.stderr
    assert scp.stored[0].transfer_syntax_uid == "1.2.840.10008.1.2.4.81"
    assert same_dataset(scp.stored[0].path, source)


def test_a_resend_is_stored_again_as_a_duplicate(scp: Harness) -> None:
    for _ in range(2):
        assert storescu(scp.scp.port, bundled("MR_small.dcm")).returncode == 0
    assert [s.duplicate for s in scp.stored] == [False, True]
    assert len(scp.spooled()) == 1


def test_concurrent_associations(scp: Harness) -> None:
    base = dcmread(bundled("MR_small.dcm"))
    uids: list[str] = []

    def sender() -> None:
        assoc = associate(scp.scp.port, MRImageStorage)
        for _ in range(10):
            base_copy = base.copy()
            base_copy.SOPInstanceUID = uid = generate_uid()
            uids.append(uid)
            assert assoc.send_c_store(base_copy).Status == StoreStatus.SUCCESS
        assoc.release()

    threads = [threading.Thread(target=sender) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    scp.wait_for(lambda: len(scp.released) == 3)
    assert sorted(s.sop_instance_uid for s in scp.stored) == sorted(uids)
    assert sorted(n for _, n in scp.released) == [10, 10, 10]
    assert len({a for a, _ in scp.released}) == 3


# -- verification and association policy ---------------------------------------------------------------------------


def test_c_echo_from_echoscu_and_pynetdicom(scp: Harness) -> None:
    result = subprocess.run(
        [ECHOSCU, "-aet", SCANNER, "-aec", "MEDGE", "127.0.0.1", str(scp.scp.port)], capture_output=True, timeout=30
    )
    assert result.returncode == 0, result.stderr

    assoc = associate(scp.scp.port, Verification)
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_a_calling_ae_not_allowed_is_rejected(scp: Harness) -> None:
    result = storescu(scp.scp.port, bundled("CT_small.dcm"), calling="INTRUDER")

    assert result.returncode != 0
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", scp.scp.port, ae_title="MEDGE", evt_handlers=nodelay_evt_handlers())
    assert assoc.is_rejected
    assert scp.stored == [] and scp.spooled() == []
    rejected = scp.events_of(IngestEventKind.ASSOCIATION_REJECTED)
    assert len(rejected) == 2
    assert rejected[0].calling_ae == "INTRUDER" and "not in allowed_calling_aes" in rejected[0].message


def test_a_wrong_called_ae_is_rejected(scp: Harness) -> None:
    ae = AE(ae_title=PYSCU)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", scp.scp.port, ae_title="SOMEONE_ELSE")

    assert assoc.is_rejected
    assert "called AE title 'SOMEONE_ELSE'" in scp.events_of(IngestEventKind.ASSOCIATION_REJECTED)[0].message


def test_an_empty_allowed_list_accepts_any_caller(tmp_path: Path) -> None:
    for harness in _start(tmp_path, allowed=()):
        assert storescu(harness.scp.port, bundled("MR_small.dcm"), calling="ANYONE").returncode == 0
        assert harness.stored[0].calling_ae == "ANYONE"


def test_an_unsupported_sop_class_is_not_accepted(scp: Harness) -> None:
    ae = AE(ae_title=PYSCU)
    ae.add_requested_context(RTPlanStorage)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", scp.scp.port, ae_title="MEDGE", evt_handlers=nodelay_evt_handlers())

    assert [c.abstract_syntax for c in assoc.rejected_contexts] == [RTPlanStorage]
    with pytest.raises(ValueError, match="presentation context"):
        assoc.send_c_store(dcmread(bundled("rtplan.dcm")))
    assoc.release()

    result = storescu(scp.scp.port, bundled("rtplan.dcm"))
    assert result.returncode != 0
    assert scp.stored == [] and scp.spooled() == []


# -- refusals: quota, broken and hostile datasets ------------------------------------------------------------------


def test_a_full_spool_answers_out_of_resources_and_keeps_nothing_partial(tmp_path: Path) -> None:
    for harness in _start(tmp_path, quota=20_000):
        assoc = associate(harness.scp.port, CTImageStorage, MRImageStorage)
        status = assoc.send_c_store(dcmread(bundled("CT_small.dcm")))  # 39 kB > 20 kB
        assert status.Status == StoreStatus.OUT_OF_RESOURCES == 0xA700
        assert "quota" in status.ErrorComment
        assert harness.spooled() == [] and harness.leftovers() == []
        assert harness.spool.used_bytes() == 0
        assert harness.events_of(IngestEventKind.OUT_OF_RESOURCES)[0].calling_ae == PYSCU

        # Still serving: a smaller instance fits.
        assert assoc.send_c_store(dcmread(bundled("MR_small.dcm"))).Status == StoreStatus.SUCCESS
        assoc.release()
        assert len(harness.stored) == 1


@pytest.fixture
def send_files_raw(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make pynetdicom send a file's bytes as they are (no decode/re-encode), so a broken dataset goes out broken."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)


def _broken(tmp_path: Path, kind: str) -> Path:
    source = bundled("MR_small.dcm")
    data = source.read_bytes()
    path = tmp_path / f"{kind}.dcm"
    if kind == "truncated":
        path.write_bytes(data[:-700])
    elif kind == "garbage":
        meta_end = len(data) - len(dcmread(source).PixelData) - 2000
        path.write_bytes(data[:meta_end] + bytes(range(256)) * 8)
    return path


@pytest.mark.parametrize(("kind", "reason"), [("truncated", "truncated"), ("garbage", "")])
def test_a_broken_dataset_is_quarantined_and_the_scp_keeps_serving(
    scp: Harness, tmp_path: Path, send_files_raw: None, kind: str, reason: str
) -> None:
    assoc = associate(scp.scp.port, MRImageStorage)

    status = assoc.send_c_store(_broken(tmp_path, kind))

    assert status.Status == StoreStatus.CANNOT_UNDERSTAND
    assert reason in status.ErrorComment
    (event,) = scp.events_of(IngestEventKind.QUARANTINED)
    assert event.path is not None and event.path.parent == scp.spool.quarantine_dir
    assert status.ErrorComment[:40] in Path(f"{event.path}.reason.txt").read_text()
    assert scp.spooled() == [] and scp.stored == []

    # The same association goes on: a good instance after the bad one is stored.
    assert assoc.send_c_store(bundled("MR_small.dcm")).Status == StoreStatus.SUCCESS
    assoc.release()
    assert len(scp.stored) == 1 == len(scp.spooled())


def test_pydicoms_own_truncated_file_is_refused(scp: Harness, send_files_raw: None) -> None:
    assoc = associate(scp.scp.port, MRImageStorage)
    status = assoc.send_c_store(bundled("MR_truncated.dcm"))
    assoc.release()

    assert status.Status == StoreStatus.CANNOT_UNDERSTAND
    assert "(7FE0,0010)" in status.ErrorComment


def test_a_dataset_without_study_and_series_is_quarantined(scp: Harness) -> None:
    # pydicom's JPEG-LS sample lacks StudyInstanceUID and SeriesInstanceUID: it cannot be placed.
    result = storescu(scp.scp.port, bundled("JPEGLSNearLossless_16.dcm"), extra=("-xu",))

    assert result.returncode != 0 or "0xc000" in result.stderr.lower()
    assert scp.stored == []
    (event,) = scp.events_of(IngestEventKind.QUARANTINED)
    assert "StudyInstanceUID missing" in event.message


def test_a_deflate_bomb_is_refused(tmp_path: Path) -> None:
    for harness in _start(tmp_path, max_inflated_bytes=1000):
        storescu(harness.scp.port, bundled("image_dfl.dcm"), extra=("-xd",))
        assert harness.stored == []
        (event,) = harness.events_of(IngestEventKind.QUARANTINED)
        assert "inflates beyond 1000 bytes" in event.message


def test_a_dataset_whose_uids_differ_from_the_request_is_refused(
    scp: Harness, tmp_path: Path, send_files_raw: None
) -> None:
    ds = dcmread(bundled("MR_small.dcm"))
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()  # the request's Affected SOP Instance UID
    source = tmp_path / "mismatch.dcm"
    ds.save_as(source)
    assoc = associate(scp.scp.port, MRImageStorage)

    status = assoc.send_c_store(source)
    assoc.release()

    assert status.Status == StoreStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS == 0xA900
    assert scp.stored == [] and len(scp.events_of(IngestEventKind.QUARANTINED)) == 1


@pytest.mark.parametrize("uid", ["1.2.3.4/../../../../tmp/evil", "1.2.abc", "..", "1.2.-3"])
def test_a_hostile_sop_instance_uid_never_names_a_path(scp: Harness, tmp_path: Path, uid: str) -> None:
    ds = dcmread(bundled("MR_small.dcm"))
    assoc = associate(scp.scp.port, MRImageStorage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid UID, as it would in production
        ds.SOPInstanceUID = uid
        status = assoc.send_c_store(ds)
    assoc.release()

    assert status.Status == StoreStatus.CANNOT_UNDERSTAND
    assert "SOPInstanceUID invalid" in status.ErrorComment
    assert scp.spooled() == []
    outside = [p for p in tmp_path.rglob("*") if not p.is_relative_to(scp.spool.root)]
    assert outside == []
    assert all(p.parent == scp.spool.quarantine_dir for p in scp.spool.root.rglob("*") if p.is_file())


def test_a_failing_hand_off_is_a_processing_failure_and_the_instance_stays(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", 10**8)
    events: list[IngestEvent] = []

    def on_stored(instance: StoredInstance) -> None:
        raise RuntimeError("queue is down")

    config = DicomSection(ae_title="MEDGE", host="127.0.0.1", allowed_calling_aes=[PYSCU])
    with StorageSCP(config, spool, on_stored, on_event=events.append, port=0) as server:
        assoc = associate(server.port, MRImageStorage)
        status = assoc.send_c_store(dcmread(bundled("MR_small.dcm")))
        assoc.release()

    assert status.Status == StoreStatus.PROCESSING_FAILURE == 0x0110
    assert [e.kind for e in events] == [IngestEventKind.HOOK_FAILED]
    assert len(list(spool.instances())) == 1


# -- sockets -------------------------------------------------------------------------------------------------------


def _round_trips(port: int, count: int, *, nodelay: bool) -> list[float]:
    ds = dcmread(bundled("MR_small.dcm"))
    assoc = associate(port, MRImageStorage, nodelay=nodelay)
    assert assoc.dul.socket is not None and assoc.dul.socket.socket is not None
    scu_nodelay = assoc.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    assert bool(scu_nodelay) == nodelay
    times = []
    for _ in range(count):
        ds.SOPInstanceUID = generate_uid()
        start = time.perf_counter()
        assert assoc.send_c_store(ds).Status == StoreStatus.SUCCESS
        times.append(time.perf_counter() - start)
    assoc.release()
    return times


def test_tcp_nodelay_keeps_round_trips_far_below_the_delayed_ack(scp: Harness) -> None:
    fast = _round_trips(scp.scp.port, 50, nodelay=True)

    assert statistics.median(fast) < 0.025, f"median {statistics.median(fast) * 1e3:.1f} ms per instance"
    assert len(scp.stored) == 50

    # Control: an SCU without TCP_NODELAY stalls on Nagle + delayed ACK (~40 ms), which is what the helper removes.
    slow = _round_trips(scp.scp.port, 8, nodelay=False)
    assert statistics.median(slow) > 0.035


def test_accepted_sockets_have_tcp_nodelay(scp: Harness) -> None:
    assoc = associate(scp.scp.port, Verification)
    acceptors = [t for t in threading.enumerate() if isinstance(t, Association) and t.is_acceptor]
    flags = [
        a.dul.socket.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        for a in acceptors
        if a.dul.socket is not None and a.dul.socket.socket is not None
    ]
    assoc.release()
    assert flags and all(flags)


def test_port_is_the_bound_port_and_stop_closes_it(tmp_path: Path) -> None:
    config = DicomSection(ae_title="MEDGE", host="127.0.0.1", allowed_calling_aes=[PYSCU])
    server = StorageSCP(config, Spool(tmp_path, 10**6), lambda _: None, port=0)
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.port
    server.start()
    port = server.port
    assert port > 0 and server.running
    server.stop()
    assert not server.running
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_status_codes_are_the_documented_ones() -> None:
    assert {s.name: int(s) for s in StoreStatus} == {
        "SUCCESS": 0x0000,
        "PROCESSING_FAILURE": 0x0110,
        "OUT_OF_RESOURCES": 0xA700,
        "DATASET_DOES_NOT_MATCH_SOP_CLASS": 0xA900,
        "CANNOT_UNDERSTAND": 0xC000,
    }


@pytest.mark.parametrize("tuned", [True, False])
def test_the_scp_serves_c_store_in_the_socket_thread_when_tuned(tmp_path: Path, tuned: bool) -> None:
    """The ingest figures rest on this: with the installed pynetdicom, a C-STORE is served by the DUL thread."""
    generate_studies(tmp_path / "phantom", 1, PhantomSpec(rows=64, columns=64, slices=2), seed=5)
    files = sorted((tmp_path / "phantom").rglob("*.dcm"))
    served_by: list[str] = []

    def on_stored(stored: StoredInstance) -> None:
        served_by.append(type(threading.current_thread()).__name__)

    spool = Spool(tmp_path / "spool", 10**9)
    section = DicomSection(ae_title="MEDGE", host="127.0.0.1", allowed_calling_aes=["PYSCU"])
    with StorageSCP(section, spool, on_stored, port=0, tuned=tuned) as scp:
        ae = AE(ae_title="PYSCU")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="MEDGE", evt_handlers=nodelay_evt_handlers())
        assert assoc.is_established
        try:
            statuses = [assoc.send_c_store(dcmread(path)) for path in files]
        finally:
            assoc.release()
    assert [status.Status for status in statuses] == [0x0000, 0x0000]
    assert len(list(spool.instances())) == 2
    assert served_by == (["DULServiceProvider"] * 2 if tuned else ["Association"] * 2)
