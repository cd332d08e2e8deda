"""The broker ACL matrix: each identity x each device's topics x each family x publish/subscribe, on a real Mosquitto.

One broker runs the shipped configuration (``firmware_integration/broker``,
password auth over TLS) for the whole module, with two devices of site A,
one of site B (the same device name as one at site A, so that ``%u``
spanning two topic levels is exercised) and a dashboard.

What the design requires (docs/broker.md, DESIGN.md "Finding message and
topics"): a device publishes its findings, events, heartbeats, status and
command results on its own topics only, and receives only its own commands
(``cmd/#``, so command results too) and acknowledgements; the dashboard
receives everything and publishes only commands and acknowledgements, to
any device.

How denial is measured, the MQTT 5 way: a publish is QoS 1 and its PUBACK
reason code says (0x87 Not authorized; Mosquitto then closes the
connection, so the next publish reconnects). A subscription's SUBACK is
recorded, but Mosquitto 2.0 grants subscriptions and checks its read ACL on
every delivery, so a read is allowed exactly when a message published to the
topic arrives; sentinels published last prove that everything allowed has
arrived. Run with ``-o log_cli=true --log-cli-level=INFO`` to see the table
(docs/reliability.md quotes it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from firmware_integration.broker import AuthMode, TlsMaterial, add_dashboard, add_device
from sdk.testing.mosquitto import MosquittoBroker
from sdk.topics import TopicKind, topic
from tests.firmware_integration.test_broker import (
    ACCEPTED,
    Identity,
    Peer,
    Reason,
    make_broker_folder,
    make_test_pki,
    peer_pool,
    start_broker,
)

logger = logging.getLogger(__name__)

A1, A2, B1 = ("site-a", "scanner-1"), ("site-a", "scanner-2"), ("site-b", "scanner-1")
DEVICES = (A1, A2, B1)
DASHBOARD = "dashboard"
IDENTITIES: tuple[object, ...] = (*DEVICES, DASHBOARD)
DEVICE_WRITES = {TopicKind.FINDING, TopicKind.EVENT, TopicKind.HEARTBEAT, TopicKind.STATUS, TopicKind.CMD_RESULT}
DEVICE_READS = {TopicKind.CMD, TopicKind.CMD_RESULT, TopicKind.ACK}
DASHBOARD_WRITES = {TopicKind.CMD, TopicKind.ACK}

Cell = tuple[str, str, TopicKind]  # (identity, target device, family)


def _name(who: object) -> str:
    return who if isinstance(who, str) else "/".join(who)  # type: ignore[arg-type]


def may_publish(who: object, device: tuple[str, str], kind: TopicKind) -> bool:
    """The design's rule for publishing."""
    return (who == device and kind in DEVICE_WRITES) or (who == DASHBOARD and kind in DASHBOARD_WRITES)


def may_read(who: object, device: tuple[str, str], kind: TopicKind) -> bool:
    """The design's rule for receiving."""
    return who == DASHBOARD or (who == device and kind in DEVICE_READS)


@dataclass(frozen=True)
class Broker:
    port: int
    ca: Path
    identities: dict[object, Identity]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    base = tmp_path_factory.mktemp("acl-matrix")
    pki: TlsMaterial = make_test_pki(base / "pki")
    folder = make_broker_folder(base / "broker", pki, AuthMode.PASSWORD)
    identities: dict[object, Identity] = {}
    for device in DEVICES:
        identities[device] = Identity.of(add_device(folder, *device), base / f"bundle-{'-'.join(device)}")
    identities[DASHBOARD] = Identity.of(add_dashboard(folder), base / "bundle-dashboard")
    running: MosquittoBroker = start_broker(folder, base / "run")
    try:
        yield Broker(running.port, pki.ca_cert, identities)
    finally:
        running.stop()


@pytest.fixture
def peers() -> Iterator[Callable[..., Peer]]:
    with peer_pool() as make:
        yield make


def _connect(make: Callable[..., Peer], broker: Broker, who: object) -> Peer:
    peer = make(broker.port, broker.identities[who], ca=broker.ca)
    assert peer.connect() == Reason.SUCCESS, _name(who)
    return peer


def publish_matrix(broker: Broker, make: Callable[..., Peer]) -> dict[Cell, int | None]:
    """The PUBACK reason code of each identity's QoS 1 publish to each device's topic of each family."""
    codes: dict[Cell, int | None] = {}
    for who in IDENTITIES:
        peer = _connect(make, broker, who)
        for device in DEVICES:
            for kind in TopicKind:
                if peer.disconnected:  # Mosquitto closes the connection after a denied publish
                    peer = _connect(make, broker, who)
                codes[(_name(who), _name(device), kind)] = peer.publish(topic(*device, kind), b"publish-matrix")
        peer.close()
    return codes


