"""The durable work queue: every received instance, its progress, its findings and its series, in one SQLite file.

An instance moves ``received → decoded → analysed → reported``; a worker
*claims* it first (``decoding`` / ``analysing``, with a lease), so that a
worker that dies leaves a trace another worker (or the next start) can pick
up. Findings go into the outbox in the same transaction that marks their
instance analysed, keyed by their stable id (:func:`sdk.messages.finding_id`),
so ``kill -9`` at any moment neither loses an instance nor duplicates a
finding: after a restart :meth:`WorkQueue.resume` puts claimed items back, the
worker redoes them, and the re-made findings are ignored on their id.

Durability choices (SQLite, WAL journal):

* ``synchronous=FULL`` for the commits other parties rely on: an instance
  recorded before the C-STORE success goes back (the scanner forgets it
  then), findings before they can be sent (their ``seq`` must never be
  re-used after a power cut), quarantine decisions. The fsync is what a
  durable commit costs (0.2-2 ms on an edge disk, more under load), and
  the connection's lock is held through it, so the appliance records the
  findings of all instances that finished meanwhile in one commit
  (:meth:`WorkQueue.record_findings_batch`).
* ``synchronous=NORMAL`` for claims, leases, ``sent``/``acked`` marks and
  other bookkeeping: losing the last of those to a power cut only repeats
  work whose result is de-duplicated. In WAL mode a later FULL commit also
  makes every earlier commit durable, and atomicity never depends on the
  setting (``kill -9`` is always safe).
* One connection guarded by a lock, shared by the SCP thread, the decode
  worker and the inference worker: every statement is short, SQLite has a
  single writer anyway, and one connection means no ``SQLITE_BUSY`` between
  our own threads. ``busy_timeout`` covers other processes (a CLI reading the
  file).

Times are wall-clock seconds since the epoch (leases must survive a restart;
a monotonic clock does not), taken from an injectable ``clock``.

Results for the PACS: a finding whose package sends DICOM SRs to the
hospital's PACS has its SR (Part 10 bytes) in ``pacs_outbox``, written in the
same durable transaction as the finding and only when the finding is new, so
``kill -9`` never leaves a finding without its SR nor makes an SR twice. The
PACS sender (:mod:`runtime.results`) takes due rows in order and marks them
sent or schedules their retry.

Idempotency: :meth:`WorkQueue.add_received` is keyed on the SOP Instance UID.
A resend of an instance the queue already has is ignored whatever its
progress (its spool file is then the caller's to delete), so a re-sent
instance after it was reported is not analysed again; only an instance that
was quarantined or failed is replaced by its resend, since a scanner operator
re-sends after fixing the cause.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from sdk.errors import MedgeError
from sdk.messages import CommandResult, Event, Finding

__all__ = [
    "DICOMDIR_SOP_CLASS",
    "AddResult",
    "InstanceRecord",
    "InstanceState",
    "MessageEntry",
    "OutboxDepth",
    "OutboxEntry",
    "OutboxState",
    "PacsEntry",
    "PacsResult",
    "PacsState",
    "ResumeReport",
    "SeriesClaim",
    "SeriesState",
    "StoredInstanceLike",
    "WorkQueue",
    "WorkQueueError",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
"""Media Storage Directory Storage: a DICOMDIR, an index of files, not an image."""


class WorkQueueError(MedgeError):
    """The queue file cannot be used, or a caller asked for an impossible transition."""


class InstanceState(StrEnum):
    """Where an instance is; ``decoding`` and ``analysing`` are claimed (leased) states."""

    RECEIVED = "received"
    DECODING = "decoding"
    DECODED = "decoded"
    ANALYSING = "analysing"
    ANALYSED = "analysed"
    REPORTED = "reported"
    QUARANTINED = "quarantined"
    FAILED = "failed"


class SeriesState(StrEnum):
    """Where a series is: ``open`` until complete, then claimed and analysed as a unit."""

    OPEN = "open"
    COMPLETE = "complete"
    ANALYSING = "analysing"
    ANALYSED = "analysed"


class OutboxState(StrEnum):
    """A finding is ``pending`` until published, ``sent`` until the dashboard acknowledges it."""

    PENDING = "pending"
    SENT = "sent"
    ACKED = "acked"


class PacsState(StrEnum):
    """An SR is ``pending`` until the PACS accepted it (success or warning status), then ``sent``."""

    PENDING = "pending"
    SENT = "sent"


class AddResult(StrEnum):
    """What :meth:`WorkQueue.add_received` did with an instance."""

    ADDED = "added"
    DUPLICATE = "duplicate"  # already known: ignored, whatever its progress
    REPLACED = "replaced"  # was quarantined or failed: the resend replaces it


class StoredInstanceLike(Protocol):
    """What the ingest hands over for each spooled instance (``runtime.spool.StoredInstance``)."""

    @property
    def path(self) -> Path: ...
    @property
    def sop_class_uid(self) -> str: ...
    @property
    def sop_instance_uid(self) -> str: ...
    @property
    def study_instance_uid(self) -> str: ...
    @property
    def series_instance_uid(self) -> str: ...
    @property
    def transfer_syntax_uid(self) -> str: ...
    @property
    def size_bytes(self) -> int: ...
    @property
    def received_at(self) -> datetime: ...
    @property
    def calling_ae(self) -> str | None: ...
    @property
    def association_id(self) -> str | None: ...


# Claimable stable state -> its claimed state, and back.
_CLAIMED = {InstanceState.RECEIVED: InstanceState.DECODING, InstanceState.DECODED: InstanceState.ANALYSING}
_STABLE = {claimed: stable for stable, claimed in _CLAIMED.items()}
# Target state -> states it may be reached from by advance().
_SOURCES: dict[InstanceState, frozenset[InstanceState]] = {
    InstanceState.RECEIVED: frozenset({InstanceState.DECODING}),
    InstanceState.DECODED: frozenset({InstanceState.RECEIVED, InstanceState.DECODING, InstanceState.ANALYSING}),
    InstanceState.ANALYSED: frozenset({InstanceState.DECODED, InstanceState.ANALYSING}),
    InstanceState.REPORTED: frozenset({InstanceState.ANALYSED}),
}
_ORDER = [
    InstanceState.RECEIVED,
    InstanceState.DECODING,
    InstanceState.DECODED,
    InstanceState.ANALYSING,
    InstanceState.ANALYSED,
    InstanceState.REPORTED,
]
_SET_ASIDE = frozenset({InstanceState.QUARANTINED, InstanceState.FAILED})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    sop_class_uid TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    spool_path TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    size INTEGER NOT NULL,
    calling_ae TEXT NOT NULL,
    association_id TEXT,
    state TEXT NOT NULL,
    reason TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    lease_until REAL,
    received_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    info TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS instances_by_state ON instances (state, received_at);
CREATE INDEX IF NOT EXISTS instances_by_series ON instances (series_instance_uid, state);
CREATE TABLE IF NOT EXISTS outbox (
    finding_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    sop_instance_uid TEXT,
    series_instance_uid TEXT,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    sent_at REAL,
    acked_at REAL
);
CREATE INDEX IF NOT EXISTS outbox_by_state ON outbox (state, seq);
CREATE INDEX IF NOT EXISTS outbox_by_instance ON outbox (sop_instance_uid);
CREATE TABLE IF NOT EXISTS series (
    series_instance_uid TEXT PRIMARY KEY,
    study_instance_uid TEXT NOT NULL,
    state TEXT NOT NULL,
    modality TEXT NOT NULL DEFAULT '',
    body_part TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT '',
    attributes TEXT NOT NULL DEFAULT '{}',
    instance_count INTEGER NOT NULL DEFAULT 0,
    first_received REAL NOT NULL,
    last_received REAL NOT NULL,
    completed_at REAL,
    generation INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    lease_until REAL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS series_by_state ON series (state, last_received);
CREATE TABLE IF NOT EXISTS associations (
    association_id TEXT PRIMARY KEY,
    calling_ae TEXT NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    released_at REAL
);
CREATE TABLE IF NOT EXISTS series_associations (
    series_instance_uid TEXT NOT NULL,
    association_id TEXT NOT NULL,
    PRIMARY KEY (series_instance_uid, association_id)
);
CREATE INDEX IF NOT EXISTS series_associations_by_association ON series_associations (association_id);
CREATE TABLE IF NOT EXISTS series_slices (
    sop_instance_uid TEXT PRIMARY KEY,
    series_instance_uid TEXT NOT NULL,
    instance_number INTEGER,
    position TEXT,
    orientation TEXT,
    orientation_key TEXT,
    projection REAL,
    frames INTEGER NOT NULL DEFAULT 1,
    duplicate INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS series_slices_by_position
    ON series_slices (series_instance_uid, orientation_key, projection);
CREATE TABLE IF NOT EXISTS message_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    sent_at REAL
);
CREATE INDEX IF NOT EXISTS message_outbox_by_state ON message_outbox (state, seq);
CREATE TABLE IF NOT EXISTS pacs_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    finding_id TEXT NOT NULL UNIQUE,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    destination TEXT NOT NULL,
    sr BLOB NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL,
    last_error TEXT,
    created REAL NOT NULL,
    sent_at REAL
);
CREATE INDEX IF NOT EXISTS pacs_outbox_by_state ON pacs_outbox (state, next_try, seq);
"""


