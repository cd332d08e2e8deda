"""The watched folder: stable files go through the spool, half-written ones wait, bad ones are quarantined."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from runtime.ingest import FolderWatcher, IngestEvent, IngestEventKind
from runtime.spool import IngestSource, Spool, StoredInstance

STABLE_S = 0.2


def bundled(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    assert path is not None, name
    return Path(path)


def age(path: Path, seconds: float = 5.0) -> None:
    """Backdate a file's mtime so it counts as settled without the test sleeping."""
    past = time.time() - seconds
    os.utime(path, (past, past))


class Inbox:
    def __init__(self, tmp_path: Path, quota: int = 10**8) -> None:
        self.dir = tmp_path / "inbox"
        self.spool = Spool(tmp_path / "spool", quota)
        self.stored: list[StoredInstance] = []
        self.events: list[IngestEvent] = []
        self.watcher = FolderWatcher(
            self.dir, self.spool, self.stored.append, stable_after_s=STABLE_S, on_event=self.events.append
        )

    def drop(self, source: Path, relative: str, *, settled: bool = True) -> Path:
        target = self.dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        if settled:
            age(target)
        return target

    def poll_twice(self) -> int:
        """A settled file is taken on the second poll that sees it unchanged."""
        return self.watcher.poll() + self.watcher.poll()

    def quarantined(self) -> list[Path]:
        return sorted(p for p in self.spool.quarantine_dir.iterdir() if not p.name.endswith(".reason.txt"))


@pytest.fixture
def inbox(tmp_path: Path) -> Inbox:
    return Inbox(tmp_path)


def test_files_copied_in_are_stored_and_removed_from_the_inbox(inbox: Inbox) -> None:
    top = inbox.drop(bundled("CT_small.dcm"), "ct.dcm")
    nested = inbox.drop(bundled("MR_small_RLE.dcm"), "study/series/IM0001")  # no extension, in a subfolder

    assert inbox.watcher.poll() == 0  # first sighting: not yet known to be stable
    assert inbox.watcher.poll() == 2

    assert not top.exists() and not nested.exists()
    assert len(inbox.stored) == 2 == len(list(inbox.spool.instances()))
    for instance, source in zip(inbox.stored, [bundled("CT_small.dcm"), bundled("MR_small_RLE.dcm")], strict=True):
        assert instance.path.read_bytes() == source.read_bytes()
        assert instance.source is IngestSource.FOLDER
        assert (instance.calling_ae, instance.association_id) == (None, None)
        meta = dcmread(source, stop_before_pixels=True)
        assert (instance.sop_instance_uid, instance.transfer_syntax_uid) == (
            meta.SOPInstanceUID,
            meta.file_meta.TransferSyntaxUID,
        )
    assert inbox.watcher.poll() == 0 and len(inbox.stored) == 2  # each once


def test_a_half_written_file_waits_until_it_is_stable(inbox: Inbox) -> None:
    data = bundled("CT_small.dcm").read_bytes()
    path = inbox.dir / "incoming.dcm"
    inbox.dir.mkdir(exist_ok=True)
    path.write_bytes(data[:10_000])
    age(path)
    inbox.watcher.poll()

    with path.open("ab") as f:  # the copier writes more: size and mtime change
        f.write(data[10_000:20_000])
    assert inbox.watcher.poll() == 0
    with path.open("ab") as f:
        f.write(data[20_000:])
    assert inbox.watcher.poll() == 0  # unchanged size is not enough: modified too recently
    assert inbox.watcher.poll() == 0
    assert path.exists() and inbox.stored == [] and inbox.quarantined() == []

    time.sleep(STABLE_S + 0.05)
    assert inbox.watcher.poll() == 1
    assert inbox.stored[0].path.read_bytes() == data


