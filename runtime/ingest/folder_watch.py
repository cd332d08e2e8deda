"""The watched folder: a second ingest path for appliances that receive files instead of C-STOREs.

The folder is an inbox. It is polled (no inotify: it works on network and
container mounts alike); a file is taken only once it is stable, that is its
size and modification time did not change between two polls and it was last
modified more than ``stable_after_s`` ago, so a half-copied file is left alone.
A taken file is checked (complete, identifiable), stored through the spool
(fsync'd, same as the SCP) and then deleted from the inbox; a file that cannot
be used is moved to quarantine with a reason. Subfolders are walked, so the
files a DICOMDIR references are picked up like any others; the DICOMDIR index
itself is not ingested (it is deleted once stable, so the inbox drains).
Hidden files (``.name``, the usual partial-copy names of rsync and friends)
and symbolic links are never touched.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runtime.ingest.events import IngestEvent, IngestEventHandler, IngestEventKind, emit
from runtime.ingest.files import store_part10
from runtime.spool import IngestSource, Spool, SpoolError, SpoolFullError, StoredInstance
from sdk.errors import DicomInputError

__all__ = ["FolderWatcher"]

logger = logging.getLogger(__name__)

_DEFAULT_MAX_FILE_BYTES = 1024**3
_EMPTY_DIR_GRACE_S = 60.0


@dataclass(frozen=True, slots=True)
class _Seen:
    size: int
    mtime_ns: int


class FolderWatcher:
    """Polls ``watch_dir`` and moves stable DICOM files into the spool.

    Args:
        watch_dir: the inbox (created if missing).
        spool: where instances go.
        on_stored: called once per stored instance, from the watcher's thread; if it
            raises, the file stays in the inbox and is tried again on the next poll.
        poll_interval: seconds between polls.
        stable_after_s: a file must be unmodified this long (and unchanged across two polls).
        max_file_bytes: larger files are quarantined unread.
        on_event: notified of quarantines, a full spool and failures (errors are logged and contained).

    Events emitted: :class:`~runtime.ingest.events.IngestEventKind` ``QUARANTINED``,
    ``OUT_OF_RESOURCES`` (once per file while the spool is full; the file waits),
    ``STORE_FAILED``, ``HOOK_FAILED``.
    """

    def __init__(
        self,
        watch_dir: str | Path,
        spool: Spool,
        on_stored: Callable[[StoredInstance], None],
        poll_interval: float = 0.5,
        *,
        stable_after_s: float = 1.0,
        max_file_bytes: int = _DEFAULT_MAX_FILE_BYTES,
        on_event: IngestEventHandler | None = None,
    ) -> None:
        self._dir = Path(watch_dir).absolute()
        self._spool = spool
        self._on_stored = on_stored
        self._interval = poll_interval
        self._stable_after_ns = int(stable_after_s * 1e9)
        self._max_bytes = max_file_bytes
        self._on_event = on_event
        self._seen: dict[Path, _Seen] = {}
        self._waiting_for_room: set[Path] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._dir.mkdir(parents=True, exist_ok=True)

    @property
    def watch_dir(self) -> Path:
        return self._dir

    def start(self) -> None:
        """Start polling in a background thread; returns at once."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="medge-folder-watch", daemon=True)
        self._thread.start()
        logger.info("watching %s every %.1f s", self._dir, self._interval)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop polling; a file being stored is finished first."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout)
        if thread.is_alive():
            logger.warning("folder watcher did not stop within %.1f s", timeout)

    def __enter__(self) -> FolderWatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def poll(self) -> int:
        """One pass over the inbox; returns how many instances were stored.

        The background thread calls this; embedders and tests may call it directly
        (not concurrently with a running thread).
        """
        stored = 0
        now_ns = time.time_ns()
        present: set[Path] = set()
        for dirpath, dirnames, filenames in os.walk(self._dir):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in sorted(filenames):
                path = Path(dirpath) / filename
                if filename.startswith(".") or path.is_symlink():
                    continue
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                present.add(path)
                current = _Seen(st.st_size, st.st_mtime_ns)
                previous = self._seen.get(path)
                self._seen[path] = current
                if previous != current or now_ns - current.mtime_ns < self._stable_after_ns:
                    continue  # new, still growing, or touched too recently
                if self._take(path, current.size):
                    stored += 1
        self._seen = {p: s for p, s in self._seen.items() if p in present}
        self._waiting_for_room &= set(self._seen)
        self._remove_empty_dirs(now_ns)
        return stored

    # -- internals ---------------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:  # a poll must never kill the watcher; the next one retries
                logger.exception("folder watch poll of %s failed", self._dir)
            self._stop.wait(self._interval)

    def _take(self, path: Path, size: int) -> bool:
        """Store one stable file; True when it was stored."""
        if path.name.upper() == "DICOMDIR":
            logger.info("DICOMDIR %s is an index, not an instance: removed from the inbox", path)
            path.unlink(missing_ok=True)
            self._seen.pop(path, None)
            return False
        if size > self._max_bytes:
            self._quarantine(path, f"file of {size} bytes exceeds the limit of {self._max_bytes}")
            return False
        if not self._spool.has_room(size):
            if path not in self._waiting_for_room:
                self._waiting_for_room.add(path)
                self._event(IngestEventKind.OUT_OF_RESOURCES, f"{path}: spool quota reached; the file waits", path)
            return False
        try:
            data = path.read_bytes()
        except OSError as exc:
            logger.warning("cannot read %s (will retry): %s", path, exc)
            return False
        try:
            instance = store_part10(self._spool, data, source=IngestSource.FOLDER, max_bytes=self._max_bytes)
        except DicomInputError as exc:
            self._quarantine(path, exc.message)
            return False
        except SpoolFullError:
            return False  # raced with another writer; the next poll waits for room
        except SpoolError as exc:
            self._event(IngestEventKind.STORE_FAILED, f"{path}: spool write failed: {exc}", path)
            return False
        try:
            self._on_stored(instance)
        except Exception as exc:
            logger.exception("on_stored failed for %s", instance.path)
            self._event(IngestEventKind.HOOK_FAILED, f"{path}: hand-off failed (will retry): {exc}", path)
            return False
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            # A read-only inbox: the instance is safe in the spool; a resend of it is a harmless duplicate.
            logger.error("stored %s but cannot delete it from the inbox: %s", path, exc)
        self._seen.pop(path, None)
        self._waiting_for_room.discard(path)
        return True

    def _quarantine(self, path: Path, reason: str) -> None:
        try:
            target = self._spool.quarantine(path, reason, name=path.name)
        except SpoolError as exc:
            logger.error("cannot quarantine %s: %s", path, exc)
            return
        self._seen.pop(path, None)
        self._event(IngestEventKind.QUARANTINED, f"{path}: {reason}", target)

    def _event(self, kind: IngestEventKind, message: str, path: Path | None) -> None:
        emit(self._on_event, IngestEvent(kind=kind, message=message, source=IngestSource.FOLDER, path=path))

    def _remove_empty_dirs(self, now_ns: int) -> None:
        """Drain emptied subfolders, but only old ones: a copier may have just created a new one."""
        for dirpath, _dirnames, _filenames in os.walk(self._dir, topdown=False):
            folder = Path(dirpath)
            if folder == self._dir or any(part.startswith(".") for part in folder.relative_to(self._dir).parts):
                continue
            try:
                if now_ns - folder.stat().st_mtime_ns > _EMPTY_DIR_GRACE_S * 1e9:
                    folder.rmdir()
            except OSError:
                continue  # not empty, or gone
