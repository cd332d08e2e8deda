"""The durable spool: every received DICOM instance is on disk here before it is acknowledged.

Layout under ``root``::

    <StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm   spooled instances
    quarantine/<stamp>-<name>                                      refused input
    quarantine/<stamp>-<name>.reason.txt                           why it was refused
    .../.<name>.<token>.tmp                                        in-flight writes

A write goes to a temp file in the target folder, is ``fsync``'d, renamed over
the final name (atomic on POSIX) and the folder is ``fsync``'d, so after a power
cut an instance is either wholly there or not there at all. Temp files left by
a crash are deleted when the spool is opened. UIDs become path segments only
after validation (digits and dots, at most 64 characters), so a hostile UID can
never name a path outside the spool.

The spool's byte count (instances and quarantine together) is kept
incrementally and recomputed when the spool is opened; ``quota_bytes`` bounds
it so the SCP can answer "out of resources" instead of filling the disk.
"""

from __future__ import annotations

import enum
import errno
import itertools
import logging
import os
import re
import secrets
import shutil
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sdk.durable_files import fsync_dir
from sdk.errors import DicomInputError, MedgeError

__all__ = [
    "IngestSource",
    "Spool",
    "SpoolError",
    "SpoolFullError",
    "SpoolWrite",
    "StoredInstance",
    "is_valid_uid",
]

logger = logging.getLogger(__name__)

QUARANTINE_DIR = "quarantine"
_TMP_SUFFIX = ".tmp"
_REASON_SUFFIX = ".reason.txt"
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


class SpoolError(MedgeError):
    """The spool could not write, move or delete a file (disk error, permissions, path outside the spool)."""


class SpoolFullError(SpoolError):
    """The spool's quota has no room for this instance: refuse it rather than fill the disk."""


class IngestSource(enum.StrEnum):
    """Which ingest path received an instance."""

    SCP = "scp"
    FOLDER = "folder"
    API = "api"  # Appliance.submit: a device maker's own receiver


@dataclass(frozen=True, slots=True)
class SpoolWrite:
    """The outcome of :meth:`Spool.store`.

    Attributes:
        path: the final, fsync'd file.
        size_bytes: bytes written.
        duplicate: an instance with the same UIDs was already spooled and has
            been replaced atomically (a resend).
    """

    path: Path
    size_bytes: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class StoredInstance:
    """One instance durably in the spool, as handed to the work queue (``on_stored``).

    Attributes:
        path: the spooled DICOM Part 10 file.
        sop_class_uid: (0008,0016).
        sop_instance_uid: (0008,0018); the identity of the instance.
        study_instance_uid: (0020,000D).
        series_instance_uid: (0020,000E).
        transfer_syntax_uid: how the dataset in the file is encoded.
        size_bytes: size of the spooled file.
        received_at: when it was stored (UTC).
        source: the SCP, the watched folder or ``Appliance.submit``.
        calling_ae: the sender's AE title (SCP only).
        association_id: the association it came in on (SCP only); groups
            instances for the "association released" signal.
        duplicate: it replaced an already spooled copy of the same instance.
    """

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    size_bytes: int
    received_at: datetime
    source: IngestSource
    calling_ae: str | None = None
    association_id: str | None = None
    duplicate: bool = False


def is_valid_uid(value: object) -> bool:
    """True for a DICOM UID that is safe as a path segment: digits and dots, at most 64 characters."""
    return isinstance(value, str) and 0 < len(value) <= 64 and _UID.fullmatch(value) is not None


def _write_all(fd: int, parts: Sequence[bytes | bytearray | memoryview]) -> None:
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


def _safe_name(name: str) -> str:
    cleaned = _UNSAFE_NAME_CHARS.sub("_", name).lstrip(".")[:80]
    return cleaned or "unnamed"