def test_a_text_file_is_quarantined_with_a_reason(inbox: Inbox) -> None:
    notes = inbox.dir / "notes.txt"
    inbox.dir.mkdir(exist_ok=True)
    notes.write_text("scanner export log\n" * 20)
    age(notes)

    inbox.poll_twice()

    assert not notes.exists() and inbox.stored == []
    (kept,) = inbox.quarantined()
    assert kept.read_text().startswith("scanner export log")
    assert "not a DICOM Part 10 file" in Path(f"{kept}.reason.txt").read_text()
    (event,) = inbox.events
    assert event.kind is IngestEventKind.QUARANTINED and event.path == kept and event.source is IngestSource.FOLDER


def test_a_truncated_file_left_in_the_inbox_is_quarantined(inbox: Inbox) -> None:
    inbox.drop(bundled("MR_truncated.dcm"), "cut.dcm")
    inbox.poll_twice()

    assert inbox.stored == []
    (kept,) = inbox.quarantined()
    assert "truncated: element (7FE0,0010)" in Path(f"{kept}.reason.txt").read_text()


def test_a_dicomdir_tree_is_walked_and_the_index_not_ingested(inbox: Inbox) -> None:
    tree = bundled("DICOMDIR").parent
    files = []
    for sub in ("77654033", "98892001", "98892003"):
        for source in sorted((tree / sub).rglob("*")):
            if source.is_file():
                files.append(inbox.drop(source, str(source.relative_to(tree))))
    inbox.drop(tree / "DICOMDIR", "DICOMDIR")

    inbox.poll_twice()

    assert len(inbox.stored) == len(files) == 31
    assert inbox.quarantined() == [] and inbox.events == []
    assert not (inbox.dir / "DICOMDIR").exists()
    assert not [p for p in inbox.dir.rglob("*") if p.is_file()]


def test_hidden_files_and_symlinks_are_left_alone(inbox: Inbox, tmp_path: Path) -> None:
    hidden = inbox.drop(bundled("CT_small.dcm"), ".ct.dcm.partial")
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the spool")
    link = inbox.dir / "link.dcm"
    link.symlink_to(secret)

    inbox.poll_twice()

    assert hidden.exists() and link.is_symlink() and secret.exists()
    assert inbox.stored == [] and inbox.quarantined() == []


def test_a_full_spool_leaves_the_file_waiting(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path, quota=20_000)
    path = inbox.drop(bundled("CT_small.dcm"), "ct.dcm")  # 39 kB

    inbox.poll_twice()
    inbox.watcher.poll()

    assert path.exists() and inbox.stored == []
    assert [e.kind for e in inbox.events] == [IngestEventKind.OUT_OF_RESOURCES]  # once, not every poll


def test_a_failed_hand_off_is_retried_on_the_next_poll(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", 10**8)
    calls: list[StoredInstance] = []

    def flaky(instance: StoredInstance) -> None:
        calls.append(instance)
        if len(calls) == 1:
            raise RuntimeError("queue busy")

    watcher = FolderWatcher(tmp_path / "inbox", spool, flaky, stable_after_s=STABLE_S)
    path = tmp_path / "inbox" / "mr.dcm"
    shutil.copyfile(bundled("MR_small.dcm"), path)
    age(path)

    assert watcher.poll() + watcher.poll() == 0
    assert path.exists()
    assert watcher.poll() == 1
    assert not path.exists()
    assert [c.duplicate for c in calls] == [False, True]


def test_the_thread_picks_up_files_on_its_own(inbox: Inbox) -> None:
    inbox.watcher = FolderWatcher(inbox.dir, inbox.spool, inbox.stored.append, 0.05, stable_after_s=STABLE_S)
    with inbox.watcher:
        inbox.drop(bundled("MR_small.dcm"), "a/b/mr.dcm", settled=False)
        deadline = time.monotonic() + 5
        while not inbox.stored and time.monotonic() < deadline:
            time.sleep(0.02)
    assert len(inbox.stored) == 1
    assert not (inbox.dir / "a" / "b" / "mr.dcm").exists()