@dataclass(frozen=True)
class InstanceRecord:
    """One row of the instances table."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    spool_path: Path
    transfer_syntax: str
    size: int
    calling_ae: str
    association_id: str | None
    state: InstanceState
    reason: str | None
    attempts: int
    worker: str | None
    lease_until: float | None
    received_at: float
    updated_at: float
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OutboxEntry:
    """One finding in the outbox; ``payload`` is the finding's JSON with its allocated ``seq``."""

    finding_id: str
    seq: int
    payload: bytes
    state: OutboxState
    created: float
    sop_instance_uid: str | None
    series_instance_uid: str | None
    sent_at: float | None
    acked_at: float | None


@dataclass(frozen=True)
class MessageEntry:
    """An event or a command result in the messages outbox (``pending`` or ``sent``; deleted once acknowledged).

    ``kind`` is its topic kind: ``event`` or ``cmd/result``.
    """

    message_id: str
    kind: str
    seq: int
    payload: bytes
    state: OutboxState
    created: float
    sent_at: float | None


@dataclass(frozen=True)
class PacsResult:
    """A finding's DICOM SR for the PACS, to be recorded with the finding.

    Attributes:
        finding_id: the finding it reports (one SR per finding).
        sop_instance_uid: the SR's own SOP Instance UID (stable for the finding: the PACS stores it once).
        sop_class_uid: the SR's storage SOP class (the presentation context the sender proposes).
        study_instance_uid: the source study, where the SR goes.
        destination: where it is sent (``AE@host:port``), for the record.
        data: the SR as DICOM Part 10 bytes.
    """

    finding_id: str
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    destination: str
    data: bytes


@dataclass(frozen=True)
class PacsEntry:
    """One SR in the PACS outbox: its result, its progress and its last error."""

    seq: int
    result: PacsResult
    state: PacsState
    attempts: int
    next_try: float
    last_error: str | None
    created: float
    sent_at: float | None


@dataclass(frozen=True)
class OutboxDepth:
    """What the outbox holds that the dashboard has not acknowledged, and how many messages were dropped.

    ``messages`` are events and command results; findings are never dropped.
    """

    findings_pending: int
    findings_sent: int
    messages: int
    messages_dropped: int

    @property
    def findings(self) -> int:
        """Findings not yet acknowledged (the figure the size bound applies to)."""
        return self.findings_pending + self.findings_sent


@dataclass(frozen=True)
class SeriesClaim:
    """A complete series claimed for analysis; pass ``generation`` back to :meth:`WorkQueue.record_series_findings`."""

    series_instance_uid: str
    generation: int


@dataclass(frozen=True)
class ResumeReport:
    """What :meth:`WorkQueue.resume` put back after a restart."""

    instances: int
    series: int
    associations: int
    findings: int


def _epoch(value: float | datetime | None, default: float) -> float:
    if value is None:
        return default
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value)


