"""The MQTT reporter: the durable outbox to the broker, acknowledgements and commands back.

::

    outbox (SQLite: findings; events, command results) ──QoS 1, ≤ `window` un-PUBACKed──▶ broker ──▶ dashboard
        pending ──PUBACK──▶ sent ──dashboard Ack on the device's `ack` topic──▶ acked (the others: deleted)
           ▲                  │
           └── re-sent ◀──────┘ after resend_after_s, after every reconnect, after a restart (in seq order)

A PUBACK only proves the broker held the message in memory (Mosquitto
loses what it had queued when it is killed), so a message leaves the outbox
only when the dashboard says it is committed; the dashboard de-duplicates
on the message id (at-least-once delivery, exactly-once effect).
Heartbeats are QoS 0 and never stored: only the newest matters. The
retained ``status`` is "online" (naming the live packages) after every
connect and "offline" as the will, so the dashboard sees a device vanish.

One thread owns the paho client and the outbox cursor: it connects (a new
client per connection, see :mod:`runtime.reporting.connection`) with
exponential back-off and jitter, publishes outbox rows in batches, and
records PUBACKs and acknowledgements in one transaction per batch (no fsync
per message: the messages themselves were fsync'd when they were written).
Commands run on a second thread (:mod:`runtime.reporting.commands`); their
results go through the outbox like events, so a dropped connection does not
lose an answer.
"""

from __future__ import annotations

import importlib.metadata
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import ValidationError

from runtime.reporting.backoff import Backoff
from runtime.reporting.commands import CommandHandler, CommandRunner
from runtime.reporting.connection import BrokerConnectionError, Connector, loop_once
from runtime.work_queue import OutboxDepth, WorkQueue
from sdk.appliance_config import ApplianceConfig
from sdk.messages import Ack, Command, CommandResult, Event, Heartbeat, MessageError, PackageRef, Status, parse_message
from sdk.topics import TopicKind, topic

__all__ = ["EventSink", "Reporter", "ReporterStats", "Severity"]

log = logging.getLogger(__name__)

Severity = Literal["info", "warning", "error", "critical"]
EventSink = Callable[[str, str, str, Mapping[str, object]], None]
"""``(kind, severity, message, detail)``: the appliance's event sink (``Appliance._emit``)."""

_BATCH = 500  # outbox rows read per query
_FLUSH_AT = 256  # PUBACK/Ack marks that trigger a bookkeeping transaction
_FLUSH_AFTER_S = 0.05  # ... or their age
_LOOP_S = 0.05  # network wait per turn; also how soon new outbox rows are noticed
_CHECK_EVERY_S = 0.5  # outbox size bound
_PURGE_EVERY_S = 60.0
_DRAINED = 0.9  # back-pressure ends below this share of the bound (hysteresis)
_STOP_WAIT_S = 2.0
_DISCONNECT_WITH_WILL = 0x04  # MQTT 5 DISCONNECT reason code: the broker publishes the will anyway
_FINDING, _OTHER = "finding", "other"  # outbox rows carry their kind: finding, event, cmd/result


def _medge_version() -> str:
    try:
        return importlib.metadata.version("medge")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass(frozen=True)
class ReporterStats:
    """A snapshot of the reporter for health, metrics and tests."""

    connected: bool
    connects: int
    failed_attempts: int
    published: int
    pubacks: int
    acked_findings: int
    acked_messages: int
    resent: int
    refused_publishes: int
    backpressure: bool
    inflight: int
    window: int
    outbox: OutboxDepth | None
    last_error: str | None


@dataclass(eq=False)
class _Link:
    """One connection: its client and what is in flight on it (all of it dies with the connection)."""

    client: mqtt.Client
    opened: float
    ready: bool = False
    announced: bool = False
    lost: bool = False
    refused: str | None = None
    reason: str = "connection lost"
    session_present: bool = False
    receive_maximum: int = 65535
    window: int = 0
    inflight: dict[int, tuple[str, str | None]] = field(default_factory=dict)
    inflight_ids: set[str] = field(default_factory=set)


