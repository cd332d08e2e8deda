"""Checking one MQTT message against its topic: accepted, or a dead letter with the reason.

The topic says who sent a message (the broker's ACLs let a device publish
only under its own ``medge/v1/{site}/{device}/``), so the payload must agree
with it: its site and device equal the topic's (no appliance speaks for
another) and its schema is the family the topic names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import sdk.messages as messages
from dashboard.store.models import DeadLetterReason
from sdk.topics import Topic, TopicKind, parse_topic

__all__ = ["Accepted", "InboundMessage", "Rejected", "classify"]

IngestedMessage = messages.Finding | messages.Event | messages.Heartbeat | messages.Status | messages.CommandResult

_EXPECTED: dict[TopicKind, type[IngestedMessage]] = {
    TopicKind.FINDING: messages.Finding,
    TopicKind.EVENT: messages.Event,
    TopicKind.HEARTBEAT: messages.Heartbeat,
    TopicKind.STATUS: messages.Status,
    TopicKind.CMD_RESULT: messages.CommandResult,
}


@dataclass(frozen=True)
class InboundMessage:
    """One message as it came off the broker."""

    topic: str
    payload: bytes


@dataclass(frozen=True)
class Accepted:
    """A valid message from the device its topic names."""

    inbound: InboundMessage
    topic: Topic
    message: IngestedMessage


@dataclass(frozen=True)
class Rejected:
    """A message for the dead-letter table.

    Attributes:
        topic: the parsed topic, when it parses.
        message_id: the payload's ``id``, when it has a usable one (to acknowledge a bad finding).
    """

    inbound: InboundMessage
    reason: DeadLetterReason
    detail: str
    topic: Topic | None = None
    message_id: str | None = None


def _payload_id(payload: bytes) -> str | None:
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    value = data.get("id") if isinstance(data, dict) else None
    return value if isinstance(value, str) and 0 < len(value) <= 128 else None


def classify(inbound: InboundMessage) -> Accepted | Rejected:
    """Parse the topic and payload of ``inbound`` and check that they agree."""
    try:
        topic = parse_topic(inbound.topic)
    except ValueError as exc:
        return Rejected(inbound, DeadLetterReason.BAD_TOPIC, str(exc))
    expected = _EXPECTED.get(topic.kind)
    if expected is None:
        return Rejected(inbound, DeadLetterReason.BAD_TOPIC, f"the dashboard does not ingest {topic.kind}", topic)
    try:
        message = messages.parse_message(inbound.payload)
    except messages.MessageError as exc:
        message_id = _payload_id(inbound.payload)
        try:
            is_object = isinstance(json.loads(inbound.payload), dict)
        except (UnicodeDecodeError, json.JSONDecodeError):
            is_object = False
        reason = DeadLetterReason.SCHEMA if is_object else DeadLetterReason.MALFORMED
        return Rejected(inbound, reason, str(exc), topic, message_id)
    if not isinstance(message, expected):
        return Rejected(
            inbound,
            DeadLetterReason.WRONG_KIND,
            f"a {message.schema_} message on a {topic.kind} topic",
            topic,
            message.id,
        )
    if (message.site, message.device) != (topic.site, topic.device):
        return Rejected(
            inbound,
            DeadLetterReason.IDENTITY,
            f"payload names {message.site}/{message.device} but was published as {topic.site}/{topic.device}",
            topic,
            message.id,
        )
    return Accepted(inbound, topic, message)
