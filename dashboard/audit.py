"""The hash-chained audit log: who did what, when, from where; tampering shows.

Every entry stores ``prev_hash`` (the previous entry's ``hash``; 64 zeros for
the first) and ``hash``, the SHA-256 of its own canonical content, which
includes ``prev_hash``. Changing an entry's content breaks its hash; removing
or inserting one breaks the next entry's ``prev_hash`` (and ids are
consecutive, so a gap shows too). What the chain alone cannot show is the
removal of the newest entries: :func:`verify_chain` reports the head hash and
count, which an operator can note elsewhere (a ticket, a log shipper) and
compare later.

Entries are written by :func:`record` inside the transaction of the action
they record, so an action happens if and only if it is audited. Appends are
serialised: SQLite's write transaction (``Store.write``) holds the database's
write lock, and on PostgreSQL :func:`record` takes a transaction-scoped
advisory lock.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from dashboard.store.engine import Store
from dashboard.store.models import AuditEntry

__all__ = [
    "CLI_ACTOR",
    "GENESIS_HASH",
    "Actor",
    "ChainReport",
    "canonical_content",
    "entry_hash",
    "record",
    "verify_chain",
]

GENESIS_HASH = "0" * 64
"""The ``prev_hash`` of the first entry."""

_LOCK_KEY = 7213005
_FORMAT = 1


@dataclass(frozen=True)
class Actor:
    """Who acts, as the audit log records it.

    Attributes:
        name: a username, ``token:<name>``, or ``cli``.
        role: their role, when they have one.
        client_ip: the address the request came from (``None`` from the command line).
    """

    name: str
    role: str | None = None
    client_ip: str | None = None


CLI_ACTOR = Actor("cli")
"""The actor of the ``medge dashboard`` commands (whoever has the server's config and database)."""


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def canonical_content(
    *,
    id: int,
    at: datetime,
    actor: str,
    role: str | None,
    client_ip: str | None,
    action: str,
    target: str | None,
    detail: str,
    prev_hash: str,
) -> bytes:
    """The bytes an entry's hash covers: its fields as canonical JSON (sorted keys, no spaces, UTC time)."""
    return _json(
        {
            "v": _FORMAT,
            "id": id,
            "at": at.astimezone(UTC).isoformat(timespec="microseconds"),
            "actor": actor,
            "role": role,
            "client_ip": client_ip,
            "action": action,
            "target": target,
            "detail": detail,
            "prev": prev_hash,
        }
    ).encode("utf-8")


def entry_hash(entry: AuditEntry) -> str:
    """The SHA-256 (hex) an entry with these fields must carry."""
    content = canonical_content(
        id=entry.id,
        at=entry.at,
        actor=entry.actor,
        role=entry.role,
        client_ip=entry.client_ip,
        action=entry.action,
        target=entry.target,
        detail=entry.detail,
        prev_hash=entry.prev_hash,
    )
    return hashlib.sha256(content).hexdigest()


def record(
    session: Session,
    actor: Actor,
    action: str,
    target: str | None = None,
    detail: Mapping[str, Any] | None = None,
    *,
    at: datetime | None = None,
) -> AuditEntry:
    """Append an entry to the chain in ``session``'s transaction (which must be a ``Store.write()``).

    Args:
        session: the write transaction of the action being recorded.
        actor: who acts, and from where.
        action: what they did, dotted (``finding.acknowledge``, ``login.failure``).
        target: what it was done to (``finding:42``, ``user:7``).
        detail: anything else worth keeping (JSON-serialisable).
        at: when (default: now, UTC).
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    last = session.execute(select(AuditEntry.id, AuditEntry.hash).order_by(AuditEntry.id.desc()).limit(1)).first()
    entry = AuditEntry(
        id=1 if last is None else last.id + 1,
        at=(at or datetime.now(UTC)).astimezone(UTC),
        actor=actor.name[:128],
        role=actor.role,
        client_ip=actor.client_ip,
        action=action,
        target=target,
        detail=_json(dict(detail or {})),
        prev_hash=GENESIS_HASH if last is None else last.hash,
    )
    entry.hash = entry_hash(entry)
    session.add(entry)
    session.flush()
    return entry


@dataclass(frozen=True)
class ChainReport:
    """The result of :func:`verify_chain`.

    Attributes:
        entries: entries checked.
        head_hash: the last good entry's hash (note it: it proves later that nothing was cut off the end).
        first_broken: id of the first entry that does not check out, or ``None``.
        reason: why it does not.
    """

    entries: int
    head_hash: str
    first_broken: int | None = None
    reason: str | None = None

    @property
    def intact(self) -> bool:
        return self.first_broken is None


def verify_chain(store: Store, *, batch: int = 2000) -> ChainReport:
    """Walk the whole audit log in id order and check every link and hash.

    Returns the first entry that is out of sequence, points at the wrong
    predecessor, or whose content does not match its hash.
    """
    expected_id, previous, checked = 1, GENESIS_HASH, 0
    with store.session() as session:
        after = 0
        while True:
            rows = session.scalars(
                select(AuditEntry).where(AuditEntry.id > after).order_by(AuditEntry.id).limit(batch)
            ).all()
            if not rows:
                return ChainReport(checked, previous)
            for entry in rows:
                if entry.id != expected_id:
                    reason = f"entry {expected_id} is missing (the next one is {entry.id})"
                    return ChainReport(checked, previous, expected_id, reason)
                if entry.prev_hash != previous:
                    reason = (
                        f"its prev_hash does not match entry {entry.id - 1}'s hash "
                        f"(entry {entry.id - 1} was altered and re-hashed, or entries were removed)"
                    )
                    return ChainReport(checked, previous, entry.id, reason)
                if entry_hash(entry) != entry.hash:
                    return ChainReport(checked, previous, entry.id, "its content does not match its hash (altered)")
                previous, expected_id, checked = entry.hash, entry.id + 1, checked + 1
            after = rows[-1].id
            session.expunge_all()