class Reporter:
    """Sends the outbox to the dashboard over MQTT 5 and takes acknowledgements and commands back.

    Construct it with the appliance's config and work queue, then
    :meth:`start`; :meth:`stop` before closing the queue. Safe to call
    :meth:`event`, :meth:`announce`, :attr:`backpressure` and :meth:`stats`
    from any thread.

    Events it emits (to ``on_event``, else straight to :meth:`event`):
    ``outbox-full`` / ``outbox-drained`` (the size bound is
    crossed / cleared), ``broker-reconnected`` (after an outage),
    ``broker-refused`` (CONNACK refused: credentials, authorisation),
    ``publish-refused`` and ``subscribe-refused`` (the broker's ACL said no),
    ``bad-message`` and ``bad-command`` (malformed input on the ack or
    command topics; the reporter carries on).

    Args:
        config: the appliance config (``[appliance]`` site and device, ``[mqtt]``).
        queue: the work queue whose outbox is sent.
        heartbeat: makes the periodic heartbeat (e.g. ``Appliance.heartbeat``); the reporter adds its
            alarms. Default: a minimal one (uptime, outbox depth, alarms).
        status_packages: the live packages the "online" status names (e.g. ``Appliance.package_refs``).
        commands: the handler of each command name (``selftest``, ``report-config``, ``activate-package``);
            a command without one is answered ``ok=False``.
        on_event: where the reporter's own events go: the appliance's event sink, which logs them and passes
            every event (these included) to :meth:`event`. Without one they go straight to :meth:`event`.
        backoff: the reconnect delay policy (default from ``reconnect_min_s``/``reconnect_max_s``).
        version: the software version the status names (default: the installed medge's).

    Raises:
        ConfigError: the TLS material or the password file cannot be read.
    """

    def __init__(
        self,
        config: ApplianceConfig,
        queue: WorkQueue,
        *,
        heartbeat: Callable[[], Heartbeat] | None = None,
        status_packages: Callable[[], Sequence[PackageRef]] | None = None,
        commands: Mapping[str, CommandHandler] | None = None,
        on_event: EventSink | None = None,
        backoff: Backoff | None = None,
        version: str | None = None,
    ) -> None:
        self.section = config.mqtt
        self.queue = queue
        self.site = config.appliance.site
        self.device = config.appliance.device
        self.client_id = self.section.client_id or f"medge-{self.site}-{self.device}"
        self.version = version or _medge_version()
        self._heartbeat_source = heartbeat
        self._packages_source = status_packages
        self._on_event = on_event
        self._backoff = backoff or Backoff(self.section.reconnect_min_s, self.section.reconnect_max_s)
        self._connector = Connector(self.section, self.client_id)
        self._resend_requested = threading.Event()
        handlers = {**(commands or {}), "resend": self._on_resend_command}
        self._commands = CommandRunner(self.site, self.device, handlers, self._store_result, self._bad_input)

        def at(kind: TopicKind) -> str:
            return topic(self.site, self.device, kind)

        self._t_finding, self._t_event, self._t_heartbeat = (
            at(TopicKind.FINDING),
            at(TopicKind.EVENT),
            at(TopicKind.HEARTBEAT),
        )
        self._t_status, self._t_ack, self._t_result = at(TopicKind.STATUS), at(TopicKind.ACK), at(TopicKind.CMD_RESULT)
        self._t_cmd = at(TopicKind.CMD)
        self._topic_of = {_FINDING: self._t_finding, "event": self._t_event, "cmd/result": self._t_result}

        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._connected = threading.Event()
        self._link: _Link | None = None
        self._started = time.monotonic()
        # reconnect policy
        self._attempt = 0
        self._next_attempt = 0.0
        self._down_since: float | None = None
        self._last_refusal: str | None = None
        # the send cursor: rows above it have not been read; _buffer holds rows read but not yet published
        self._cursor_finding = -1
        self._cursor_message = -1
        self._buffer: deque[tuple[str, str, bytes]] = deque()
        # PUBACKed and acknowledged ids waiting for their bookkeeping transaction
        self._sent_findings: list[str] = []
        self._sent_messages: list[str] = []
        self._unmarked: set[str] = set()
        self._acked: list[str] = []
        self._first_unflushed: float | None = None
        # timers (monotonic)
        self._next_check = 0.0
        self._next_purge = 0.0
        self._next_resend = 0.0
        self._next_heartbeat = 0.0
        self._acked_since_resend = True  # whether anything was acknowledged since the last re-send
        self._last_resend = 0.0
        self._announce_due = False
        # what others read
        self._backpressure = False
        self._depth: OutboxDepth | None = None
        self._counts = {"connects": 0, "published": 0, "pubacks": 0, "acked_findings": 0, "acked_messages": 0}
        self._counts |= {"resent": 0, "refused_publishes": 0}
        self._last_error: str | None = None

    # -- public -------------------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Put back what a previous run sent but never saw acknowledged, then start connecting and sending."""
        if self._thread is not None:
            return
        requeued = self.queue.requeue_unacknowledged(0.0)
        if requeued:
            log.info("%d message(s) sent before the restart and never acknowledged will be sent again", requeued)
        self._stopping.clear()
        self._commands.start()
        self._thread = threading.Thread(target=self._run, name="medge-reporter", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Flush bookkeeping, announce "offline" (the will, sent on purpose) and disconnect; unacknowledged stays."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("the reporter thread did not stop within %.1f s", timeout)
            self._thread = None
        self._commands.stop(timeout)

    def __enter__(self) -> Reporter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def event(
        self, kind: str, severity: str = "info", message: str = "", detail: Mapping[str, object] | None = None
    ) -> None:
        """Queue an event for the dashboard: written and fsync'd to the outbox, then published.

        ``severity`` is one of ``info``, ``warning``, ``error``, ``critical``.

        Beyond ``[mqtt] events_limit`` unacknowledged events (and command results) the oldest are
        dropped and counted. A failure to store is logged, not raised: the
        caller is usually reporting another failure.
        """
        try:
            event = Event(
                site=self.site,
                device=self.device,
                kind=(kind or "event")[:64],
                severity=severity,  # type: ignore[arg-type]  # validated by the model
                message=message,
                detail=_jsonable(detail or {}),
            )
            self.queue.add_message(event, limit=self.section.events_limit)
        except Exception:
            log.exception("could not store event %s: %s", kind, message)

    def _store_result(self, result: CommandResult) -> None:
        """A command's answer goes through the outbox, so that a dropped connection cannot lose it."""
        self.queue.add_message(result, limit=self.section.events_limit)

    def announce(self) -> None:
        """Publish the "online" status again (the live packages changed)."""
        self._announce_due = True

    @property
    def backpressure(self) -> bool:
        """True while unacknowledged findings are at ``[mqtt] outbox_limit``: refuse new instances upstream."""
        return self._backpressure

    @property
    def connected(self) -> bool:
        """True while connected to the broker (CONNACK received)."""
        return self._connected.is_set()

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Wait until connected; whether it is."""
        return self._connected.wait(timeout)

    def stats(self) -> ReporterStats:
        """Counters and state now."""
        link = self._link
        return ReporterStats(
            connected=self.connected,
            failed_attempts=self._attempt,
            inflight=len(link.inflight) if link else 0,
            window=link.window if link else 0,
            backpressure=self._backpressure,
            outbox=self._depth,
            last_error=self._last_error,
            **self._counts,
        )

    # -- the thread ---------------------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._step()
            except Exception as exc:  # e.g. the disk is full: start over from the outbox, after a pause
                log.exception("reporter step failed")
                self._last_error = f"{type(exc).__name__}: {exc}"
                if self._link is not None:
                    self._discard(self._link)
                    self._failed(time.monotonic(), self._last_error)
                self._stopping.wait(1.0)
        try:
            self._shutdown()
        except Exception:
            log.exception("reporter shutdown failed")

    def _step(self) -> None:
        now = time.monotonic()
        link = self._link
        if link is None:
            if now >= self._next_attempt:
                self._open(now)
            else:
                self._stopping.wait(min(_LOOP_S, self._next_attempt - now))
        else:
            self._serve(link, now)
        self._housekeeping(time.monotonic())

    # -- connecting ---------------------------------------------------------------------------------------------------

    def _open(self, now: float) -> None:
        client = self._connector.client(self._t_status, self._status("offline"))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self._link = _Link(client, opened=now)
        try:
            self._connector.connect(client)
        except BrokerConnectionError as exc:
            self._link = None
            self._failed(now, str(exc))

    def _failed(self, now: float, reason: str) -> None:
        delay = self._backoff.delay(self._attempt)
        self._attempt += 1
        self._next_attempt = now + delay
        self._last_error = reason
        log.warning("MQTT: %s; next attempt in %.2f s", reason, delay)

    def _serve(self, link: _Link, now: float) -> None:
        rc = loop_once(link.client, _LOOP_S)
        if link.refused is not None:
            self._refused(link, now)
            return
        if link.lost or rc != mqtt.MQTT_ERR_SUCCESS:
            self._lost(link, now, link.reason if link.lost else mqtt.error_string(rc))
            return
        if not link.ready:
            if now - link.opened > self.section.connect_timeout_s:
                self._discard(link, disconnect=True)
                self._failed(now, f"no CONNACK within {self.section.connect_timeout_s} s")
            return
        if not link.announced:
            self._ready(link, now)
        self._flush_marks()
        if self._announce_due:
            self._announce_due = False
            self._publish(link, _OTHER, self._t_status, self._status("online"), retain=True)
        self._fill(link)
        self._heartbeat(link, now)

    def _ready(self, link: _Link, now: float) -> None:
        link.announced = True
        link.window = max(1, min(self.section.max_inflight, link.receive_maximum))
        link.client.subscribe(
            [(self._t_ack, SubscribeOptions(qos=1)), (self._t_cmd + "/#", SubscribeOptions(qos=1, noLocal=True))]
        )
        # The broker may have lost whatever it held only in memory: what is unacknowledged goes again, in order.
        requeued, _ = self._resend(link, 0.0)
        self._acked_since_resend = False
        self._last_resend = now
        self._reset_cursor()
        self._publish(link, _OTHER, self._t_status, self._status("online"), retain=True)
        self._next_heartbeat = now
        self._next_resend = now + self.section.resend_after_s
        self._attempt = 0
        self._last_refusal = None
        self._counts["connects"] += 1
        self._connected.set()
        where = f"{self.section.host}:{self.section.port}"
        log.info(
            "connected to %s as %s (session %s, window %d, %d unacknowledged to re-send)",
            where,
            self.client_id,
            "resumed" if link.session_present else "new",
            link.window,
            requeued,
        )
        if self._down_since is not None:
            outage = now - self._down_since
            self._down_since = None
            self._own_event(
                "broker-reconnected",
                "warning",
                f"reconnected to the broker after {outage:.1f} s away",
                {"outage_s": round(outage, 3), "session_present": link.session_present, "resent": requeued},
            )

    def _refused(self, link: _Link, now: float) -> None:
        reason = link.refused or "refused"
        self._discard(link)
        if reason != self._last_refusal:
            self._last_refusal = reason
            self._own_event("broker-refused", "error", f"the broker refused the connection: {reason}", {})
        self._failed(now, f"the broker refused the connection: {reason}")

    def _lost(self, link: _Link, now: float, reason: str) -> None:
        was_ready = link.ready
        self._discard(link)
        if was_ready:
            self._attempt = 0
            self._down_since = now
        self._failed(now, f"disconnected: {reason}")

    def _discard(self, link: _Link, *, disconnect: bool = False) -> None:
        """Forget a connection and everything in flight on it (those rows are still pending in the outbox)."""
        self._connected.clear()
        self._link = None
        if disconnect:
            link.client.disconnect()
        try:
            self._flush_marks(force=True)
        finally:
            self._unmarked.clear()
            self._sent_findings.clear()
            self._sent_messages.clear()
            self._reset_cursor()

    def _shutdown(self) -> None:
        link = self._link
        if link is None:
            return
        if link.ready:
            self._flush_marks(force=True)
            # "Disconnect with Will Message": the broker publishes the retained "offline" itself.
            link.client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=_DISCONNECT_WITH_WILL))
            deadline = time.monotonic() + _STOP_WAIT_S
            while link.client.want_write() and time.monotonic() < deadline:
                if loop_once(link.client, 0.05) != mqtt.MQTT_ERR_SUCCESS:
                    break
        self._discard(link)
        log.info("disconnected from the broker")

    # -- paho callbacks (on the reporter thread, inside loop_once()) ---------------------------------------------------

    def _current(self, client: mqtt.Client) -> _Link | None:
        link = self._link
        return link if link is not None and link.client is client else None

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Properties | None
    ) -> None:
        link = self._current(client)
        if link is None:
            return
        if reason.is_failure:
            link.refused = str(reason)
            return
        link.ready = True
        link.session_present = bool(flags.session_present)
        receive_maximum = getattr(properties, "ReceiveMaximum", None)
        if receive_maximum:
            link.receive_maximum = int(receive_maximum)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Properties | None
    ) -> None:
        link = self._current(client)
        if link is not None:
            link.lost = True
            link.reason = str(reason)

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Properties | None
    ) -> None:
        link = self._current(client)
        if link is None:
            return
        entry = link.inflight.pop(mid, None)
        if entry is None:  # QoS 0 (heartbeat) or not ours
            return
        kind, message_id = entry
        if message_id is None:
            return
        link.inflight_ids.discard(message_id)
        self._counts["pubacks"] += 1
        if reason.is_failure:
            # Marked sent all the same: it is tried again on the resend timer, not in a tight loop.
            self._counts["refused_publishes"] += 1
            log.warning("the broker refused %s %s: %s", kind, message_id, reason)
            if self._counts["refused_publishes"] == 1 or self._counts["refused_publishes"] % 1000 == 0:
                self._own_event(
                    "publish-refused",
                    "error",
                    f"the broker refused a {kind}: {reason}",
                    {"id": message_id, "refused": self._counts["refused_publishes"]},
                )
        (self._sent_findings if kind == _FINDING else self._sent_messages).append(message_id)
        self._unmarked.add(message_id)
        if self._first_unflushed is None:
            self._first_unflushed = time.monotonic()

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode], properties: Properties | None
    ) -> None:
        refused = [str(reason) for reason in reasons if reason.is_failure]
        if refused and self._current(client) is not None:
            self._own_event(
                "subscribe-refused",
                "error",
                f"the broker refused the ack or command subscription: {', '.join(refused)}",
                {"reasons": refused},
            )

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if self._current(client) is None:
            return
        name = "?"
        try:
            name = message.topic
            if name == self._t_ack:
                self._take_ack(bytes(message.payload))
            elif name == self._t_cmd or (name.startswith(self._t_cmd + "/") and name != self._t_result):
                self._commands.submit(bytes(message.payload))
        except Exception as exc:  # hostile or broken input must not stop the reporter
            log.exception("unusable message on %s", name)
            self._own_event("bad-message", "warning", f"unusable message on {name}: {exc}", {"topic": name})

    def _take_ack(self, payload: bytes) -> None:
        try:
            message = parse_message(payload)
        except MessageError as exc:
            self._own_event("bad-message", "warning", f"malformed acknowledgement: {exc}", {"topic": self._t_ack})
            return
        if not isinstance(message, Ack) or (message.site, message.device) != (self.site, self.device):
            what = f"{message.schema_} for {message.site}/{message.device}"
            self._own_event("bad-message", "warning", f"not an acknowledgement for this device: {what}", {})
            return
        self._acked.extend(message.ids)
        if self._first_unflushed is None:
            self._first_unflushed = time.monotonic()

    # -- sending ------------------------------------------------------------------------------------------------------

    def _publish(
        self,
        link: _Link,
        kind: str,
        name: str,
        payload: bytes,
        message_id: str | None = None,
        *,
        qos: int = 1,
        retain: bool = False,
    ) -> bool:
        info = link.client.publish(name, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            link.lost = True
            link.reason = f"publish failed: {mqtt.error_string(info.rc)}"
            return False
        if qos:
            link.inflight[info.mid] = (kind, message_id)
            if message_id is not None:
                link.inflight_ids.add(message_id)
        return True

    def _reset_cursor(self) -> None:
        self._cursor_finding = -1
        self._cursor_message = -1
        self._buffer.clear()

    def _refill(self, link: _Link) -> bool:
        """Read the next outbox rows (events and results first) past the cursor; whether there were any."""
        skip = link.inflight_ids | self._unmarked if (link.inflight_ids or self._unmarked) else ()
        messages = self.queue.pending_messages(self._cursor_message, _BATCH)
        for message in messages:
            if message.message_id not in skip:
                self._buffer.append((message.kind, message.message_id, message.payload))
        if messages:
            self._cursor_message = messages[-1].seq
        findings = self.queue.pending_after(self._cursor_finding, _BATCH)
        for finding in findings:
            if finding.finding_id not in skip:
                self._buffer.append((_FINDING, finding.finding_id, finding.payload))
        if findings:
            self._cursor_finding = findings[-1].seq
        return bool(messages or findings)

    def _fill(self, link: _Link) -> None:
        """Publish outbox rows until the window is full."""
        room = link.window - len(link.inflight)
        while room > 0 and not link.lost:
            if not self._buffer:
                if not self._refill(link):
                    return
                continue
            kind, message_id, payload = self._buffer.popleft()
            name = self._topic_of.get(kind)
            if name is None:  # written by a newer medge: leave it for that one
                log.error("outbox message %s has unknown kind %r", message_id, kind)
                continue
            if not self._publish(link, kind, name, payload, message_id):
                return
            self._counts["published"] += 1
            room -= 1

    def _flush_marks(self, *, force: bool = False) -> None:
        """Record PUBACKs (``sent``) and acknowledgements in one transaction each, per batch."""
        pending = len(self._sent_findings) + len(self._sent_messages) + len(self._acked)
        if not pending:
            return
        first = self._first_unflushed or 0.0
        if not force and pending < _FLUSH_AT and time.monotonic() - first < _FLUSH_AFTER_S:
            return
        sent_findings, self._sent_findings = self._sent_findings, []
        sent_messages, self._sent_messages = self._sent_messages, []
        acked, self._acked = self._acked, []
        self._first_unflushed = None
        if sent_findings or sent_messages:
            self.queue.mark_sent_batch(sent_findings, sent_messages)
            self._unmarked.difference_update(sent_findings)
            self._unmarked.difference_update(sent_messages)
        if acked:
            findings, messages = self.queue.mark_acked_batch(acked)
            self._counts["acked_findings"] += findings
            self._counts["acked_messages"] += messages
            if findings or messages:
                self._acked_since_resend = True

    # -- timers -------------------------------------------------------------------------------------------------------

    def _on_resend_command(self, command: Command) -> dict[str, Any]:
        """The dashboard (re)connected: what it has not acknowledged goes again now (on the reporter's thread)."""
        self._resend_requested.set()
        depth = self._depth
        return {"unacknowledged_findings": depth.findings if depth is not None else None}

    def _housekeeping(self, now: float) -> None:
        if now >= self._next_check:
            self._next_check = now + _CHECK_EVERY_S
            self._check_bound()
        link = self._link
        if link is not None and link.announced and self._resend_requested.is_set():
            self._resend_requested.clear()
            self._acked_since_resend = True  # the dashboard is there: everything, not a probe
            requeued, _ = self._resend(link, 0.0)
            log.info("the dashboard asked for a re-send: %d unacknowledged message(s) go again", requeued)
        if link is not None and link.announced and now >= self._next_resend:
            self._next_resend = now + max(0.1, min(5.0, self.section.resend_after_s / 4))
            self._resend_overdue(link)
        if now >= self._next_purge:
            self._next_purge = now + _PURGE_EVERY_S
            purged = self.queue.purge_acked(self.section.keep_acked_s)
            if purged:
                log.debug("purged %d acknowledged finding(s) from the outbox", purged)

    def _check_bound(self) -> None:
        depth = self.queue.outbox_depth()
        self._depth = depth
        limit = self.section.outbox_limit
        if not self._backpressure and depth.findings >= limit:
            self._backpressure = True
            self._next_heartbeat = 0.0
            self._own_event(
                "outbox-full",
                "error",
                f"{depth.findings} findings wait for the dashboard (limit {limit}): new instances are refused",
                {"findings": depth.findings, "limit": limit},
            )
        elif self._backpressure and depth.findings < limit * _DRAINED:
            self._backpressure = False
            self._next_heartbeat = 0.0
            self._own_event(
                "outbox-drained",
                "info",
                f"the outbox is below its limit again ({depth.findings} of {limit}): instances are taken again",
                {"findings": depth.findings, "limit": limit},
            )

    def _resend(self, link: _Link, older_than_s: float) -> tuple[int, bool]:
        """Put back what the dashboard has not acknowledged for ``older_than_s``; how many, and whether as a probe.

        Everything due goes again, in sequence order, if anything at all was
        acknowledged since the last re-send (or this is the first). If
        nothing was, the dashboard (or its subscription) is away: only the
        oldest window's worth goes, as a probe, so that an outage of hours
        does not pile copies of the whole backlog into the broker. The first
        acknowledgement of a probe brings the full re-send at the next check.
        """
        probe = not self._acked_since_resend
        if probe:
            requeued = self.queue.requeue_unacknowledged(0.0, limit=link.window)
        else:
            requeued = self.queue.requeue_unacknowledged(older_than_s)
        if requeued:
            self._acked_since_resend = False
            self._last_resend = time.monotonic()
            self._counts["resent"] += requeued
            self._reset_cursor()
        return requeued, probe

    def _resend_overdue(self, link: _Link) -> None:
        """The resend timer: what was not acknowledged within ``resend_after_s`` goes again (see :meth:`_resend`)."""
        if not self._acked_since_resend and time.monotonic() - self._last_resend < self.section.resend_after_s:
            return  # nothing acknowledged since the last round yet: wait for its answer before probing
        requeued, probe = self._resend(link, self.section.resend_after_s)
        if not requeued:
            return
        log.info(
            "%d message(s) not acknowledged within %.1f s: sending %s",
            requeued,
            self.section.resend_after_s,
            "the oldest again as a probe" if probe else "them again",
        )

    def _heartbeat(self, link: _Link, now: float) -> None:
        if now < self._next_heartbeat:
            return
        self._next_heartbeat = now + self.section.heartbeat_interval_s
        beat = self._make_heartbeat()
        self._publish(link, _OTHER, self._t_heartbeat, beat.to_json(), qos=0)

    def _make_heartbeat(self) -> Heartbeat:
        depth = self._depth
        alarms = []
        if self._backpressure and depth is not None:
            alarms.append(
                f"outbox full: {depth.findings} findings unacknowledged (limit {self.section.outbox_limit});"
                " new instances are refused"
            )
        extra = {}
        if depth is not None:
            extra = {"outbox_messages": depth.messages, "outbox_messages_dropped": depth.messages_dropped}
        beat = None
        if self._heartbeat_source is not None:
            try:
                beat = self._heartbeat_source()
            except Exception:
                log.exception("the heartbeat source failed; sending a minimal heartbeat")
        if beat is None:
            return Heartbeat(
                site=self.site,
                device=self.device,
                uptime_s=round(time.monotonic() - self._started, 3),
                outbox_depth=depth.findings if depth else 0,
                queues=extra,
                alarms=alarms,
            )
        return beat.model_copy(update={"alarms": [*beat.alarms, *alarms], "queues": {**beat.queues, **extra}})

    # -- messages and events -----------------------------------------------------------------------------------------

    def _status(self, state: Literal["online", "offline"]) -> bytes:
        packages: list[PackageRef] = []
        if self._packages_source is not None:
            try:
                packages = list(self._packages_source())
            except Exception:
                log.exception("could not list the live packages for the status message")
        try:
            status = Status(site=self.site, device=self.device, state=state, packages=packages, version=self.version)
        except ValidationError:
            log.exception("the live packages do not fit the status message; announcing none")
            status = Status(site=self.site, device=self.device, state=state, version=self.version)
        return status.to_json()

    def _own_event(self, kind: str, severity: Severity, message: str, detail: Mapping[str, object]) -> None:
        if self._on_event is None:
            self.event(kind, severity, message, detail)
            return
        try:
            self._on_event(kind, severity, message, dict(detail))
        except Exception:  # the sink's failure must not stop the reporter
            log.exception("event sink failed for %s", kind)

    def _bad_input(self, kind: str, message: str, detail: Mapping[str, object]) -> None:
        self._own_event(kind, "warning", message, detail)


def _jsonable(value: Any) -> Any:
    """``detail`` as plain JSON types (paths, enums and the like become strings)."""
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(item) for item in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
