"""One batch, one transaction (dashboard/ingest/writer.py), without a broker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from dashboard.ingest import BatchWriter, DeadLetterReason, InboundMessage
from dashboard.ingest.writer import MAX_DEAD_LETTER_BYTES
from dashboard.store import DeadLetter, Device, DeviceState, Event, Finding, Heartbeat, Store, create_store
from sdk.messages import Event as EventMessage
from sdk.messages import Heartbeat as HeartbeatMessage
from sdk.messages import Status
from sdk.topics import TopicKind, topic
from tests.dashboard.conftest import make_finding


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with create_store(f"sqlite:///{tmp_path / 'store.sqlite'}") as opened:
        yield opened


def _on(kind: TopicKind, payload: bytes, site: str = "st-marys", device: str = "ct-1") -> InboundMessage:
    return InboundMessage(topic(site, device, kind), payload)


def _count(store: Store, model: type) -> int:
    with store.session() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def _device(store: Store, device: str = "ct-1") -> Device:
    with store.session() as session:
        return session.scalars(select(Device).where(Device.device == device)).one()


def test_a_finding_repeated_in_one_batch_is_one_row(store: Store) -> None:
    finding = make_finding(seq=0)
    result = BatchWriter(store).write([_on(TopicKind.FINDING, finding.to_json())] * 2)
    assert (result.findings_stored, result.duplicates) == (1, 1)
    assert result.acks == {("st-marys", "ct-1"): [finding.id, finding.id]}
    assert _count(store, Finding) == 1
    assert _device(store).findings_count == 1


def test_events_are_stored_once_and_acknowledged_each_time(store: Store) -> None:
    event = EventMessage(site="st-marys", device="ct-1", kind="model-change", message="activated 1.2.0")
    writer = BatchWriter(store)
    writer.write([_on(TopicKind.EVENT, event.to_json())])
    result = writer.write([_on(TopicKind.EVENT, event.to_json())])
    assert result.acks == {("st-marys", "ct-1"): [event.id]}, "the appliance keeps events in its outbox too"
    assert _count(store, Event) == 1


def test_statuses_and_heartbeats_are_not_acknowledged(store: Store) -> None:
    status = Status(site="st-marys", device="ct-1", state="online")
    beat = HeartbeatMessage(site="st-marys", device="ct-1", uptime_s=1.0)
    result = BatchWriter(store).write(
        [_on(TopicKind.STATUS, status.to_json()), _on(TopicKind.HEARTBEAT, beat.to_json())]
    )
    assert result.acks == {}


def test_statuses_apply_in_arrival_order(store: Store) -> None:
    online = Status(site="st-marys", device="ct-1", state="online")
    # The will message was composed before the birth message, yet arrives after it.
    offline = Status(site="st-marys", device="ct-1", state="offline", created=online.created.replace(year=2020))
    BatchWriter(store).write([_on(TopicKind.STATUS, online.to_json()), _on(TopicKind.STATUS, offline.to_json())])
    device = _device(store)
    assert device.state == DeviceState.OFFLINE
    assert device.state_changed_at is not None


def test_heartbeats_keep_a_bounded_history_and_the_latest(store: Store) -> None:
    writer = BatchWriter(store, heartbeat_history=5)
    for batch in range(4):
        beats = [HeartbeatMessage(site="st-marys", device="ct-1", uptime_s=batch * 10 + i) for i in range(3)]
        writer.write([_on(TopicKind.HEARTBEAT, beat.to_json()) for beat in beats])
    with store.session() as session:
        kept = session.scalars(select(Heartbeat.uptime_s).order_by(Heartbeat.id)).all()
    assert kept == [21.0, 22.0, 30.0, 31.0, 32.0]
    assert _device(store).last_heartbeat is not None
    assert _device(store).last_heartbeat["uptime_s"] == 32.0  # type: ignore[index]


def test_a_row_the_database_refuses_becomes_a_dead_letter_and_the_rest_is_stored(store: Store) -> None:
    with store.write() as session:
        session.execute(
            text(
                "CREATE TRIGGER refuse BEFORE INSERT ON findings WHEN NEW.label = 'refuse-me'"
                " BEGIN SELECT RAISE(ABORT, 'refused by a test trigger'); END"
            )
        )
    findings = [make_finding(seq=0), make_finding(seq=1, label="refuse-me"), make_finding(seq=2)]
    result = BatchWriter(store).write([_on(TopicKind.FINDING, finding.to_json()) for finding in findings])
    assert result.findings_stored == 2
    assert result.dead_letters == {DeadLetterReason.STORE: 1}
    assert sorted(result.acks[("st-marys", "ct-1")]) == sorted(finding.id for finding in findings)
    with store.session() as session:
        letter = session.scalars(select(DeadLetter)).one()
    assert letter.reason == DeadLetterReason.STORE
    assert "refused by a test trigger" in letter.detail
    assert letter.message_id == findings[1].id and letter.acked
    assert store.dead_letter_counts() == {DeadLetterReason.STORE: 1}


def test_dead_letters_keep_a_capped_payload_and_count_by_reason(store: Store) -> None:
    huge = b"\xff" * (MAX_DEAD_LETTER_BYTES + 10)
    writer = BatchWriter(store)
    writer.write([_on(TopicKind.FINDING, huge), _on(TopicKind.EVENT, b"[]")])
    writer.write([_on(TopicKind.FINDING, b"nope"), InboundMessage("medge/v1/a/b/ack", b"{}")])
    with store.session() as session:
        letter = session.scalars(select(DeadLetter).where(DeadLetter.payload_size > 1000)).one()
    assert len(letter.payload) == MAX_DEAD_LETTER_BYTES
    assert letter.payload_size == len(huge)
    assert letter.payload_text is None, "not UTF-8"
    assert store.dead_letter_counts() == {DeadLetterReason.MALFORMED: 3, DeadLetterReason.BAD_TOPIC: 1}


def test_a_time_without_offset_is_read_as_utc(store: Store) -> None:
    payload = json.loads(make_finding(seq=0).to_json())
    payload["created"] = "2026-03-01T12:00:00"
    BatchWriter(store).write([_on(TopicKind.FINDING, json.dumps(payload).encode())])
    with store.session() as session:
        created = session.scalars(select(Finding.created)).one()
    assert created.tzinfo is not None and created.utcoffset() == UTC.utcoffset(None)
    assert (created.hour, created.minute) == (12, 0)


def test_an_id_stored_for_another_device_still_counts_for_this_ones_sequence(store: Store) -> None:
    # finding_id() includes the device, so ids only collide if a device reuses another's (defensive).
    writer = BatchWriter(store)
    shared = make_finding(device="ct-1", seq=0)
    writer.write([_on(TopicKind.FINDING, shared.to_json())])
    other = make_finding(device="ct-2", seq=0).model_copy(update={"id": shared.id})
    result = writer.write([_on(TopicKind.FINDING, other.to_json(), device="ct-2")])
    assert result.duplicates == 1
    assert result.acks == {("st-marys", "ct-2"): [shared.id]}
    assert _device(store, "ct-2").max_seq == 0
    assert store.sequence_gaps("st-marys", "ct-2") == []
