"""The durable spool: atomic fsync'd writes, quota, quarantine, crash leftovers, hostile UIDs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from runtime.spool import QUARANTINE_DIR, Spool, SpoolError, SpoolFullError, is_valid_uid
from sdk.errors import DicomInputError

STUDY, SERIES = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in _files(root))


def test_store_places_the_file_by_uids_and_counts_its_bytes(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", 10_000)
    written = spool.store(b"abc" * 100, study_instance_uid=STUDY, series_instance_uid=SERIES, sop_instance_uid="1.2.3")

    assert written.path == spool.root / STUDY / SERIES / "1.2.3.dcm"
    assert written.path.read_bytes() == b"abc" * 100
    assert (written.size_bytes, written.duplicate) == (300, False)
    assert spool.used_bytes() == 300
    assert _files(spool.root) == [written.path]  # no temp file left behind


def test_store_writes_parts_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10_000)
    written = spool.store(
        [b"head", memoryview(b"-body-"), b"", b"tail"],
        study_instance_uid=STUDY,
        series_instance_uid=SERIES,
        sop_instance_uid="1.2.4",
    )
    assert written.path.read_bytes() == b"head-body-tail"
    assert written.size_bytes == 14


def test_a_resend_replaces_the_instance_and_is_reported_as_duplicate(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10_000)
    uids = {"study_instance_uid": STUDY, "series_instance_uid": SERIES, "sop_instance_uid": "1.2.5"}
    first = spool.store(b"x" * 500, **uids)
    second = spool.store(b"y" * 300, **uids)

    assert second.duplicate and not first.duplicate
    assert second.path == first.path
    assert first.path.read_bytes() == b"y" * 300
    assert spool.used_bytes() == 300 == _disk_bytes(spool.root)


def test_quota_refuses_without_writing(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1_000)
    spool.store(b"a" * 600, study_instance_uid=STUDY, series_instance_uid=SERIES, sop_instance_uid="1.1")
    assert spool.has_room(400) and not spool.has_room(401)

    with pytest.raises(SpoolFullError, match="quota"):
        spool.store(b"b" * 401, study_instance_uid=STUDY, series_instance_uid=SERIES, sop_instance_uid="1.2")

    assert spool.used_bytes() == 600 == _disk_bytes(spool.root)
    assert not (spool.root / STUDY / SERIES / "1.2.dcm").exists()


@pytest.mark.parametrize(
    ("field", "uid"),
    [
        ("sop_instance_uid", "../../../etc/passwd"),
        ("sop_instance_uid", "1.2/3"),
        ("sop_instance_uid", ""),
        ("sop_instance_uid", "1." + "2" * 63),  # 65 characters
        ("study_instance_uid", ".."),
        ("series_instance_uid", "/tmp"),
        ("series_instance_uid", "1.2.3\x00"),
    ],
)
def test_hostile_uids_are_refused_and_nothing_is_written(tmp_path: Path, field: str, uid: str) -> None:
    spool = Spool(tmp_path / "spool", 10_000)
    uids = {"study_instance_uid": STUDY, "series_instance_uid": SERIES, "sop_instance_uid": "1.2.3"}
    uids[field] = uid

    with pytest.raises(DicomInputError, match="invalid UID"):
        spool.store(b"data", **uids)

    assert _files(tmp_path) == []
    assert spool.used_bytes() == 0


def test_uid_validation() -> None:
    assert is_valid_uid("1.2.840.10008.5.1.4.1.1.2")
    assert is_valid_uid("1" * 64)
    for bad in ("", "1" * 65, "1..2", ".1", "1.", "1.2a", "1.2 ", None, 12):
        assert not is_valid_uid(bad), bad


def test_quarantine_keeps_bytes_with_a_reason(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10_000)
    target = spool.quarantine(b"garbage", "truncated: element (7FE0,0010) cut off", name="../../evil name.dcm")

    assert target.parent == spool.quarantine_dir
    assert target.read_bytes() == b"garbage"
    assert "/" not in target.name and not target.name.startswith(".")
    reason = Path(f"{target}.reason.txt").read_text()
    assert "truncated: element (7FE0,0010) cut off" in reason
    assert spool.used_bytes() == _disk_bytes(tmp_path)


def test_quarantine_moves_a_file_in(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", 10_000)
    source = tmp_path / "inbox" / "notes.txt"
    source.parent.mkdir()
    source.write_text("not dicom")

    target = spool.quarantine(source, "not a DICOM Part 10 file")

    assert not source.exists()
    assert target.read_text() == "not dicom"
    assert target.name.endswith("notes.txt")
    assert f"source: {source}" in Path(f"{target}.reason.txt").read_text()


def test_a_spooled_instance_set_aside_later_is_not_counted_twice(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 1_000)
    path = spool.store(b"d" * 900, study_instance_uid=STUDY, series_instance_uid=SERIES, sop_instance_uid="1.7").path

    target = spool.quarantine(path, "pixel data cannot be decoded")  # kept although 900 more would not fit

    assert target.read_bytes() == b"d" * 900 and not path.exists()
    assert not (tmp_path / STUDY).exists()
    assert spool.used_bytes() == _disk_bytes(tmp_path)


def test_quarantine_without_room_keeps_only_the_reason(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 100)
    kept = spool.quarantine(b"z" * 500, "dataset does not match")

    assert kept.name.endswith(".reason.txt")
    text = kept.read_text()
    assert "dataset does not match" in text and "dropped (500 bytes" in text
    assert [p.name.endswith(".reason.txt") for p in _files(spool.quarantine_dir)] == [True]


def test_remove_deletes_the_instance_and_its_empty_folders(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10_000)
    a = spool.store(b"a" * 10, study_instance_uid=STUDY, series_instance_uid=SERIES, sop_instance_uid="1.1").path
    b = spool.store(b"b" * 20, study_instance_uid=STUDY, series_instance_uid=SERIES, sop_instance_uid="1.2").path

    spool.remove(a)
    assert not a.exists() and b.exists()
    assert spool.used_bytes() == 20
    spool.remove(b)
    assert not (tmp_path / STUDY).exists()
    assert (tmp_path / QUARANTINE_DIR).is_dir()
    assert spool.used_bytes() == 0

    spool.remove(b)  # idempotent: a crash between remove and the queue's commit repeats it
    with pytest.raises(SpoolError, match="not a file inside the spool"):
        spool.remove(tmp_path.parent / "elsewhere.dcm")


def test_instances_lists_spooled_files_only(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10_000)
    paths = [
        spool.store(b"x", study_instance_uid=STUDY, series_instance_uid=SERIES, sop_instance_uid=f"1.{i}").path
        for i in range(3)
    ]
    spool.quarantine(b"bad", "bad")
    assert list(spool.instances()) == sorted(paths)


def test_opening_deletes_crash_leftovers_and_recounts(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10_000)
    kept = spool.store(b"k" * 123, study_instance_uid=STUDY, series_instance_uid=SERIES, sop_instance_uid="1.9").path
    leftover = kept.parent / ".1.10.77-0.tmp"
    leftover.write_bytes(b"partial" * 10)
    (spool.quarantine_dir / ".x.dcm.1-2.tmp").write_bytes(b"q")

    reopened = Spool(tmp_path, 10_000)

    assert not leftover.exists()
    assert [p.name for p in _files(spool.quarantine_dir)] == []
    assert kept.read_bytes() == b"k" * 123
    assert reopened.used_bytes() == 123


def test_concurrent_writers_keep_an_exact_count(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10_000_000)

    def writer(k: int) -> None:
        for i in range(25):
            # Every thread also rewrites a shared instance: duplicates must not double count.
            spool.store(b"s" * (100 + k), study_instance_uid=STUDY, series_instance_uid=SERIES, sop_instance_uid="1.0")
            spool.store(b"w" * 1000, study_instance_uid=STUDY, series_instance_uid=f"1.{k}", sop_instance_uid=f"1.{i}")

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert spool.used_bytes() == _disk_bytes(tmp_path)
    assert len(list(spool.instances())) == 4 * 25 + 1


_WRITER = """
import sys
from runtime.spool import Spool
spool = Spool(sys.argv[1], 10**10)
i = 0
while True:
    spool.store(bytes([i % 251]) * 200_000, study_instance_uid="1.2", series_instance_uid="1.3",
                sop_instance_uid=f"1.4.{i}")
    print(i, flush=True)
    i += 1
"""


def test_sigkill_mid_stream_leaves_only_whole_instances(tmp_path: Path) -> None:
    """Every instance acknowledged (printed after store returned) is whole; nothing partial survives a reopen."""
    root = tmp_path / "spool"
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(root)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert child.stdout is not None
    acknowledged = []
    deadline = time.monotonic() + 20
    while len(acknowledged) < 15 and time.monotonic() < deadline:
        acknowledged.append(int(child.stdout.readline()))
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    child.stdout.close()

    spool = Spool(root, 10**10)

    files = list(spool.instances())
    assert len(acknowledged) == 15
    assert not [p for p in root.rglob(".*") if p.is_file()]
    for i in acknowledged:
        assert (root / "1.2" / "1.3" / f"1.4.{i}.dcm").read_bytes() == bytes([i % 251]) * 200_000
    for path in files:  # the one in flight at the kill is absent or whole, never partial
        i = int(path.stem.rsplit(".", 1)[1])
        assert path.read_bytes() == bytes([i % 251]) * 200_000
    assert spool.used_bytes() == 200_000 * len(files)