class WorkQueue:
    """The appliance's durable state (instances, outbox, series) in one SQLite file.

    Safe to share between threads. Every method that changes state commits
    before it returns.

    Args:
        path: the database file (created with its directory if missing).
        clock: wall-clock seconds; tests pass a fake one.
        max_attempts: claims of one instance before it is marked ``failed``
            (an instance that crashes or hangs a worker must not block the
            queue for ever).
        busy_timeout_s: how long to wait for another process holding the file.

    Raises:
        WorkQueueError: the file cannot be opened, is not a medge queue, was
            written by a newer medge, or the file system refuses WAL.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        max_attempts: int = 5,
        busy_timeout_s: float = 30.0,
    ) -> None:
        if max_attempts < 1:
            raise WorkQueueError(f"max_attempts must be at least 1, got {max_attempts}")
        self.path = Path(path)
        self.max_attempts = max_attempts
        self._clock = clock
        self._lock = threading.RLock()
        self._synchronous: str | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise WorkQueueError(f"cannot open the work queue: {exc}", path=self.path) from exc
        try:
            self._setup()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise WorkQueueError(f"not a usable work queue database: {exc}", path=self.path) from exc
        except WorkQueueError:
            self._db.close()
            raise

    def _setup(self) -> None:
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise WorkQueueError(f"the file system refuses SQLite's WAL journal (got {mode!r})", path=self.path)
        with self._lock:  # executescript() manages its own transaction, so not inside transaction()
            self._db.executescript(f"BEGIN IMMEDIATE;\n{_SCHEMA}\nCOMMIT;")
        with self.transaction() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
                db.execute("INSERT INTO meta (key, value) VALUES ('next_seq', '0')")
            elif int(row[0]) > SCHEMA_VERSION:
                raise WorkQueueError(
                    f"work queue schema version {row[0]} is newer than this medge's ({SCHEMA_VERSION})",
                    path=self.path,
                )

    # -- plumbing ---------------------------------------------------------------------------------------------------

    def now(self) -> float:
        """The queue's clock."""
        return self._clock()

    @contextmanager
    def transaction(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """A write transaction on the queue's connection, for runtime modules that keep state beside it.

        The series tracker uses it so that its rows commit atomically with
        the queue's. ``durable=True`` fsyncs the commit (``synchronous=FULL``).
        Not re-entrant: do not call queue methods inside it.
        """
        with self._lock:
            wanted = "FULL" if durable else "NORMAL"
            if self._synchronous != wanted:
                self._db.execute(f"PRAGMA synchronous={wanted}")
                self._synchronous = wanted
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        """Close the database (a checkpoint folds the WAL back into the file)."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> WorkQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- instances --------------------------------------------------------------------------------------------------

    def add_received(
        self,
        *,
        spool_path: str | Path,
        sop_class_uid: str,
        sop_instance_uid: str,
        study_instance_uid: str,
        series_instance_uid: str,
        calling_ae: str | None,
        association_id: str | int | None,
        transfer_syntax: str,
        size: int,
        received_at: float | datetime | None = None,
        durable: bool = True,
    ) -> AddResult:
        """Record a spooled instance; durable when this returns (answer the C-STORE after it).

        The arguments are the fields of the ingest's ``StoredInstance``. The
        same transaction records the arrival for series tracking (instance
        count, last arrival, association seen, a complete series re-opened),
        so a crash cannot separate the two. A DICOMDIR or an instance without
        a Series Instance UID is queued but belongs to no series.

        ``durable=False`` skips the fsync of this commit (one fsync fewer per
        instance on the ingest path); only pass it if the spool, fsync'd
        before the C-STORE answer, is reconciled with the queue at start
        (spooled files the queue does not know are added again), since a
        power cut can then lose the last rows but never the files.

        Returns:
            ``ADDED``; ``DUPLICATE`` if the SOP Instance UID is known (nothing
            changes, whatever its progress: a resend after it was reported
            is not analysed again); ``REPLACED`` if the known one was
            quarantined or failed.
        """
        if not sop_instance_uid:
            raise WorkQueueError("an instance without a SOP Instance UID cannot be queued")
        now = self.now()
        at = _epoch(received_at, now)
        association = None if association_id is None else str(association_id)
        with self.transaction(durable=durable) as db:
            row = db.execute("SELECT state FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)).fetchone()
            values = (
                sop_class_uid,
                study_instance_uid,
                series_instance_uid,
                str(spool_path),
                transfer_syntax,
                int(size),
                calling_ae or "",
                association,
                at,
                now,
                sop_instance_uid,
            )
            if row is None:
                db.execute(
                    "INSERT INTO instances (sop_class_uid, study_instance_uid, series_instance_uid, spool_path,"
                    " transfer_syntax, size, calling_ae, association_id, received_at, updated_at, sop_instance_uid,"
                    " state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'received')",
                    values,
                )
                result = AddResult.ADDED
            elif InstanceState(row[0]) in _SET_ASIDE:
                db.execute(
                    "UPDATE instances SET sop_class_uid = ?, study_instance_uid = ?, series_instance_uid = ?,"
                    " spool_path = ?, transfer_syntax = ?, size = ?, calling_ae = ?, association_id = ?,"
                    " received_at = ?, updated_at = ?, state = 'received', reason = NULL, attempts = 0,"
                    " worker = NULL, lease_until = NULL, info = '{}' WHERE sop_instance_uid = ?",
                    values,
                )
                db.execute("DELETE FROM series_slices WHERE sop_instance_uid = ?", (sop_instance_uid,))
                result = AddResult.REPLACED
            else:
                log.info("instance %s received again (it is %s): ignored", sop_instance_uid, row[0])
                return AddResult.DUPLICATE
            if association is not None:
                # An instance arriving proves its association open, even if a restarted ingest re-uses the id.
                db.execute(
                    "INSERT INTO associations (association_id, calling_ae, first_seen, last_seen) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (association_id) DO UPDATE SET last_seen = excluded.last_seen, released_at = NULL",
                    (association, calling_ae or "", at, at),
                )
            if series_instance_uid and sop_class_uid != DICOMDIR_SOP_CLASS:
                self._series_arrival(db, series_instance_uid, study_instance_uid, association, at, now, result)
        return result

    def add(self, stored: StoredInstanceLike, *, durable: bool = True) -> AddResult:
        """:meth:`add_received` for the ingest's ``StoredInstance`` (the SCP's and folder watcher's ``on_stored``)."""
        return self.add_received(
            spool_path=stored.path,
            sop_class_uid=stored.sop_class_uid,
            sop_instance_uid=stored.sop_instance_uid,
            study_instance_uid=stored.study_instance_uid,
            series_instance_uid=stored.series_instance_uid,
            calling_ae=stored.calling_ae,
            association_id=stored.association_id,
            transfer_syntax=stored.transfer_syntax_uid,
            size=stored.size_bytes,
            received_at=stored.received_at,
            durable=durable,
        )

    @staticmethod
    def _series_arrival(
        db: sqlite3.Connection,
        series_uid: str,
        study_uid: str,
        association: str | None,
        at: float,
        now: float,
        result: AddResult,
    ) -> None:
        added = 1 if result is AddResult.ADDED else 0
        db.execute(
            "INSERT INTO series (series_instance_uid, study_instance_uid, state, instance_count, first_received,"
            " last_received, updated_at) VALUES (?, ?, 'open', ?, ?, ?, ?)"
            " ON CONFLICT (series_instance_uid) DO UPDATE SET instance_count = instance_count + ?,"
            " last_received = max(last_received, excluded.last_received), state = 'open', worker = NULL,"
            " lease_until = NULL, updated_at = excluded.updated_at",
            (series_uid, study_uid, added, at, at, now, added),
        )
        if association is not None:
            db.execute(
                "INSERT OR IGNORE INTO series_associations (series_instance_uid, association_id) VALUES (?, ?)",
                (series_uid, association),
            )

    def get(self, sop_instance_uid: str) -> InstanceRecord | None:
        """The instance's row, or None if the queue does not know it."""
        with self.transaction() as db:
            row = db.execute(
                f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)
            )
            found = row.fetchone()
        return None if found is None else _instance(found)

    def instances(self, state: InstanceState | str | None = None) -> list[InstanceRecord]:
        """All instances (in one state, if given), oldest first."""
        with self.transaction() as db:
            if state is None:
                rows = db.execute(f"SELECT {_INSTANCE_COLUMNS} FROM instances ORDER BY received_at, rowid").fetchall()
            else:
                rows = db.execute(
                    f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE state = ? ORDER BY received_at, rowid",
                    (InstanceState(state).value,),
                ).fetchall()
        return [_instance(row) for row in rows]

    def claim_next(self, state: InstanceState | str, worker: str, *, lease_s: float = 120.0) -> InstanceRecord | None:
        """Claim the oldest instance waiting in ``state`` (``received`` or ``decoded``), or None.

        An instance whose claim's lease has expired (its worker died or hung)
        is claimed again. Each claim counts an attempt; an instance claimed
        ``max_attempts`` times is marked ``failed`` instead.
        """
        claimed = self.claim_batch(state, worker, limit=1, lease_s=lease_s)
        return claimed[0] if claimed else None

    def claim_batch(
        self, state: InstanceState | str, worker: str, *, limit: int, lease_s: float = 120.0
    ) -> list[InstanceRecord]:
        """Claim up to ``limit`` of the oldest instances waiting in ``state`` (see :meth:`claim_next`)."""
        stable = InstanceState(state)
        if stable not in _CLAIMED:
            raise WorkQueueError(f"instances in state {stable.value!r} cannot be claimed (only received, decoded)")
        busy = _CLAIMED[stable]
        now = self.now()
        waiting = "(state = ? OR (state = ? AND lease_until < ?))"
        with self.transaction() as db:
            exhausted = db.execute(
                f"SELECT sop_instance_uid, attempts FROM instances WHERE {waiting} AND attempts >= ?",
                (stable.value, busy.value, now, self.max_attempts),
            ).fetchall()
            for sop, attempts in exhausted:
                reason = f"gave up after {attempts} attempts: the instance crashes or hangs the {busy.value} worker"
                log.error("instance %s failed: %s", sop, reason)
                db.execute(
                    "UPDATE instances SET state = 'failed', reason = ?, worker = NULL, lease_until = NULL,"
                    " updated_at = ? WHERE sop_instance_uid = ?",
                    (reason, now, sop),
                )
            sops = [
                row[0]
                for row in db.execute(
                    f"SELECT sop_instance_uid FROM instances WHERE {waiting} ORDER BY received_at, rowid LIMIT ?",
                    (stable.value, busy.value, now, max(0, limit)),
                )
            ]
            records = []
            for sop in sops:
                db.execute(
                    "UPDATE instances SET state = ?, worker = ?, lease_until = ?, attempts = attempts + 1,"
                    " updated_at = ? WHERE sop_instance_uid = ?",
                    (busy.value, worker, now + lease_s, now, sop),
                )
                row = db.execute(f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE sop_instance_uid = ?", (sop,))
                records.append(_instance(row.fetchone()))
        return records

    def renew(self, sop_instance_uid: str, worker: str, *, lease_s: float = 120.0) -> None:
        """Extend a claim's lease (long work).

        Raises:
            WorkQueueError: the instance is not claimed by ``worker`` any more.
        """
        with self.transaction() as db:
            cursor = db.execute(
                "UPDATE instances SET lease_until = ? WHERE sop_instance_uid = ? AND worker = ? AND state IN (?, ?)",
                (self.now() + lease_s, sop_instance_uid, worker, *(s.value for s in _STABLE)),
            )
            if cursor.rowcount != 1:
                raise WorkQueueError(f"instance {sop_instance_uid} is not claimed by {worker} any more")

    def advance(
        self, sop_instance_uid: str, new_state: InstanceState | str, *, worker: str | None = None, **fields: Any
    ) -> None:
        """Move an instance forward (or a claimed one back to where it was), merging ``fields`` into its info.

        Advancing to the state it is already in only merges the fields, so a
        worker redoing a step after a crash is harmless.

        Raises:
            WorkQueueError: unknown instance, a transition the state machine
                does not allow, or ``worker`` no longer holds the claim.
        """
        target = InstanceState(new_state)
        if target not in _SOURCES:
            raise WorkQueueError(f"use quarantine() or fail() to set an instance aside, not advance({target.value!r})")
        now = self.now()
        with self.transaction() as db:
            current, info = self._current(db, sop_instance_uid, worker)
            if current is not target and current not in _SOURCES[target]:
                raise WorkQueueError(
                    f"instance {sop_instance_uid} cannot go from {current.value} to {target.value}",
                    field="state",
                )
            info.update(fields)
            db.execute(
                "UPDATE instances SET state = ?, info = ?, worker = NULL, lease_until = NULL, updated_at = ?"
                " WHERE sop_instance_uid = ?",
                (target.value, json.dumps(info), now, sop_instance_uid),
            )

    def _current(
        self, db: sqlite3.Connection, sop_instance_uid: str, worker: str | None
    ) -> tuple[InstanceState, dict[str, Any]]:
        row = db.execute(
            "SELECT state, worker, info FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)
        ).fetchone()
        if row is None:
            raise WorkQueueError(f"instance {sop_instance_uid} is not in the work queue")
        state = InstanceState(row[0])
        if worker is not None and state in _STABLE and row[1] != worker:
            raise WorkQueueError(f"instance {sop_instance_uid} is claimed by {row[1]}, not by {worker}")
        return state, json.loads(row[2])

    def quarantine(self, sop_instance_uid: str, reason: str) -> None:
        """Set a bad instance aside for good (corrupt, unsupported, hostile); the reason is kept with it."""
        self._set_aside(sop_instance_uid, InstanceState.QUARANTINED, reason)

    def fail(self, sop_instance_uid: str, reason: str) -> None:
        """Set an instance aside after an error that is not the instance's fault (e.g. no package can run it)."""
        self._set_aside(sop_instance_uid, InstanceState.FAILED, reason)

    def _set_aside(self, sop_instance_uid: str, state: InstanceState, reason: str) -> None:
        with self.transaction(durable=True) as db:
            current, _ = self._current(db, sop_instance_uid, None)
            if current is InstanceState.REPORTED:
                raise WorkQueueError(f"instance {sop_instance_uid} is already reported; it cannot be {state.value}")
            db.execute(
                "UPDATE instances SET state = ?, reason = ?, worker = NULL, lease_until = NULL, updated_at = ?"
                " WHERE sop_instance_uid = ?",
                (state.value, reason, self.now(), sop_instance_uid),
            )
        log.warning("instance %s %s: %s", sop_instance_uid, state.value, reason)

    def record_findings(
        self,
        sop_instance_uid: str,
        findings: Sequence[Finding],
        next_state: InstanceState | str = InstanceState.ANALYSED,
        *,
        worker: str | None = None,
        results: Sequence[PacsResult] = (),
    ) -> int:
        """Put an instance's findings into the outbox and advance it, in one durable transaction.

        Each finding's ``id`` must be its stable :func:`~sdk.messages.finding_id`:
        a finding whose id is already in the outbox is ignored (a redo after a
        crash), and only new ones get the next per-device sequence numbers
        (their ``seq`` field is overwritten). An instance whose analysis
        produced no finding at all goes straight to ``reported``; a reported
        instance that gets new findings (another package) is ``analysed``
        again until they are acknowledged. Findings for an instance that was
        quarantined or failed meanwhile are dropped. ``results`` are the
        findings' SRs for the PACS: each goes into the PACS outbox in the same
        transaction if its finding is new.

        Returns:
            How many findings were new.

        Raises:
            WorkQueueError: unknown instance, a disallowed transition, or
                ``worker`` no longer holds the claim.
        """
        target = InstanceState(next_state)
        if target not in (InstanceState.ANALYSED, InstanceState.REPORTED):
            raise WorkQueueError(f"findings move an instance to analysed or reported, not {target.value!r}")
        now = self.now()
        with self.transaction(durable=True) as db:
            current, _ = self._current(db, sop_instance_uid, worker)
            if current in _SET_ASIDE:
                log.warning("findings for %s instance %s dropped", current.value, sop_instance_uid)
                return 0
            return self._record(db, sop_instance_uid, current, findings, target, _SOURCES[target], now, results)

    def record_findings_batch(
        self,
        items: Sequence[tuple[str, Sequence[Finding]]],
        *,
        worker: str | None = None,
        results: Mapping[str, Sequence[PacsResult]] | None = None,
    ) -> list[int | WorkQueueError]:
        """:meth:`record_findings` for several instances in ONE durable transaction (a group commit).

        One fsync makes every instance's findings durable, so a pipeline that
        finishes instances faster than the disk flushes pays one flush per
        batch instead of one per instance. Besides ``decoded`` and
        ``analysing``, an instance may still be claimed for decoding
        (``decoding``, by ``worker``): the appliance hands its decoded tensors
        straight to inference without recording the step in between, since
        after a crash the tensors are gone and the instance is decoded again
        either way. Each instance is recorded on its own (a savepoint): one
        that cannot be does not hold back the others. ``results`` maps an
        instance's SOP Instance UID to its findings' SRs (see
        :meth:`record_findings`); they are kept or dropped with its findings.

        Returns:
            Per item, in order: how many of its findings were new, or the
            error that kept its findings out (unknown instance, a disallowed
            transition, ``worker`` no longer holds the claim, or set aside
            meanwhile: quarantined or failed, its findings dropped).
        """
        outcomes: list[int | WorkQueueError] = []
        srs = results or {}
        if not items:
            return outcomes
        now = self.now()
        sources = _SOURCES[InstanceState.ANALYSED] | {InstanceState.DECODING}
        with self.transaction(durable=True) as db:
            for sop_instance_uid, findings in items:
                db.execute("SAVEPOINT one_instance")
                try:
                    current, _ = self._current(db, sop_instance_uid, worker)
                    if current in _SET_ASIDE:
                        log.warning("findings for %s instance %s dropped", current.value, sop_instance_uid)
                        raise WorkQueueError(
                            f"instance {sop_instance_uid} was {current.value} meanwhile: its findings were dropped"
                        )
                    added = self._record(
                        db,
                        sop_instance_uid,
                        current,
                        findings,
                        InstanceState.ANALYSED,
                        sources,
                        now,
                        srs.get(sop_instance_uid, ()),
                    )
                except WorkQueueError as exc:
                    db.execute("ROLLBACK TO one_instance")
                    outcomes.append(exc)
                else:
                    outcomes.append(added)
                db.execute("RELEASE one_instance")
        return outcomes

    def _record(
        self,
        db: sqlite3.Connection,
        sop_instance_uid: str,
        current: InstanceState,
        findings: Sequence[Finding],
        target: InstanceState,
        sources: frozenset[InstanceState],
        now: float,
        results: Sequence[PacsResult] = (),
    ) -> int:
        """Insert an instance's findings (and their SRs) and advance it (inside a transaction); how many were new."""
        added = self._insert_findings(db, findings, sop_instance_uid, None, now, results)
        if current is InstanceState.REPORTED and added:
            target = InstanceState.ANALYSED  # e.g. a second package: reported again once these are acked
        elif current is target or _ORDER.index(current) > _ORDER.index(target):
            return added  # a redo of work already recorded: nothing moves back
        elif current not in sources:
            raise WorkQueueError(f"instance {sop_instance_uid} cannot go from {current.value} to {target.value}")
        if target is InstanceState.ANALYSED and not self._has_findings(db, sop_instance_uid):
            target = InstanceState.REPORTED
        db.execute(
            "UPDATE instances SET state = ?, worker = NULL, lease_until = NULL, updated_at = ?"
            " WHERE sop_instance_uid = ?",
            (target.value, now, sop_instance_uid),
        )
        return added

    @staticmethod
    def _has_findings(db: sqlite3.Connection, sop_instance_uid: str) -> bool:
        return (
            db.execute("SELECT 1 FROM outbox WHERE sop_instance_uid = ? LIMIT 1", (sop_instance_uid,)).fetchone()
            is not None
        )

    @staticmethod
    def _insert_findings(
        db: sqlite3.Connection,
        findings: Iterable[Finding],
        sop: str | None,
        series: str | None,
        now: float,
        results: Sequence[PacsResult] = (),
    ) -> int:
        seq = int(db.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()[0])
        added = 0
        new: set[str] = set()
        for finding in findings:
            if db.execute("SELECT 1 FROM outbox WHERE finding_id = ?", (finding.id,)).fetchone() is not None:
                continue
            payload = finding.model_copy(update={"seq": seq}).to_json().decode()
            db.execute(
                "INSERT INTO outbox (finding_id, seq, sop_instance_uid, series_instance_uid, payload, state, created)"
                " VALUES (?, ?, ?, ?, ?, 'pending', ?)",
                (finding.id, seq, sop, series, payload, now),
            )
            seq += 1
            added += 1
            new.add(finding.id)
        if added:
            db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (str(seq),))
        # An SR goes in with its finding only: a redo (the finding is there) must not make it twice.
        for r in results:
            if r.finding_id in new:
                db.execute(
                    "INSERT OR IGNORE INTO pacs_outbox (finding_id, sop_instance_uid, sop_class_uid,"
                    " study_instance_uid, destination, sr, state, next_try, created)"
                    " VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
                    (
                        r.finding_id,
                        r.sop_instance_uid,
                        r.sop_class_uid,
                        r.study_instance_uid,
                        r.destination,
                        r.data,
                        now,
                        now,
                    ),
                )
        return added

    def counts(self) -> dict[str, int]:
        """Instances per state (every state present, zeros included), for the heartbeat."""
        with self.transaction() as db:
            rows = dict(db.execute("SELECT state, count(*) FROM instances GROUP BY state").fetchall())
        return {state.value: int(rows.get(state.value, 0)) for state in InstanceState}

    # -- series work --------------------------------------------------------------------------------------------------

    def claim_series(self, worker: str, *, lease_s: float = 600.0) -> SeriesClaim | None:
        """Claim the complete series that waited longest (or one whose claim's lease expired), or None."""
        now = self.now()
        with self.transaction() as db:
            row = db.execute(
                "SELECT series_instance_uid, generation FROM series WHERE state = 'complete'"
                " OR (state = 'analysing' AND lease_until < ?) ORDER BY completed_at, rowid LIMIT 1",
                (now,),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE series SET state = 'analysing', worker = ?, lease_until = ?, updated_at = ?"
                " WHERE series_instance_uid = ?",
                (worker, now + lease_s, now, row[0]),
            )
        return SeriesClaim(row[0], int(row[1]))

    def record_series_findings(
        self, claim: SeriesClaim, findings: Sequence[Finding], results: Sequence[PacsResult] = ()
    ) -> int:
        """Put a series' findings into the outbox and mark it analysed, in one durable transaction.

        If instances arrived for the series since it was claimed, it was
        re-opened: the findings are kept but the series stays open and will
        complete (with a new ``generation``) again. A series finding's id is
        ``finding_id(series_instance_uid, package_sha256)``; key it with the
        generation too if a re-completed series must be reported again
        rather than de-duplicated. ``results`` are the findings' SRs (see
        :meth:`record_findings`).

        Returns:
            How many findings were new (see :meth:`record_findings`).
        """
        now = self.now()
        with self.transaction(durable=True) as db:
            added = self._insert_findings(db, findings, None, claim.series_instance_uid, now, results)
            db.execute(
                "UPDATE series SET state = 'analysed', worker = NULL, lease_until = NULL, updated_at = ?"
                " WHERE series_instance_uid = ? AND state = 'analysing' AND generation = ?",
                (now, claim.series_instance_uid, claim.generation),
            )
        return added

    # -- restart ----------------------------------------------------------------------------------------------------

    def resume(self) -> ResumeReport:
        """Put back what a previous run left half done; call once at start, before any worker runs.

        Claimed instances and series return to the state they were claimed
        from; associations still open belonged to connections that died with
        the process and count as released; findings sent but not acknowledged
        are sent again (the dashboard de-duplicates on their id).
        """
        now = self.now()
        with self.transaction(durable=True) as db:
            instances = 0
            for busy, stable in _STABLE.items():
                instances += db.execute(
                    "UPDATE instances SET state = ?, worker = NULL, lease_until = NULL, updated_at = ? WHERE state = ?",
                    (stable.value, now, busy.value),
                ).rowcount
            series = db.execute(
                "UPDATE series SET state = 'complete', worker = NULL, lease_until = NULL, updated_at = ?"
                " WHERE state = 'analysing'",
                (now,),
            ).rowcount
            associations = db.execute(
                "UPDATE associations SET released_at = ? WHERE released_at IS NULL", (now,)
            ).rowcount
            findings = db.execute("UPDATE outbox SET state = 'pending', sent_at = NULL WHERE state = 'sent'").rowcount
        report = ResumeReport(instances, series, associations, findings)
        if instances or series or associations or findings:
            log.info("resumed: %s", report)
        return report

    # -- outbox -----------------------------------------------------------------------------------------------------

    def pending(self, limit: int = 100) -> list[OutboxEntry]:
        """Findings waiting to be sent, in sequence order."""
        return self.pending_after(-1, limit)

    def findings(self, sop_instance_uid: str | None = None) -> list[OutboxEntry]:
        """Every finding in the outbox (of one instance, if given), in sequence order."""
        with self.transaction() as db:
            if sop_instance_uid is None:
                rows = db.execute(f"SELECT {_OUTBOX_COLUMNS} FROM outbox ORDER BY seq").fetchall()
            else:
                rows = db.execute(
                    f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE sop_instance_uid = ? ORDER BY seq",
                    (sop_instance_uid,),
                ).fetchall()
        return [_outbox(row) for row in rows]

    def mark_sent(self, finding_ids: Iterable[str]) -> int:
        """Mark pending findings as published (not yet acknowledged); returns how many changed."""
        return self.mark_sent_batch(finding_ids)

    def mark_acked(self, finding_ids: Iterable[str]) -> int:
        """Mark findings the dashboard committed; an instance whose findings are all acknowledged becomes reported.

        Unknown and already acknowledged ids are ignored (acks can repeat).

        Returns:
            How many findings changed.
        """
        return self.mark_acked_batch(finding_ids)[0]

    def depth(self) -> int:
        """Findings not yet acknowledged (pending or sent)."""
        with self.transaction() as db:
            return int(db.execute("SELECT count(*) FROM outbox WHERE state != 'acked'").fetchone()[0])

    def purge_acked(self, older_than_s: float) -> int:
        """Delete findings acknowledged more than ``older_than_s`` ago (sequence numbers are never re-used)."""
        with self.transaction() as db:
            return db.execute(
                "DELETE FROM outbox WHERE state = 'acked' AND acked_at < ?", (self.now() - older_than_s,)
            ).rowcount

    # -- reporter: messages outbox and batched marks -----------------------------------------------------------------
    # The MQTT reporter (runtime.reporting) sends findings, events and command results from here, one transaction per
    # batch: a message is ``pending`` until the broker's PUBACK (then ``sent``) and leaves only when the dashboard's
    # Ack names it (a finding becomes ``acked``, the others are deleted). These marks are bookkeeping
    # (``synchronous=NORMAL``): losing the last of them to a power cut repeats a send, which the dashboard
    # de-duplicates on the id.

    def add_message(self, message: Event | CommandResult, *, limit: int = 10_000) -> int:
        """Put an event or a command result into the messages outbox, fsync'd before it can be published.

        Findings are never dropped; these are, oldest first, beyond ``limit``
        unacknowledged ones, so that a storm of rejections cannot fill the
        disk. The drops are counted (:attr:`OutboxDepth.messages_dropped`). A
        message whose id is already there is ignored.

        Returns:
            How many older messages were dropped to make room.

        Raises:
            WorkQueueError: ``limit`` is below 1.
        """
        if limit < 1:
            raise WorkQueueError(f"the messages outbox limit must be at least 1, got {limit}")
        kind = "event" if isinstance(message, Event) else "cmd/result"
        with self.transaction(durable=True) as db:
            db.execute(
                "INSERT OR IGNORE INTO message_outbox (message_id, kind, payload, state, created)"
                " VALUES (?, ?, ?, 'pending', ?)",
                (message.id, kind, message.to_json().decode(), self.now()),
            )
            excess = int(db.execute("SELECT count(*) FROM message_outbox").fetchone()[0]) - limit
            if excess <= 0:
                return 0
            db.execute(
                "DELETE FROM message_outbox WHERE seq IN (SELECT seq FROM message_outbox ORDER BY seq LIMIT ?)",
                (excess,),
            )
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('messages_dropped', ?) ON CONFLICT (key)"
                " DO UPDATE SET value = CAST(value AS INTEGER) + CAST(excluded.value AS INTEGER)",
                (str(excess),),
            )
        log.warning("messages outbox over its limit of %d: dropped the %d oldest event(s)/result(s)", limit, excess)
        return excess

    def pending_after(self, after_seq: int, limit: int) -> list[OutboxEntry]:
        """Findings waiting to be sent with ``seq`` above ``after_seq``, in sequence order (a sender's cursor)."""
        with self.transaction() as db:
            rows = db.execute(
                f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE state = 'pending' AND seq > ? ORDER BY seq LIMIT ?",
                (after_seq, max(0, limit)),
            ).fetchall()
        return [_outbox(row) for row in rows]

    def pending_messages(self, after_seq: int = -1, limit: int = 100) -> list[MessageEntry]:
        """Events and command results waiting to be sent with ``seq`` above ``after_seq``, oldest first."""
        with self.transaction() as db:
            rows = db.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM message_outbox WHERE state = 'pending' AND seq > ?"
                " ORDER BY seq LIMIT ?",
                (after_seq, max(0, limit)),
            ).fetchall()
        return [_message_entry(row) for row in rows]

    def mark_sent_batch(self, finding_ids: Iterable[str] = (), message_ids: Iterable[str] = ()) -> int:
        """Mark pending findings and other messages as published, in one transaction (one per PUBACK batch).

        Only pending ones change (an id acknowledged meanwhile stays acknowledged).

        Returns:
            How many changed.
        """
        now = self.now()
        with self.transaction() as db:
            changed = db.executemany(
                "UPDATE outbox SET state = 'sent', sent_at = ? WHERE finding_id = ? AND state = 'pending'",
                ((now, finding_id) for finding_id in finding_ids),
            ).rowcount
            changed += db.executemany(
                "UPDATE message_outbox SET state = 'sent', sent_at = ? WHERE message_id = ? AND state = 'pending'",
                ((now, message_id) for message_id in message_ids),
            ).rowcount
        return changed

    def mark_acked_batch(self, ids: Iterable[str]) -> tuple[int, int]:
        """The ids a dashboard Ack names, findings and other messages mixed, in one transaction.

        Findings become ``acked`` and an instance whose findings are all
        acknowledged becomes ``reported``; events and
        command results are deleted. Unknown and repeated ids are ignored
        (acks repeat).

        Returns:
            How many findings and how many other messages were acknowledged.
        """
        wanted = json.dumps(list(dict.fromkeys(ids)))
        now = self.now()
        with self.transaction() as db:
            sops = [
                row[0]
                for row in db.execute(
                    "SELECT DISTINCT sop_instance_uid FROM outbox WHERE finding_id IN (SELECT value FROM json_each(?))"
                    " AND state != 'acked' AND sop_instance_uid IS NOT NULL",
                    (wanted,),
                )
            ]
            findings = db.execute(
                "UPDATE outbox SET state = 'acked', acked_at = ? WHERE finding_id IN (SELECT value FROM json_each(?))"
                " AND state != 'acked'",
                (now, wanted),
            ).rowcount
            messages = db.execute(
                "DELETE FROM message_outbox WHERE message_id IN (SELECT value FROM json_each(?))", (wanted,)
            ).rowcount
            db.executemany(
                "UPDATE instances SET state = 'reported', updated_at = ? WHERE sop_instance_uid = ?"
                " AND state = 'analysed' AND NOT EXISTS"
                " (SELECT 1 FROM outbox WHERE sop_instance_uid = ? AND state != 'acked')",
                ((now, sop, sop) for sop in sops),
            )
        return findings, messages

    def requeue_unacknowledged(self, older_than_s: float = 0.0, *, limit: int | None = None) -> int:
        """Messages published ``older_than_s`` ago or more and not acknowledged go back to pending.

        ``0`` puts back every one: after a reconnect or a restart, since a
        broker killed meanwhile lost what it had only in memory. ``limit``
        puts back only the oldest few of each (a probe while the dashboard
        does not answer, rather than the whole backlog again).

        Returns:
            How many went back.
        """
        cutoff = self.now() - older_than_s
        count = 0
        with self.transaction() as db:
            for table in ("outbox", "message_outbox"):
                args: tuple[float, ...]
                if limit is None:
                    where, args = "state = 'sent' AND sent_at <= ?", (cutoff,)
                else:
                    where = (
                        f"seq IN (SELECT seq FROM {table} WHERE state = 'sent' AND sent_at <= ? ORDER BY seq LIMIT ?)"
                    )
                    args = (cutoff, max(0, limit))
                count += db.execute(
                    f"UPDATE {table} SET state = 'pending', sent_at = NULL WHERE {where}", args
                ).rowcount
        return count

    def outbox_depth(self) -> OutboxDepth:
        """Unacknowledged findings (pending, sent) and other messages, and the count of messages dropped so far."""
        with self.transaction() as db:
            states = dict(
                db.execute(
                    "SELECT state, count(*) FROM outbox WHERE state IN ('pending', 'sent') GROUP BY state"
                ).fetchall()
            )
            messages = int(db.execute("SELECT count(*) FROM message_outbox").fetchone()[0])
            dropped = db.execute("SELECT value FROM meta WHERE key = 'messages_dropped'").fetchone()
        return OutboxDepth(
            findings_pending=int(states.get("pending", 0)),
            findings_sent=int(states.get("sent", 0)),
            messages=messages,
            messages_dropped=int(dropped[0]) if dropped else 0,
        )

    def outbox_full(self, limit: int) -> bool:
        """Whether unacknowledged findings reached ``limit``: the appliance then refuses new instances upstream.

        Findings already made are never dropped; the bound is kept by not
        taking in more work while the dashboard cannot keep up or is away.
        """
        return self.outbox_depth().findings >= limit

    # -- PACS outbox -----------------------------------------------------------------------------------------------
    # The SRs of findings, for the hospital's PACS (runtime.results). Marks are bookkeeping (synchronous=NORMAL):
    # losing the last "sent" to a power cut sends an SR again, which the PACS stores once (same SOP Instance UID).

    def pacs_due(self, limit: int = 16, *, now: float | None = None) -> list[PacsEntry]:
        """Pending SRs whose next try has come, in the order they were recorded."""
        at = self.now() if now is None else now
        with self.transaction() as db:
            rows = db.execute(
                f"SELECT {_PACS_COLUMNS} FROM pacs_outbox WHERE state = 'pending' AND next_try <= ?"
                " ORDER BY seq LIMIT ?",
                (at, max(0, limit)),
            ).fetchall()
        return [_pacs_entry(row) for row in rows]

    def pacs_next_try(self) -> float | None:
        """When the earliest pending SR is due (None: nothing pending)."""
        with self.transaction() as db:
            row = db.execute("SELECT min(next_try) FROM pacs_outbox WHERE state = 'pending'").fetchone()
        return None if row[0] is None else float(row[0])

    def pacs_entries(self, state: PacsState | str | None = None) -> list[PacsEntry]:
        """Every SR in the PACS outbox (in one state, if given), in order."""
        with self.transaction() as db:
            if state is None:
                rows = db.execute(f"SELECT {_PACS_COLUMNS} FROM pacs_outbox ORDER BY seq").fetchall()
            else:
                rows = db.execute(
                    f"SELECT {_PACS_COLUMNS} FROM pacs_outbox WHERE state = ? ORDER BY seq", (PacsState(state).value,)
                ).fetchall()
        return [_pacs_entry(row) for row in rows]

    def pacs_pending(self) -> int:
        """SRs the PACS has not accepted yet."""
        with self.transaction() as db:
            return int(db.execute("SELECT count(*) FROM pacs_outbox WHERE state = 'pending'").fetchone()[0])

    def mark_pacs_sent(self, finding_ids: Iterable[str]) -> int:
        """SRs the PACS accepted (success or warning status); returns how many changed."""
        now = self.now()
        with self.transaction() as db:
            return db.executemany(
                "UPDATE pacs_outbox SET state = 'sent', sent_at = ?, attempts = attempts + 1, last_error = NULL"
                " WHERE finding_id = ? AND state = 'pending'",
                ((now, finding_id) for finding_id in finding_ids),
            ).rowcount

    def pacs_failed(self, retries: Mapping[str, float], error: str) -> int:
        """SRs whose send failed: one more attempt counted, ``error`` kept, next try at ``retries[finding_id]``."""
        with self.transaction() as db:
            return db.executemany(
                "UPDATE pacs_outbox SET attempts = attempts + 1, last_error = ?, next_try = ?"
                " WHERE finding_id = ? AND state = 'pending'",
                ((error, next_try, finding_id) for finding_id, next_try in retries.items()),
            ).rowcount

    def purge_pacs_sent(self, older_than_s: float) -> int:
        """Delete SRs the PACS accepted more than ``older_than_s`` ago."""
        with self.transaction() as db:
            return db.execute(
                "DELETE FROM pacs_outbox WHERE state = 'sent' AND sent_at < ?", (self.now() - older_than_s,)
            ).rowcount