class Spool:
    """Durable, quota-bounded storage for received instances; thread-safe.

    Args:
        root: the spool folder (created if missing).
        quota_bytes: the most bytes the spool may hold, quarantine included.

    Raises:
        SpoolError: the folder cannot be created or scanned.
    """

    def __init__(self, root: str | Path, quota_bytes: int) -> None:
        if quota_bytes <= 0:
            raise SpoolError(f"quota must be positive, got {quota_bytes}", path=root)
        self._root = Path(root).absolute()
        self._quota = quota_bytes
        self._lock = threading.Lock()
        self._tokens = itertools.count()
        try:
            self._root.mkdir(parents=True, exist_ok=True)
            (self._root / QUARANTINE_DIR).mkdir(exist_ok=True)
            self._used = self._startup_scan()
        except OSError as exc:
            raise SpoolError(f"cannot open the spool: {exc.strerror or exc}", path=self._root) from exc

    @property
    def root(self) -> Path:
        return self._root

    @property
    def quota_bytes(self) -> int:
        return self._quota

    @property
    def quarantine_dir(self) -> Path:
        return self._root / QUARANTINE_DIR

    def used_bytes(self) -> int:
        """Bytes held by the spool now (instances, quarantine and in-flight writes)."""
        with self._lock:
            return self._used

    def has_room(self, n_bytes: int) -> bool:
        """Whether ``n_bytes`` more fit under the quota (a hint: :meth:`store` re-checks atomically)."""
        with self._lock:
            return self._used + n_bytes <= self._quota

    def path_for(self, study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str) -> Path:
        """Where an instance lives in the spool.

        Raises:
            DicomInputError: a UID is missing or not a valid UID (and so unsafe as a path).
        """
        for field, uid in (
            ("StudyInstanceUID", study_instance_uid),
            ("SeriesInstanceUID", series_instance_uid),
            ("SOPInstanceUID", sop_instance_uid),
        ):
            if not is_valid_uid(uid):
                raise DicomInputError(f"invalid UID {str(uid)[:80]!r} (digits and dots, at most 64)", field=field)
        return self._root / study_instance_uid / series_instance_uid / f"{sop_instance_uid}.dcm"

    def store(
        self,
        data: bytes | Sequence[bytes],
        *,
        study_instance_uid: str,
        series_instance_uid: str,
        sop_instance_uid: str,
    ) -> SpoolWrite:
        """Write a DICOM Part 10 file durably; idempotent per instance (a resend replaces it atomically).

        Args:
            data: the whole file, or its parts in order (e.g. preamble + file meta, then the
                dataset as received) so a large dataset is not copied to join them.
            study_instance_uid: the study folder.
            series_instance_uid: the series folder.
            sop_instance_uid: the file name.

        Returns:
            the final path, size and whether it replaced an earlier copy; the file and its
            directory entry are fsync'd when this returns.

        Raises:
            DicomInputError: a UID is invalid; nothing is written.
            SpoolFullError: the quota has no room; nothing is written.
            SpoolError: the write failed; nothing partial is left behind.
        """
        parts: Sequence[bytes | bytearray | memoryview] = (
            (data,) if isinstance(data, bytes | bytearray | memoryview) else data
        )
        size = sum(len(p) for p in parts)
        final = self.path_for(study_instance_uid, series_instance_uid, sop_instance_uid)
        series_dir = final.parent
        tmp = series_dir / f".{sop_instance_uid}.{self._token()}{_TMP_SUFFIX}"
        with self._lock:
            if self._used + size > self._quota:
                raise SpoolFullError(
                    f"spool quota reached: {self._used} + {size} bytes > {self._quota}", path=self._root
                )
            self._used += size  # reserved; released below if the write fails
            try:
                # Under the lock so remove() cannot delete the folder between mkdir and open.
                new_dirs = self._make_dirs(series_dir)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
            except OSError as exc:
                self._used -= size
                raise SpoolError(f"cannot create a spool file: {exc.strerror or exc}", path=tmp) from exc
        try:
            try:
                for parent in new_dirs:
                    fsync_dir(parent)
                _write_all(fd, parts)
                os.fsync(fd)
            finally:
                os.close(fd)
            with self._lock:
                old_size = final.stat().st_size if final.exists() else None
                os.replace(tmp, final)
                if old_size is not None:
                    self._used -= old_size
            fsync_dir(series_dir)
        except OSError as exc:
            with self._lock:
                self._used -= size
            tmp.unlink(missing_ok=True)
            raise SpoolError(f"cannot write a spool file: {exc.strerror or exc}", path=final) from exc
        if old_size is not None:
            logger.info("duplicate instance %s replaced in the spool", sop_instance_uid)
        return SpoolWrite(path=final, size_bytes=size, duplicate=old_size is not None)

    def quarantine(self, source: Path | bytes, reason: str, *, name: str | None = None) -> Path:
        """Keep refused input for inspection, with ``<name>.reason.txt`` saying why.

        A file is moved (it leaves its original place); bytes are written. Both are
        fsync'd. If the quota has no room the payload is dropped (a file source is
        deleted) and only the reason file is written, saying so. A spooled instance
        set aside later (it failed to decode) moves within the spool: it is already
        counted, so it is always kept, and its emptied series folder goes.

        Args:
            source: a file to move in (from the inbox, or a spooled instance), or the received bytes.
            reason: why it was refused, in words an operator can act on.
            name: a hint for the file name (sanitised); defaults to the file's name.

        Returns:
            the quarantined payload, or the reason file when the payload was dropped.

        Raises:
            SpoolError: the quarantine could not be written.
        """
        hint = name or (source.name if isinstance(source, Path) else "instance.dcm")
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        qname = f"{stamp}-{secrets.token_hex(3)}-{_safe_name(hint)}"
        target = self.quarantine_dir / qname
        reason_path = self.quarantine_dir / f"{qname}{_REASON_SUFFIX}"
        kept = False
        try:
            size = source.stat().st_size if isinstance(source, Path) else len(source)
            spooled = isinstance(source, Path) and source.absolute().is_relative_to(self._root)
            with self._lock:
                room = spooled or self._used + size <= self._quota
                if room and not spooled:
                    self._used += size
            if room:
                try:
                    if isinstance(source, Path):
                        self._move_in(source, target)
                    else:
                        self._write_atomic(target, source)
                    kept = True
                except OSError:
                    if not spooled:
                        with self._lock:
                            self._used -= size
                    raise
                if spooled and isinstance(source, Path):
                    with self._lock:
                        self._prune_empty_dirs(source.absolute().parent)
            elif isinstance(source, Path):
                source.unlink(missing_ok=True)
            text = f"reason: {reason}\nquarantined_at: {datetime.now(UTC).isoformat()}\n"
            if isinstance(source, Path):
                text += f"source: {source}\n"
            if not kept:
                text += f"payload: dropped ({size} bytes; spool quota reached)\n"
            blob = text.encode("utf-8", "replace")
            with self._lock:
                self._used += len(blob)
            self._write_atomic(reason_path, blob)
            fsync_dir(self.quarantine_dir)
        except OSError as exc:
            raise SpoolError(f"cannot quarantine ({reason}): {exc.strerror or exc}", path=target) from exc
        logger.warning("quarantined %s: %s", target.name, reason)
        return target if kept else reason_path

    def remove(self, path: str | Path) -> None:
        """Delete a spooled instance once it is done; a missing file is fine (idempotent after a crash).

        Raises:
            SpoolError: the path is not inside the spool, or it cannot be deleted.
        """
        target = Path(path).absolute()
        if not target.is_relative_to(self._root) or target == self._root:
            raise SpoolError("not a file inside the spool", path=target)
        with self._lock:
            try:
                size = target.stat().st_size
                target.unlink()
            except FileNotFoundError:
                return
            except OSError as exc:
                raise SpoolError(f"cannot remove: {exc.strerror or exc}", path=target) from exc
            self._used -= size
            parent = self._prune_empty_dirs(target.parent)
        try:
            fsync_dir(parent)
        except OSError as exc:
            logger.warning("cannot fsync %s after a removal: %s", parent, exc)

    def instances(self) -> Iterator[Path]:
        """Spooled instances on disk (not quarantine), for reconciling the work queue after a restart."""
        for study in sorted(self._root.iterdir()):
            if not study.is_dir() or not is_valid_uid(study.name):
                continue
            for series in sorted(study.iterdir()):
                if series.is_dir():
                    yield from sorted(p for p in series.glob("*.dcm") if not p.name.startswith("."))

    # -- internals ---------------------------------------------------------------------------------------------

    def _token(self) -> str:
        """A name unique among concurrent writers (O_EXCL catches the rest); cheaper than secrets."""
        return f"{os.getpid()}-{next(self._tokens)}"

    def _prune_empty_dirs(self, folder: Path) -> Path:
        """Remove emptied series and study folders (call with the lock held); return the first one kept."""
        while folder != self._root and folder != self.quarantine_dir and folder.is_relative_to(self._root):
            try:
                folder.rmdir()
            except OSError:
                break
            folder = folder.parent
        return folder

    def _make_dirs(self, series_dir: Path) -> list[Path]:
        """Create the study/series folders; return the parents whose entries must be fsync'd."""
        if series_dir.is_dir():
            return []
        study_dir = series_dir.parent
        parents = []
        if not study_dir.is_dir():
            study_dir.mkdir(exist_ok=True)
            parents.append(self._root)
        series_dir.mkdir(exist_ok=True)
        parents.append(study_dir)
        return parents

    def _write_atomic(self, target: Path, data: bytes) -> None:
        tmp = target.parent / f".{target.name}.{self._token()}{_TMP_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
            try:
                _write_all(fd, (data,))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise

    def _move_in(self, source: Path, target: Path) -> None:
        try:
            os.rename(source, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # Another file system (a watch folder on its own mount): copy, fsync, then delete.
            tmp = target.parent / f".{target.name}.{self._token()}{_TMP_SUFFIX}"
            try:
                shutil.copyfile(source, tmp)
                fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, target)
            except OSError:
                tmp.unlink(missing_ok=True)
                raise
            source.unlink()
            return
        fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _startup_scan(self) -> int:
        """Delete temp files a crash left behind and count the bytes that remain."""
        used = 0
        removed = 0
        for dirpath, _dirnames, filenames in os.walk(self._root):
            for filename in filenames:
                path = Path(dirpath) / filename
                if filename.startswith(".") and filename.endswith(_TMP_SUFFIX):
                    path.unlink(missing_ok=True)
                    removed += 1
                    continue
                try:
                    used += path.stat().st_size
                except FileNotFoundError:
                    continue
        if removed:
            logger.warning("spool %s: deleted %d partial write(s) left by an interrupted run", self._root, removed)
        return used
