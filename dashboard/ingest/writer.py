"""Writing a batch of MQTT messages to the store in one transaction.

The batch is the unit of durability: everything in it (findings, events,
heartbeats, statuses, command results and dead letters) is committed together
or not at all, and only what was committed is acknowledged (findings, events
and command results: what an appliance keeps in its outbox until then). Inserts are keyed
by message id with ``ON CONFLICT DO NOTHING``, so a message delivered twice
(a re-send, a broker re-delivery, two dashboard processes racing) is stored
once and acknowledged each time.

A row the database refuses (a constraint, an oversized value) does not sink
its batch: the batch is retried one message at a time and the refused one
becomes a dead letter. A database that is unreachable or locked raises
:class:`StoreUnavailable` and nothing is acknowledged; the caller retries.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, delete, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, aliased

import sdk.messages as messages
from dashboard.ingest.classify import Accepted, InboundMessage, Rejected, classify
from dashboard.rollouts import apply_command_results, apply_ota_events
from dashboard.store.engine import Store
from dashboard.store.models import (
    CommandResult,
    DeadLetter,
    DeadLetterCount,
    DeadLetterReason,
    Device,
    DeviceState,
    Event,
    Finding,
    FindingState,
    Heartbeat,
    SequenceGap,
)
from dashboard.store.sequence import apply_sequence_numbers
from sdk.errors import MedgeError
from sdk.fleet_contracts import OTA_EVENT
from sdk.topics import TopicKind

__all__ = ["MAX_DEAD_LETTER_BYTES", "BatchResult", "BatchWriter", "StoreUnavailable"]

logger = logging.getLogger(__name__)

MAX_DEAD_LETTER_BYTES = 256 * 1024
"""Payload bytes kept per dead letter (a hostile payload must not fill the disk)."""

DeviceKey = tuple[str, str]

_ACKNOWLEDGED = frozenset({TopicKind.FINDING, TopicKind.EVENT, TopicKind.CMD_RESULT})
"""Kinds an appliance keeps in its outbox until the dashboard acknowledges them."""


class StoreUnavailable(MedgeError):
    """The database cannot take the batch now (unreachable, locked, disk full); retry later."""


@dataclass
class BatchResult:
    """What one committed batch did.

    Attributes:
        acks: message ids to acknowledge, per ``(site, device)``: every finding,
            event and command result committed (new or duplicate: the appliance
            keeps them in its outbox until acknowledged), and every dead letter
            with an id that came on one of those topics.
        findings_stored: new finding rows.
        duplicates: findings already stored (or repeated within the batch).
        dead_letters: dead letters written, by reason.
    """

    acks: dict[DeviceKey, list[str]] = field(default_factory=dict)
    findings_stored: int = 0
    duplicates: int = 0
    dead_letters: Counter[DeadLetterReason] = field(default_factory=Counter)

    def merge(self, other: BatchResult) -> None:
        for key, ids in other.acks.items():
            self.acks.setdefault(key, []).extend(ids)
        self.findings_stored += other.findings_stored
        self.duplicates += other.duplicates
        self.dead_letters.update(other.dead_letters)


def _utc(value: datetime) -> datetime:
    # The contract's times are UTC; a payload without an offset is read as UTC, not as local time.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


class BatchWriter:
    """Classifies and commits batches of messages.

    Args:
        store: the open store.
        heartbeat_history: heartbeats kept per device.
    """

    def __init__(self, store: Store, *, heartbeat_history: int = 1440) -> None:
        self.store = store
        self.heartbeat_history = heartbeat_history
        self._insert = postgresql.insert if store.dialect == "postgresql" else sqlite.insert

    def write(self, batch: Sequence[InboundMessage]) -> BatchResult:
        """Commit ``batch`` in one transaction (one message at a time if the database refuses a row).

        Raises:
            StoreUnavailable: the database cannot be written now; nothing was committed.
        """
        classified = [classify(inbound) for inbound in batch]
        return self._commit(classified)

    def _commit(self, classified: list[Accepted | Rejected]) -> BatchResult:
        try:
            with self.store.write() as session:
                return self._write(session, classified)
        except DBAPIError as exc:
            # Locked, unreachable, disk full, I/O error, a broken connection: not this batch's fault.
            if exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError):
                raise StoreUnavailable(f"the store cannot be written: {exc.orig}") from exc
            refused: SQLAlchemyError = exc
        except SQLAlchemyError as exc:
            refused = exc
        if len(classified) > 1:
            logger.warning("the store refused a batch of %d (%s); retrying one by one", len(classified), refused)
            result = BatchResult()
            for one in classified:
                result.merge(self._commit([one]))
            return result
        item = classified[0]
        logger.error("the store refused a message on %s: %s", item.inbound.topic, refused)
        topic = item.topic
        message_id = item.message.id if isinstance(item, Accepted) else item.message_id
        rejected = Rejected(item.inbound, DeadLetterReason.STORE, f"the store refused it: {refused}", topic, message_id)
        try:
            with self.store.write() as session:
                return self._write(session, [rejected])
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"the store cannot take a dead letter: {exc}") from exc

    # One transaction -------------------------------------------------------------------------

    def _write(self, session: Session, classified: list[Accepted | Rejected]) -> BatchResult:
        now = datetime.now(UTC)
        result = BatchResult()
        by_kind: dict[TopicKind, list[Accepted]] = defaultdict(list)
        rejected: list[Rejected] = []
        for item in classified:
            if isinstance(item, Accepted):
                by_kind[item.topic.kind].append(item)
            else:
                rejected.append(item)
        accepted = [item for items in by_kind.values() for item in items]
        devices = self._devices(session, {(item.topic.site, item.topic.device) for item in accepted}, now)

        self._findings(session, by_kind[TopicKind.FINDING], devices, now, result)
        self._events(session, by_kind[TopicKind.EVENT], devices, now, result)
        self._heartbeats(session, by_kind[TopicKind.HEARTBEAT], devices, now)
        self._command_results(session, by_kind[TopicKind.CMD_RESULT], devices, now, result)
        self._statuses(by_kind[TopicKind.STATUS], devices, now)
        for device in devices.values():
            device.last_seen = now
        self._dead_letters(session, rejected, now, result)
        return result

    def _devices(self, session: Session, keys: set[DeviceKey], now: datetime) -> dict[DeviceKey, Device]:
        if not keys:
            return {}
        rows = [
            {
                "site": site,
                "device": device,
                "first_seen": now,
                "last_seen": now,
                "state": DeviceState.UNKNOWN,
                "missing_count": 0,
                "findings_count": 0,
            }
            for site, device in sorted(keys)
        ]
        table: Table = Device.__table__  # type: ignore[assignment]
        session.execute(self._insert(table).on_conflict_do_nothing(index_elements=["site", "device"]), rows)
        found = session.scalars(
            select(Device)
            .where(tuple_(Device.site, Device.device).in_(sorted(keys)))
            .order_by(Device.id)
            .with_for_update()
        )
        return {(device.site, device.device): device for device in found}

    def _findings(
        self,
        session: Session,
        items: list[Accepted],
        devices: dict[DeviceKey, Device],
        now: datetime,
        result: BatchResult,
    ) -> None:
        if not items:
            return
        rows: dict[str, dict[str, Any]] = {}
        seqs: dict[DeviceKey, list[int]] = defaultdict(list)
        for item in items:
            finding = item.message
            assert isinstance(finding, messages.Finding)
            key = (item.topic.site, item.topic.device)
            result.acks.setdefault(key, []).append(finding.id)
            seqs[key].append(finding.seq)
            if finding.id in rows:
                continue
            package = finding.package
            rows[finding.id] = {
                "message_id": finding.id,
                "device_id": devices[key].id,
                "site": finding.site,
                "device": finding.device,
                "seq": finding.seq,
                "package_name": package.name,
                "package_version": package.version,
                "package_precision": package.precision,
                "package_profile": package.profile,
                "package_sha256": package.sha256,
                "study_ref": finding.study_ref,
                "series_ref": finding.series_ref,
                "instance_ref": finding.instance_ref,
                "accession_number": finding.accession_number,
                "patient_id": finding.patient_id,
                "modality": finding.modality,
                "frame": finding.frame,
                "label": finding.label,
                "score": finding.score,
                "scores": dict(finding.scores),
                "threshold": finding.threshold,
                "positive": finding.positive,
                "location": None if finding.location is None else finding.location.model_dump(mode="json"),
                "flags": list(finding.flags),
                "latency_ms": dict(finding.latency_ms),
                "created": _utc(finding.created),
                "received_at": now,
                "state": FindingState.NEW,
                "state_changed_at": None,
            }
        table: Table = Finding.__table__  # type: ignore[assignment]
        statement = (
            self._insert(table).on_conflict_do_nothing(index_elements=["message_id"]).returning(table.c.message_id)
        )
        inserted = set(session.execute(statement, list(rows.values())).scalars())
        result.findings_stored += len(inserted)
        result.duplicates += len(items) - len(inserted)
        per_device = Counter((rows[message_id]["site"], rows[message_id]["device"]) for message_id in inserted)
        for key, count in per_device.items():
            devices[key].findings_count += count
        # Every finding counts for the sequence, duplicates included: a re-send changes nothing,
        # and a finding stored under the same id by another device still fills this device's number.
        # The open gaps of every device in the batch in one query (one round trip, not one per device).
        lows = {devices[key].id: min(numbers) for key, numbers in seqs.items()}
        gaps: dict[int, list[Any]] = defaultdict(list)
        if lows:
            candidates = session.execute(
                select(
                    SequenceGap.id,
                    SequenceGap.device_id,
                    SequenceGap.first_seq,
                    SequenceGap.last_seq,
                    SequenceGap.detected_at,
                )
                .where(SequenceGap.device_id.in_(list(lows)), SequenceGap.last_seq >= min(lows.values()))
                .order_by(SequenceGap.device_id, SequenceGap.first_seq)
            ).all()
            for row in candidates:
                if row.last_seq >= lows[row.device_id]:
                    gaps[row.device_id].append(row)
        for key, numbers in seqs.items():
            self._sequence(session, devices[key], numbers, now, gaps[devices[key].id])

    def _sequence(self, session: Session, device: Device, numbers: list[int], now: datetime, old: list[Any]) -> None:
        """Advance one device's sequence with ``numbers``; ``old``: its gaps that end at or after the lowest."""
        update_ = apply_sequence_numbers([(row.first_seq, row.last_seq) for row in old], device.max_seq, numbers)
        device.max_seq = update_.max_seq
        device.missing_count += update_.missing_delta
        if update_.gaps == [(row.first_seq, row.last_seq) for row in old]:
            return
        if old:
            session.execute(delete(SequenceGap).where(SequenceGap.id.in_([row.id for row in old])))

        def detected(first: int, last: int) -> datetime:
            for row in old:  # a shrunk or split gap keeps the time it was first seen
                if row.first_seq <= first and last <= row.last_seq:
                    return row.detected_at
            return now

        table: Table = SequenceGap.__table__  # type: ignore[assignment]
        if update_.gaps:
            session.execute(
                table.insert(),
                [
                    {"device_id": device.id, "first_seq": first, "last_seq": last, "detected_at": detected(first, last)}
                    for first, last in update_.gaps
                ],
            )

    def _events(
        self,
        session: Session,
        items: list[Accepted],
        devices: dict[DeviceKey, Device],
        now: datetime,
        result: BatchResult,
    ) -> None:
        rows = []
        for item in items:
            event = item.message
            assert isinstance(event, messages.Event)
            result.acks.setdefault((item.topic.site, item.topic.device), []).append(event.id)
            rows.append(
                {
                    "message_id": event.id,
                    "device_id": devices[(item.topic.site, item.topic.device)].id,
                    "site": event.site,
                    "device": event.device,
                    "kind": event.kind,
                    "severity": event.severity,
                    "message": event.message,
                    "detail": event.model_dump(mode="json")["detail"],
                    "created": _utc(event.created),
                    "received_at": now,
                }
            )
        if not rows:
            return
        table: Table = Event.__table__  # type: ignore[assignment]
        statement = (
            self._insert(table).on_conflict_do_nothing(index_elements=["message_id"]).returning(table.c.message_id)
        )
        inserted = set(session.execute(statement, rows).scalars())
        # Over-the-air steps move their rollout in this same transaction (new events only: a re-send changes nothing).
        ota = [
            (row["device_id"], row["message_id"], row["created"], row["detail"])
            for row in rows
            if row["kind"] == OTA_EVENT and row["message_id"] in inserted
        ]
        if ota:
            apply_ota_events(session, ota, now)

    def _heartbeats(
        self, session: Session, items: list[Accepted], devices: dict[DeviceKey, Device], now: datetime
    ) -> None:
        if not items:
            return
        rows = []
        for item in items:
            beat = item.message
            assert isinstance(beat, messages.Heartbeat)
            payload = beat.model_dump(mode="json", by_alias=True)
            device = devices[(item.topic.site, item.topic.device)]
            device.last_heartbeat = payload  # items are in arrival order: the last one wins
            device.last_heartbeat_at = now
            rows.append(
                {
                    "message_id": beat.id,
                    "device_id": device.id,
                    "created": _utc(beat.created),
                    "received_at": now,
                    "uptime_s": beat.uptime_s,
                    "queue_depth": sum(beat.queues.values()),
                    "outbox_depth": beat.outbox_depth,
                    "latency_ms_p50": beat.latency_ms_p50,
                    "latency_ms_p95": beat.latency_ms_p95,
                    "degraded": any(engine.degraded for engine in beat.engines),
                    "alarms": list(beat.alarms),
                    "payload": payload,
                }
            )
        table: Table = Heartbeat.__table__  # type: ignore[assignment]
        session.execute(table.insert(), rows)
        self._prune_heartbeats(session, {devices[(item.topic.site, item.topic.device)].id for item in items})

    def _prune_heartbeats(self, session: Session, device_ids: set[int]) -> None:
        """Keep the newest ``heartbeat_history`` heartbeats of each device: one statement for the whole batch."""
        newer = aliased(Heartbeat)
        oldest_kept = (
            select(newer.id)
            .where(newer.device_id == Heartbeat.device_id)
            .order_by(newer.id.desc())
            .offset(self.heartbeat_history - 1)
            .limit(1)
            .scalar_subquery()
        )
        session.execute(
            delete(Heartbeat).where(Heartbeat.device_id.in_(sorted(device_ids)), Heartbeat.id < oldest_kept)
        )

    def _command_results(
        self,
        session: Session,
        items: list[Accepted],
        devices: dict[DeviceKey, Device],
        now: datetime,
        result: BatchResult,
    ) -> None:
        rows = []
        for item in items:
            answer = item.message
            assert isinstance(answer, messages.CommandResult)
            result.acks.setdefault((item.topic.site, item.topic.device), []).append(answer.id)
            rows.append(
                {
                    "message_id": answer.id,
                    "device_id": devices[(item.topic.site, item.topic.device)].id,
                    "correlation_id": answer.correlation_id,
                    "ok": answer.ok,
                    "result": answer.model_dump(mode="json")["result"],
                    "error": answer.error,
                    "created": _utc(answer.created),
                    "received_at": now,
                }
            )
        if not rows:
            return
        table: Table = CommandResult.__table__  # type: ignore[assignment]
        statement = (
            self._insert(table).on_conflict_do_nothing(index_elements=["message_id"]).returning(table.c.message_id)
        )
        inserted = set(session.execute(statement, rows).scalars())
        answers = [
            (row["device_id"], row["message_id"], row["correlation_id"], row["ok"], row["error"], row["created"])
            for row in rows
            if row["message_id"] in inserted
        ]
        if answers:
            apply_command_results(session, answers, now)

    @staticmethod
    def _statuses(items: list[Accepted], devices: dict[DeviceKey, Device], now: datetime) -> None:
        # In arrival order, not by ``created``: a will message was composed when the device
        # connected, before the "online" it published, yet it is the newer news.
        for item in items:
            status = item.message
            assert isinstance(status, messages.Status)
            device = devices[(item.topic.site, item.topic.device)]
            state = DeviceState(status.state)
            if device.state != state:
                device.state = state
                device.state_changed_at = now
            payload = status.model_dump(mode="json", by_alias=True)
            previous = device.status or {}
            if state == DeviceState.OFFLINE and not status.packages and not status.version:
                # A will message is composed at connect time and names nothing: the fleet page keeps
                # showing what the device last said it runs.
                payload["packages"] = previous.get("packages", [])
                payload["version"] = previous.get("version", "")
            device.status = payload

    def _dead_letters(self, session: Session, items: Iterable[Rejected], now: datetime, result: BatchResult) -> None:
        rows = []
        for item in items:
            payload = item.inbound.payload
            kept = payload[:MAX_DEAD_LETTER_BYTES]
            try:
                text: str | None = kept.decode("utf-8")
            except UnicodeDecodeError:
                text = None
            acked = item.message_id is not None and item.topic is not None and item.topic.kind in _ACKNOWLEDGED
            if acked:
                assert item.topic is not None and item.message_id is not None
                result.acks.setdefault((item.topic.site, item.topic.device), []).append(item.message_id)
            rows.append(
                {
                    "topic": item.inbound.topic,
                    "site": item.topic.site if item.topic else None,
                    "device": item.topic.device if item.topic else None,
                    "reason": item.reason,
                    "detail": item.detail,
                    "message_id": item.message_id,
                    "payload": kept,
                    "payload_text": text,
                    "payload_size": len(payload),
                    "acked": acked,
                    "received_at": now,
                }
            )
            result.dead_letters[item.reason] += 1
            logger.warning("dead letter (%s) on %s: %s", item.reason, item.inbound.topic, item.detail)
        if not rows:
            return
        table: Table = DeadLetter.__table__  # type: ignore[assignment]
        session.execute(table.insert(), rows)
        counts: Table = DeadLetterCount.__table__  # type: ignore[assignment]
        for reason, count in sorted(Counter(row["reason"] for row in rows).items()):
            statement = self._insert(counts).values(reason=reason, count=count, first_at=now, last_at=now)
            added = {"count": counts.c["count"] + statement.excluded["count"], "last_at": statement.excluded.last_at}
            session.execute(statement.on_conflict_do_update(index_elements=["reason"], set_=added))