def read_matrix(broker: Broker, make: Callable[..., Peer]) -> tuple[dict[Cell, bool], dict[Cell, list[int]]]:
    """Whether each identity, subscribed to each device's topic of each family, receives what is published there."""
    readers = {who: _connect(make, broker, who) for who in IDENTITIES}
    subacks: dict[Cell, list[int]] = {}
    for who, peer in readers.items():
        for device in DEVICES:
            for kind in TopicKind:
                subacks[(_name(who), _name(device), kind)] = peer.subscribe(topic(*device, kind))
    writers = readers  # the broker takes an identity's username as its client id: one connection each
    for device in DEVICES:
        for kind in TopicKind:
            writer = writers[DASHBOARD if kind in DASHBOARD_WRITES else device]
            assert writer.publish(topic(*device, kind), b"read-matrix") in ACCEPTED, (device, kind)
    # Last, a sentinel each reader may receive: its own ack (devices), every device's ack (the dashboard).
    for device in DEVICES:
        assert writers[DASHBOARD].publish(topic(*device, TopicKind.ACK), b"sentinel") in ACCEPTED
    received: dict[Cell, bool] = {}
    for who, peer in readers.items():
        expected_sentinels = len(DEVICES) if who == DASHBOARD else 1
        peer.until(lambda p=peer, n=expected_sentinels: sum(m == b"sentinel" for _, m in p.messages) >= n)
        arrived = {name for name, payload in peer.messages if payload == b"read-matrix"}
        for device in DEVICES:
            for kind in TopicKind:
                received[(_name(who), _name(device), kind)] = topic(*device, kind) in arrived
    return received, subacks


def matrix_table(published: dict[Cell, bool], read: dict[Cell, bool]) -> str:
    """A Markdown table: one row per identity and target device, one column per family, ``P``/``S`` when allowed."""
    kinds = list(TopicKind)
    lines = [
        "| identity | target device | " + " | ".join(kind.value for kind in kinds) + " |",
        "|---|---|" + "---|" * len(kinds),
    ]
    for who in IDENTITIES:
        for device in DEVICES:
            cells = []
            for kind in kinds:
                key = (_name(who), _name(device), kind)
                cell = ("P" if published[key] else "") + ("S" if read[key] else "")
                cells.append(cell or "-")
            own = " (own)" if who == device else ""
            lines.append(f"| {_name(who)} | {_name(device)}{own} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def test_the_acl_matrix_is_what_the_design_requires(broker: Broker, peers: Callable[..., Peer]) -> None:
    codes = publish_matrix(broker, peers)
    received, subacks = read_matrix(broker, peers)
    published = {cell: code in ACCEPTED for cell, code in codes.items()}
    cells = [(_name(who), _name(device), kind) for who in IDENTITIES for device in DEVICES for kind in TopicKind]
    assert len(cells) == len(IDENTITIES) * len(DEVICES) * len(TopicKind) == len(codes) == len(received)

    want_publish = {
        (_name(who), _name(device), kind): may_publish(who, device, kind)
        for who in IDENTITIES
        for device in DEVICES
        for kind in TopicKind
    }
    want_read = {
        (_name(who), _name(device), kind): may_read(who, device, kind)
        for who in IDENTITIES
        for device in DEVICES
        for kind in TopicKind
    }
    table = matrix_table(published, received)
    logger.info("ACL matrix (%d cells x publish/subscribe; P = may publish, S = receives):\n%s", len(cells), table)
    wrong_publish = sorted(cell for cell in cells if published[cell] != want_publish[cell])
    wrong_read = sorted(cell for cell in cells if received[cell] != want_read[cell])
    assert not wrong_publish, wrong_publish
    assert not wrong_read, wrong_read
    # A denied publish is refused the MQTT 5 way, never silently dropped with a success code.
    assert {codes[cell] for cell in cells if not want_publish[cell]} == {Reason.NOT_AUTHORIZED}
    # Every subscription was answered; a refusal at SUBACK (a future Mosquitto) must match a denied read.
    for cell, reasons in subacks.items():
        assert len(reasons) == 1
        assert reasons[0] < 0x80 or not want_read[cell], cell
    # Both outcomes occur in every column, so the matrix can fail either way.
    assert any(want_publish.values()) and not all(want_publish.values())
    assert any(want_read.values()) and not all(want_read.values())
