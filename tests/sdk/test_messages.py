"""Message schemas (sdk/messages.py) and topics (sdk/topics.py)."""

from __future__ import annotations

import json

import pytest

from sdk.errors import ConfigError
from sdk.messages import (
    Ack,
    Event,
    Finding,
    Heartbeat,
    MessageError,
    PackageRef,
    Status,
    finding_id,
    parse_message,
    pseudonym,
)
from sdk.topics import TopicKind, device_filter, parse_topic, topic

PKG = PackageRef(name="m", version="1.0.0", precision="int8", profile="intel-xeon", sha256="a" * 64)


def make_finding(**changes: object) -> Finding:
    fields: dict[str, object] = {
        "site": "st-marys",
        "device": "ct-1",
        "seq": 7,
        "package": PKG,
        "study_ref": "s",
        "series_ref": "r",
        "instance_ref": "i",
        "modality": "CT",
        "label": "nodule",
        "score": 0.9,
        "scores": {"nodule": 0.9},
        "threshold": 0.5,
        "positive": True,
    }
    fields.update(changes)
    return Finding.model_validate(fields)


@pytest.mark.parametrize(
    "message",
    [
        make_finding(),
        Event(site="a", device="b", kind="quarantine", severity="warning", message="bad file"),
        Heartbeat(site="a", device="b", uptime_s=3.5, queues={"received": 2}),
        Status(site="a", device="b", state="offline"),
        Ack(site="a", device="b", ids=["x", "y"]),
    ],
)
def test_round_trip(message) -> None:
    wire = message.to_json()
    assert json.loads(wire)["schema"].startswith("medge.")
    assert parse_message(wire) == message


def test_finding_never_carries_patient_fields() -> None:
    with pytest.raises(Exception, match="PatientName"):
        make_finding(PatientName="Doe^John")


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"schema": "medge.unknown/9", "site": "a"}', "does not match"),
        (b'{"schema": "medge.status/1", "site": "a", "device": "b", "state": "maybe"}', "state"),
    ],
)
def test_bad_messages(payload: bytes, expected: str) -> None:
    with pytest.raises(MessageError, match=expected):
        parse_message(payload)


def test_finding_score_bounds() -> None:
    with pytest.raises(MessageError) as caught:
        parse_message(make_finding().to_json().replace(b'"score":0.9', b'"score":1.9'))
    assert caught.value.field == "score"


def test_finding_id_is_stable_and_distinct() -> None:
    a = finding_id("1.2.3", "f" * 64)
    assert a == finding_id("1.2.3", "f" * 64)
    assert a != finding_id("1.2.3", "e" * 64)
    assert a != finding_id("1.2.3", "f" * 64, frame=1)
    # The same study sent to two appliances: two findings.
    assert finding_id("1.2.3", "f" * 64, origin="s/ct-1") != finding_id("1.2.3", "f" * 64, origin="s/ct-2")


def test_pseudonym_is_keyed() -> None:
    assert pseudonym(b"k1", "1.2.3") == pseudonym(b"k1", "1.2.3")
    assert pseudonym(b"k1", "1.2.3") != pseudonym(b"k2", "1.2.3")
    assert "1.2.3" not in pseudonym(b"k1", "1.2.3")


def test_topics() -> None:
    name = topic("st-marys", "ct-1", TopicKind.FINDING)
    assert name == "medge/v1/st-marys/ct-1/finding"
    parsed = parse_topic(name)
    assert (parsed.site, parsed.device, parsed.kind) == ("st-marys", "ct-1", TopicKind.FINDING)
    assert parse_topic("medge/v1/a/b/cmd/result").kind is TopicKind.CMD_RESULT
    assert device_filter() == "medge/v1/+/+/#"
    assert device_filter("a", kind="status") == "medge/v1/a/+/status"


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "a b", "x" * 65, "-lead"])
def test_topic_segments_refused(bad: str) -> None:
    with pytest.raises(ConfigError):
        topic(bad, "dev", "finding")


@pytest.mark.parametrize("bad", ["other/v1/a/b/finding", "medge/v1/a/b", "medge/v1/a/b/nope", "medge/v1/+/b/finding"])
def test_parse_topic_refuses(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_topic(bad)