_PACS_COLUMNS = (
    "seq, finding_id, sop_instance_uid, sop_class_uid, study_instance_uid, destination, sr, state, attempts,"
    " next_try, last_error, created, sent_at"
)

_INSTANCE_COLUMNS = (
    "sop_instance_uid, sop_class_uid, study_instance_uid, series_instance_uid, spool_path, transfer_syntax, size,"
    " calling_ae, association_id, state, reason, attempts, worker, lease_until, received_at, updated_at, info"
)
_OUTBOX_COLUMNS = "finding_id, seq, payload, state, created, sop_instance_uid, series_instance_uid, sent_at, acked_at"
_MESSAGE_COLUMNS = "message_id, kind, seq, payload, state, created, sent_at"


def _instance(row: tuple[Any, ...]) -> InstanceRecord:
    return InstanceRecord(
        sop_instance_uid=row[0],
        sop_class_uid=row[1],
        study_instance_uid=row[2],
        series_instance_uid=row[3],
        spool_path=Path(row[4]),
        transfer_syntax=row[5],
        size=row[6],
        calling_ae=row[7],
        association_id=row[8],
        state=InstanceState(row[9]),
        reason=row[10],
        attempts=row[11],
        worker=row[12],
        lease_until=row[13],
        received_at=row[14],
        updated_at=row[15],
        info=json.loads(row[16]),
    )


def _outbox(row: tuple[Any, ...]) -> OutboxEntry:
    return OutboxEntry(
        finding_id=row[0],
        seq=row[1],
        payload=row[2].encode(),
        state=OutboxState(row[3]),
        created=row[4],
        sop_instance_uid=row[5],
        series_instance_uid=row[6],
        sent_at=row[7],
        acked_at=row[8],
    )


def _pacs_entry(row: tuple[Any, ...]) -> PacsEntry:
    return PacsEntry(
        seq=row[0],
        result=PacsResult(
            finding_id=row[1],
            sop_instance_uid=row[2],
            sop_class_uid=row[3],
            study_instance_uid=row[4],
            destination=row[5],
            data=bytes(row[6]),
        ),
        state=PacsState(row[7]),
        attempts=row[8],
        next_try=row[9],
        last_error=row[10],
        created=row[11],
        sent_at=row[12],
    )


def _message_entry(row: tuple[Any, ...]) -> MessageEntry:
    return MessageEntry(
        message_id=row[0],
        kind=row[1],
        seq=row[2],
        payload=row[3].encode(),
        state=OutboxState(row[4]),
        created=row[5],
        sent_at=row[6],
    )
