"""The ingest writer's batch-wide statements on SQLite and PostgreSQL: heartbeat pruning and sequence gaps."""

from __future__ import annotations

from sqlalchemy import select

from dashboard.ingest import BatchWriter, InboundMessage
from dashboard.store import Device, Heartbeat, SequenceGap, Store
from sdk.messages import Heartbeat as HeartbeatMessage
from sdk.topics import TopicKind, topic
from tests.dashboard.conftest import make_finding


def _on(kind: TopicKind, payload: bytes, device: str) -> InboundMessage:
    return InboundMessage(topic=topic("st-marys", device, kind), payload=payload)


def test_each_device_keeps_its_own_heartbeat_history_pruned_in_one_statement(store: Store) -> None:
    writer = BatchWriter(store, heartbeat_history=3)
    for batch in range(3):
        beats = [
            _on(TopicKind.HEARTBEAT, HeartbeatMessage(site="st-marys", device=d, uptime_s=batch * 10 + i).to_json(), d)
            for d in ("ct-1", "ct-2")
            for i in range(2 if d == "ct-1" else 1)
        ]
        writer.write(beats)
    with store.session() as session:
        kept = session.execute(
            select(Device.device, Heartbeat.uptime_s).join(Device).order_by(Device.device, Heartbeat.id)
        ).all()
    assert [(d, u) for d, u in kept] == [
        ("ct-1", 11.0),
        ("ct-1", 20.0),
        ("ct-1", 21.0),
        ("ct-2", 0.0),
        ("ct-2", 10.0),
        ("ct-2", 20.0),
    ]


def test_sequence_gaps_of_several_devices_in_one_batch(store: Store) -> None:
    writer = BatchWriter(store)
    writer.write(
        [_on(TopicKind.FINDING, make_finding(device=d, seq=s).to_json(), d) for d, s in (("a", 0), ("a", 3), ("b", 5))]
    )
    writer.write(
        [_on(TopicKind.FINDING, make_finding(device=d, seq=s).to_json(), d) for d, s in (("a", 1), ("b", 0), ("b", 6))]
    )
    with store.session() as session:
        gaps = session.execute(
            select(Device.device, SequenceGap.first_seq, SequenceGap.last_seq)
            .join(Device, Device.id == SequenceGap.device_id)
            .order_by(Device.device, SequenceGap.first_seq)
        ).all()
        missing = dict(session.execute(select(Device.device, Device.missing_count)).all())
    assert [tuple(g) for g in gaps] == [("a", 2, 2), ("b", 1, 4)]
    assert missing == {"a": 1, "b": 4}
