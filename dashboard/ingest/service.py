"""The MQTT ingest: from the broker into the store, acknowledged only after commit.

Two threads: paho's network loop queues every message as it arrives, and a
writer thread collects them for a short window (``mqtt.batch_window_ms``, at
most ``mqtt.batch_max``), commits them in one transaction, and only then

1. publishes one :class:`sdk.messages.Ack` per device on
   ``medge/v1/{site}/{device}/ack`` naming the findings, events and command
   results committed (the end-to-end acknowledgement that lets them leave the
   appliance's outbox; the Ack carries the addressed device's site and device,
   which the appliance checks), and
2. sends the MQTT PUBACKs (paho's ``manual_ack``), so the broker keeps its copy
   of every message until the store has it: a dashboard killed mid-batch gets
   the uncommitted messages again from its persistent session.

Several dashboard processes split the load through a shared subscription
(``$share/{group}/...``) to findings, events, heartbeats and command results.
Statuses are subscribed without sharing: a broker following MQTT 5 to the
letter sends retained messages to no shared subscription, and every process
must learn the retained online/offline of every device when it starts.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from sqlalchemy import select

from dashboard.errors import Unavailable
from dashboard.ingest.classify import InboundMessage
from dashboard.ingest.writer import BatchResult, BatchWriter, StoreUnavailable
from dashboard.settings import DashboardConfig
from dashboard.store.engine import Store, create_store
from dashboard.store.models import DeadLetterReason, Device
from sdk.messages import Ack, Command
from sdk.tcp_nodelay import nodelay_on_socket_open
from sdk.topics import ROOT, TopicKind, device_filter, topic

__all__ = ["IngestService", "IngestStats"]

logger = logging.getLogger(__name__)

_SHARED_KINDS = (TopicKind.FINDING, TopicKind.EVENT, TopicKind.HEARTBEAT, TopicKind.CMD_RESULT)
_ACK_IDS_PER_MESSAGE = 500
_RETRY_MAX_S = 10.0


@dataclass(frozen=True)
class IngestStats:
    """Counters since :meth:`IngestService.start` (this process only).

    Attributes:
        connected: connected to the broker right now.
        received: messages taken off the broker.
        committed: messages committed (stored, duplicate or dead-lettered).
        findings_stored: new finding rows.
        duplicates: findings already stored (acknowledged again).
        dead_letters: messages dead-lettered; by reason in ``dead_letters_by_reason``.
        acks_published: Ack messages sent to devices.
        batches: transactions committed.
        pending: received but not yet committed.
        lag_ms_last: receipt → commit of the oldest message of the last batch.
        lag_ms_max: the largest such lag so far.
        store_retries: batches retried because the store could not be written.
    """

    connected: bool
    received: int
    committed: int
    findings_stored: int
    duplicates: int
    dead_letters: int
    dead_letters_by_reason: dict[str, int]
    acks_published: int
    batches: int
    pending: int
    lag_ms_last: float
    lag_ms_max: float
    store_retries: int


@dataclass(frozen=True)
class _Received:
    inbound: InboundMessage
    mid: int
    qos: int
    connection: int  # which connection it came on: a PUBACK is only meaningful on that one
    at: float  # time.monotonic() at receipt


class IngestService:
    """Consumes appliance messages from MQTT into the store.

    Args:
        config: the dashboard config (``mqtt`` and ``store`` sections).
        store: an open store to share (e.g. with the web app); default: opened
            from ``config`` on :meth:`start` and closed on :meth:`stop`.

    Raises:
        ConfigError: (from :meth:`start`) a password file or TLS file cannot be read.
        StoreError: (from :meth:`start`) the store cannot be opened or migrated.
    """

    def __init__(self, config: DashboardConfig, store: Store | None = None) -> None:
        self.config = config
        self._store = store
        self._owns_store = store is None
        self._queue: queue.SimpleQueue[_Received] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._accepting = False
        self._stopping = threading.Event()
        self._abort = threading.Event()
        self._subscribed = threading.Event()
        self._connected = False
        self._connection = 0
        self._client: mqtt.Client | None = None
        self._writer_thread: threading.Thread | None = None
        self._last_ack: mqtt.MQTTMessageInfo | None = None
        self._received = 0
        self._committed = 0
        self._findings_stored = 0
        self._duplicates = 0
        self._dead_letters: Counter[DeadLetterReason] = Counter()
        self._acks_published = 0
        self._batches = 0
        self._lag_last = 0.0
        self._lag_max = 0.0
        self._store_retries = 0

    @property
    def store(self) -> Store:
        """The store this service writes to (open after :meth:`start`)."""
        if self._store is None:
            raise RuntimeError("the ingest service has not been started")
        return self._store

    # Life cycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the store, connect to the broker (in the background, reconnecting) and start consuming."""
        if self._client is not None:
            raise RuntimeError("the ingest service is already running")
        client = self._make_client()
        if self._store is None:
            self._store = create_store(self.config.store_url)
        writer = BatchWriter(self._store, heartbeat_history=self.config.store.heartbeat_history)
        self._client = client
        self._stopping.clear()
        self._abort.clear()
        self._accepting = True
        self._writer_thread = threading.Thread(target=self._run_writer, args=(writer,), name="medge-ingest-writer")
        self._writer_thread.start()
        mqtt_config = self.config.mqtt
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = mqtt_config.session_expiry_s
        properties.ReceiveMaximum = mqtt_config.receive_maximum
        client.connect_async(
            mqtt_config.host,
            mqtt_config.port,
            keepalive=mqtt_config.keepalive_s,
            clean_start=False,
            properties=properties,
        )
        client.loop_start()
        logger.info(
            "ingest started: %s:%d as %s in share group %s",
            mqtt_config.host,
            mqtt_config.port,
            mqtt_config.client_id,
            mqtt_config.share_group,
        )

    def wait_ready(self, timeout: float = 10.0) -> bool:
        """Wait until connected and subscribed; ``False`` if that did not happen within ``timeout`` s."""
        return self._subscribed.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Commit and acknowledge what was received, then disconnect (the broker keeps the session).

        Messages still arriving are left unacknowledged, so the broker
        delivers them again when this client id reconnects. If the store
        cannot be written within ``timeout`` s, the batch is abandoned
        unacknowledged (the same applies).
        """
        client = self._client
        if client is None:
            return
        self._accepting = False
        self._stopping.set()
        if self._writer_thread is not None:
            self._writer_thread.join(timeout)
            if self._writer_thread.is_alive():
                self._abort.set()
                self._writer_thread.join()
            self._writer_thread = None
        if self._last_ack is not None and self._connected:
            try:
                self._last_ack.wait_for_publish(timeout=2.0)
            except (RuntimeError, ValueError) as exc:  # not connected any more / queue full
                logger.warning("last acks may not have left: %s", exc)
        client.disconnect()
        client.loop_stop()
        self._client = None
        self._connected = False
        self._subscribed.clear()
        if self._owns_store and self._store is not None:
            self._store.close()
            self._store = None
        logger.info("ingest stopped")

    def __enter__(self) -> IngestService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def send_command(self, command: Command) -> None:
        """Publish ``command`` on its device's ``cmd`` topic (QoS 1).

        While the broker is away paho keeps the message and sends it on
        reconnect; a device that is offline gets it from its persistent session.

        Raises:
            Unavailable: the ingest is not running.
        """
        client = self._client
        if client is None:
            raise Unavailable("the MQTT ingest is not running: commands cannot be sent")
        info = client.publish(topic(command.site, command.device, TopicKind.CMD), command.to_json(), qos=1)
        logger.info(
            "sent %s command %s to %s/%s (mid %s)", command.command, command.id, command.site, command.device, info.mid
        )

    def stats(self) -> IngestStats:
        """A snapshot of the counters."""
        with self._lock:
            pending = self._received - self._committed
            return IngestStats(
                connected=self._connected,
                received=self._received,
                committed=self._committed,
                findings_stored=self._findings_stored,
                duplicates=self._duplicates,
                dead_letters=sum(self._dead_letters.values()),
                dead_letters_by_reason={str(reason): count for reason, count in self._dead_letters.items()},
                acks_published=self._acks_published,
                batches=self._batches,
                pending=pending,
                lag_ms_last=self._lag_last,
                lag_ms_max=self._lag_max,
                store_retries=self._store_retries,
            )

    # MQTT ----------------------------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        config = self.config.mqtt
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        context = config.ssl_context()
        if context is not None:
            client.tls_set_context(context)
        if config.username is not None:
            client.username_pw_set(config.username, config.password())
        client.reconnect_delay_set(1, config.reconnect_max_s)
        client.max_inflight_messages_set(1000)  # our Acks: one per device per batch
        client.on_socket_open = nodelay_on_socket_open
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            logger.error("broker refused the connection: %s", reason)
            return
        with self._lock:
            self._connection += 1
            self._connected = True
        if not flags.session_present:
            logger.info("new broker session (nothing was queued for this client id)")
        group = self.config.mqtt.share_group
        subscriptions = [
            (f"$share/{group}/{device_filter(kind=kind)}", SubscribeOptions(qos=1)) for kind in _SHARED_KINDS
        ]
        subscriptions.append((device_filter(kind=TopicKind.STATUS), SubscribeOptions(qos=1)))
        client.subscribe(subscriptions)

    def _on_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _mid: int,
        reasons: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        refused = [str(reason) for reason in reasons if reason.is_failure]
        if refused:
            logger.error("broker refused subscriptions under %s: %s", ROOT, ", ".join(refused))
            return
        self._subscribed.set()
        self._ask_devices_to_resend(_client)

    def _ask_devices_to_resend(self, client: mqtt.Client) -> None:
        """Tell every known device "the dashboard is here": it re-sends what is unacknowledged.

        Whatever a device published while no dashboard process was subscribed
        (a broker restart races the reconnects) never reached a shared
        subscription; without this it would wait for the device's resend timer.
        """
        try:
            with self.store.session() as session:
                devices = session.execute(select(Device.site, Device.device)).all()
        except Exception:  # the store is retried by the batch loop; a missed resend falls back to the timer
            logger.exception("could not list devices to ask for a re-send")
            return
        for site, device in devices:
            command = Command(site=site, device=device, command="resend")
            client.publish(topic(site, device, TopicKind.CMD), command.to_json(), qos=1)
        if devices:
            logger.info("asked %d device(s) to re-send what is unacknowledged", len(devices))

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        with self._lock:
            self._connected = False
        self._subscribed.clear()
        if not self._stopping.is_set():
            logger.warning("disconnected from the broker (%s); reconnecting", reason)

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        if not self._accepting:
            return  # left unacknowledged: the broker delivers it again to this session
        try:
            name = message.topic
        except UnicodeDecodeError:
            name = repr(message._topic)  # the broker should refuse these; keep it as evidence
        with self._lock:
            self._received += 1
            connection = self._connection
        inbound = InboundMessage(name, bytes(message.payload))
        self._queue.put(_Received(inbound, message.mid, message.qos, connection, time.monotonic()))

    # Writer thread ---------------------------------------------------------------------------------

    def _run_writer(self, writer: BatchWriter) -> None:
        window = self.config.mqtt.batch_window_ms / 1000.0
        most = self.config.mqtt.batch_max
        while True:
            try:
                first = self._queue.get(timeout=0.05)
            except queue.Empty:
                if self._stopping.is_set():
                    return
                continue
            batch = [first]
            deadline = first.at + window
            while len(batch) < most:
                remaining = deadline - time.monotonic()
                try:
                    batch.append(self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait())
                except queue.Empty:
                    break
            if not self._commit(writer, batch):
                return

    def _commit(self, writer: BatchWriter, batch: list[_Received]) -> bool:
        delay = 0.2
        while True:
            try:
                result = writer.write([item.inbound for item in batch])
            except StoreUnavailable as exc:
                with self._lock:
                    self._store_retries += 1
                logger.warning("%s; retrying %d messages in %.1f s", exc, len(batch), delay)
            except Exception:
                # A bug must not kill the consumer: the batch stays unacknowledged at the broker.
                with self._lock:
                    self._store_retries += 1
                logger.exception("cannot write a batch of %d messages; retrying in %.1f s", len(batch), delay)
            else:
                break
            if self._abort.wait(delay):
                logger.error("abandoning %d uncommitted messages (the broker keeps them)", len(batch))
                return False
            delay = min(delay * 2, _RETRY_MAX_S)
        self._acknowledge(batch, result)
        return True

    def _acknowledge(self, batch: list[_Received], result: BatchResult) -> None:
        client = self._client
        assert client is not None
        acks = 0
        for (site, device), ids in result.acks.items():
            for start in range(0, len(ids), _ACK_IDS_PER_MESSAGE):
                chunk = list(dict.fromkeys(ids[start : start + _ACK_IDS_PER_MESSAGE]))
                ack = Ack(site=site, device=device, ids=chunk)
                self._last_ack = client.publish(topic(site, device, TopicKind.ACK), ack.to_json(), qos=1)
                acks += 1
        with self._lock:
            connection = self._connection
        for item in batch:
            # A PUBACK on a later connection would name a packet id the broker may have re-used;
            # the broker re-delivers that message instead, and it is acknowledged as a duplicate then.
            if item.qos > 0 and item.connection == connection:
                client.ack(item.mid, item.qos)
        lag = (time.monotonic() - batch[0].at) * 1000.0
        with self._lock:
            self._committed += len(batch)
            self._findings_stored += result.findings_stored
            self._duplicates += result.duplicates
            self._dead_letters.update(result.dead_letters)
            self._acks_published += acks
            self._batches += 1
            self._lag_last = lag
            self._lag_max = max(self._lag_max, lag)
