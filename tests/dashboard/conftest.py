"""Fixtures the dashboard tests share: a real Mosquitto, a dashboard config, a paho client playing an appliance."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from dashboard.settings import DashboardConfig
from sdk.messages import Ack, Finding, PackageRef, Status, parse_message
from sdk.testing.mosquitto import MosquittoBroker
from sdk.topics import TopicKind, topic

PACKAGE = PackageRef(name="chest-ct", version="1.2.0", precision="int8", profile="intel-xeon", sha256="a" * 64)


def make_finding(site: str = "st-marys", device: str = "ct-1", seq: int = 0, **changes: object) -> Finding:
    """A valid finding (fields overridable)."""
    fields: dict[str, object] = {
        "site": site,
        "device": device,
        "seq": seq,
        "package": PACKAGE,
        "study_ref": "study",
        "series_ref": "series",
        "instance_ref": f"instance-{seq}",
        "modality": "CT",
        "label": "nodule",
        "score": 0.91,
        "scores": {"nodule": 0.91, "normal": 0.09},
        "threshold": 0.5,
        "positive": True,
        "latency_ms": {"decode": 3.0, "infer": 12.5},
    }
    fields.update(changes)
    return Finding.model_validate(fields)


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is truthy; ``False`` on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class Appliance:
    """A plain paho client publishing as one device and collecting the Acks sent to it."""

    def __init__(self, port: int, site: str = "st-marys", device: str = "ct-1", *, will: bool = True) -> None:
        self.site = site
        self.device = device
        self.acks: list[tuple[float, Ack]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{site}.{device}", protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(100)  # paho scans its whole queue per PUBACK above this
        if will:
            offline = Status(site=site, device=device, state="offline")
            self.client.will_set(self.topic(TopicKind.STATUS), offline.to_json(), qos=1, retain=True)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_args: self._subscribed.set()
        self.client.on_connect = lambda client, *_args: client.subscribe(self.topic(TopicKind.ACK), qos=1)
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        assert self._subscribed.wait(10), "the appliance could not subscribe to its ack topic"

    def topic(self, kind: TopicKind) -> str:
        return topic(self.site, self.device, kind)

    def _on_message(self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        ack = parse_message(message.payload)
        assert isinstance(ack, Ack)
        with self._lock:
            self.acks.append((time.monotonic(), ack))

    def acked_ids(self) -> list[str]:
        """Every id acknowledged so far, in order, repeats included."""
        with self._lock:
            return [message_id for _, ack in self.acks for message_id in ack.ids]

    def publish(self, kind: TopicKind, payload: bytes, *, retain: bool = False) -> None:
        """Publish QoS 1 on this device's topic of ``kind`` and wait for the broker's PUBACK."""
        self.publish_to(self.topic(kind), payload, retain=retain)

    def publish_to(self, name: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish QoS 1 on any topic (e.g. one naming another device) and wait for the PUBACK."""
        self.client.publish(name, payload, qos=1, retain=retain).wait_for_publish(10)

    def publish_all(self, kind: TopicKind, payloads: list[bytes]) -> None:
        """Publish QoS 1 without waiting for each PUBACK, then wait for all of them."""
        infos = [self.client.publish(self.topic(kind), payload, qos=1) for payload in payloads]
        for info in infos:
            info.wait_for_publish(60)

    def drop_with_will(self) -> None:
        """End the connection so the broker publishes the will, as when the network is cut."""
        self.client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
        self.client.loop_stop()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(tmp_path / "broker") as running:
        yield running


@pytest.fixture
def dashboard_config(tmp_path: Path, broker: MosquittoBroker) -> Callable[..., DashboardConfig]:
    """Builds a demo-mode config for the test broker and a SQLite store in tmp_path."""

    def build(client_id: str = "dashboard-1", **mqtt: object) -> DashboardConfig:
        settings: dict[str, object] = {
            "host": "127.0.0.1",
            "port": broker.port,
            "client_id": client_id,
            "batch_window_ms": 5,
        }
        settings.update(mqtt)
        return DashboardConfig(
            data_dir=tmp_path / "dashboard",
            demo=True,
            mqtt=settings,  # type: ignore[arg-type]
            store={"url": f"sqlite:///{tmp_path / 'dashboard' / 'store.sqlite'}"},  # type: ignore[arg-type]
        )

    return build


@pytest.fixture
def appliance(broker: MosquittoBroker) -> Iterator[Appliance]:
    device = Appliance(broker.port)
    yield device
    device.close()
