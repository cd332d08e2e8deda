"""The MQTT reporter against a real Mosquitto: birth and will, the end-to-end acknowledged outbox, commands, TLS.

The "dashboard" here is a plain paho client that records what the device
sends and, when told to, acknowledges findings and events the way the
dashboard's ingest does (an Ack naming the ids on the device's ack topic).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import ValidationError

from runtime.reporting import Backoff, Reporter
from runtime.work_queue import InstanceState, OutboxState, WorkQueue
from sdk.appliance_config import ApplianceConfig
from sdk.errors import ConfigError
from sdk.messages import Ack, Command, CommandResult, Event, Finding, PackageRef, finding_id
from sdk.testing.mosquitto import MosquittoBroker, free_port
from sdk.topics import TopicKind, topic

REPO = Path(__file__).resolve().parents[2]
SITE, DEVICE = "site-a", "dev-1"
ACKED = ("finding", "event", "cmd/result")  # what the dashboard acknowledges: what the device keeps until then
PACKAGE = PackageRef(name="chest-ct-nodule", version="1.2.0", precision="int8", profile="x86", sha256="ab" * 32)


# -- helpers ----------------------------------------------------------------------------------------------------------


def wait_for(condition: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def make_config(data_dir: Path, port: int, **mqtt_settings: Any) -> ApplianceConfig:
    settings = {
        "host": "127.0.0.1",
        "port": port,
        "keepalive_s": 5,
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.5,
        "connect_timeout_s": 3.0,
    }
    settings.update(mqtt_settings)
    return ApplianceConfig(
        appliance={"site": SITE, "device": DEVICE, "demo": True, "data_dir": str(data_dir)}, mqtt=settings
    )


def fill(queue: WorkQueue, count: int, *, per_instance: int = 250, tag: str = "") -> list[str]:
    """Record ``count`` findings (``per_instance`` per analysed instance); their ids in sequence order."""
    ids: list[str] = []
    for start in range(0, count, per_instance):
        sop = f"1.2.826.0.1.{tag or uuid.uuid4().int % 10**12}.{start}"
        queue.add_received(
            spool_path=f"/spool/{sop}.dcm",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            sop_instance_uid=sop,
            study_instance_uid="1.2.3",
            series_instance_uid="1.2.3.4",
            calling_ae="SCANNER",
            association_id=None,
            transfer_syntax="1.2.840.10008.1.2.1",
            size=1,
        )
        queue.advance(sop, InstanceState.DECODED)
        findings = [
            Finding(
                id=finding_id(sop, PACKAGE.sha256, frame),
                site=SITE,
                device=DEVICE,
                seq=0,
                package=PACKAGE,
                study_ref="s" * 32,
                series_ref="r" * 32,
                instance_ref="i" * 32,
                modality="CT",
                frame=frame,
                label="nodule",
                score=0.7,
                scores={"nodule": 0.7},
                threshold=0.5,
                positive=True,
            )
            for frame in range(min(per_instance, count - start))
        ]
        queue.record_findings(sop, findings)
        ids += [finding.id for finding in findings]
    return ids


class Dashboard:
    """A stand-in for the dashboard's ingest: records everything the device sends, acknowledges when told to."""

    def __init__(self, port: int, *, acking: bool = True) -> None:
        self.port = port
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.acking = acking
        self._lock = threading.Lock()
        self._to_ack: list[str] = []
        self._stop = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"dashboard-{uuid.uuid4().hex[:8]}", protocol=mqtt.MQTTv5
        )
        self.client.reconnect_delay_set(0.05, 0.5)  # type: ignore[arg-type]  # floats work; paho annotates int
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()
        self._flusher = threading.Thread(target=self._flush_loop, daemon=True)
        self._flusher.start()
        wait_for(self.client.is_connected, what="the dashboard to connect")
        time.sleep(0.1)  # the SUBACK

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        client.subscribe(f"medge/v1/{SITE}/{DEVICE}/#", options=SubscribeOptions(qos=1, noLocal=True))

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        kind = message.topic.split("/", 4)[4]
        try:
            data = json.loads(message.payload)
        except ValueError:
            return
        with self._lock:
            self.received.append((kind, data))
            if self.acking and kind in ACKED:
                self._to_ack.append(data["id"])

    def _flush_loop(self) -> None:
        while not self._stop.wait(0.02):
            with self._lock:
                ids, self._to_ack = self._to_ack, []
            for start in range(0, len(ids), 200):
                self.ack(ids[start : start + 200])

    def ack(self, ids: list[str]) -> None:
        self.client.publish(topic(SITE, DEVICE, TopicKind.ACK), Ack(site=SITE, device=DEVICE, ids=ids).to_json(), qos=1)

    def start_acking(self, *, backlog: bool = True) -> None:
        """Acknowledge what comes from now on, and (``backlog``) everything received so far."""
        with self._lock:
            self.acking = True
            if backlog:
                self._to_ack += [data["id"] for kind, data in self.received if kind in ACKED]

    def of(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [data for got, data in self.received if got == kind]

    def ids(self, kind: str = "finding") -> list[str]:
        return [data["id"] for data in self.of(kind)]

    def clear(self) -> None:
        with self._lock:
            self.received.clear()

    def command(self, payload: bytes) -> None:
        self.client.publish(topic(SITE, DEVICE, TopicKind.CMD), payload, qos=1)

    def close(self) -> None:
        self._stop.set()
        self._flusher.join()
        self.client.disconnect()
        self.client.loop_stop()


def retained_status(port: int) -> dict[str, Any]:
    """The retained status a newly connecting dashboard would see."""
    got: list[dict[str, Any]] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:8]}")
    client.on_message = lambda c, u, m: got.append(json.loads(m.payload))
    client.connect("127.0.0.1", port)
    client.subscribe(topic(SITE, DEVICE, TopicKind.STATUS), qos=1)
    client.loop_start()
    try:
        wait_for(lambda: got, timeout=5, what="a retained status")
    finally:
        client.disconnect()
        client.loop_stop()
    return got[-1]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(tmp_path / "broker") as running:
        yield running


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[WorkQueue]:
    with WorkQueue(tmp_path / "data" / "queue.sqlite") as opened:
        yield opened


@contextmanager
def dashboard(port: int, *, acking: bool = True) -> Iterator[Dashboard]:
    board = Dashboard(port, acking=acking)
    try:
        yield board
    finally:
        board.close()


@contextmanager
def running(reporter: Reporter) -> Iterator[Reporter]:
    reporter.start()
    try:
        assert reporter.wait_connected(10), reporter.stats()
        yield reporter
    finally:
        reporter.stop()


# -- the outbox's batched operations (no broker) ---------------------------------------------------------------------


def test_exported_members_are_the_public_surface() -> None:
    import runtime.reporting

    public = {name for name in vars(runtime.reporting) if not name.startswith("_")} - {
        "backoff",
        "commands",
        "connection",
        "reporter",
    }
    assert public == set(runtime.reporting.__all__)


def test_outbox_batches_cursor_marks_acknowledgements_and_probes(queue: WorkQueue) -> None:
    ids = fill(queue, 6, per_instance=3)
    first = queue.pending_after(-1, 4)
    assert [entry.finding_id for entry in first] == ids[:4]
    assert [entry.finding_id for entry in queue.pending_after(first[-1].seq, 10)] == ids[4:]

    event = Event(site=SITE, device=DEVICE, kind="quarantined", message="bad file")
    result = CommandResult(site=SITE, device=DEVICE, correlation_id="c-1", ok=True)
    assert queue.add_message(event) == 0 and queue.add_message(result) == 0
    assert queue.add_message(event) == 0  # the same id again: ignored
    assert [(m.kind, m.message_id) for m in queue.pending_messages()] == [
        ("event", event.id),
        ("cmd/result", result.id),
    ]

    assert queue.mark_sent_batch(ids, [event.id, result.id]) == 8
    assert queue.mark_sent_batch(ids) == 0  # only pending ones move
    depth = queue.outbox_depth()
    assert (depth.findings_pending, depth.findings_sent, depth.messages) == (0, 6, 2)

    assert queue.requeue_unacknowledged(0.0, limit=2) == 4  # a probe: the oldest two of each table
    assert [entry.finding_id for entry in queue.pending_after(-1, 10)] == ids[:2]
    assert [m.message_id for m in queue.pending_messages()] == [event.id, result.id]
    assert queue.requeue_unacknowledged(3600.0) == 0  # nothing is an hour old

    acked = queue.mark_acked_batch([*ids[:3], event.id, "unknown", ids[0]])
    assert acked == (3, 1)
    assert queue.mark_acked_batch(ids[:3]) == (0, 0)  # acks repeat
    states = {record.sop_instance_uid: record.state for record in queue.instances()}
    assert sorted(states.values()) == [InstanceState.ANALYSED, InstanceState.REPORTED]  # first instance: all acked
    assert queue.outbox_full(3) and not queue.outbox_full(4)
    assert queue.outbox_depth().messages == 1


# -- back-off (no broker) ---------------------------------------------------------------------------------------------


def test_backoff_delays_grow_are_capped_and_jittered() -> None:
    backoff = Backoff(0.1, 3.0, jitter=0.5, rng=random.Random(7))
    delays = [backoff.delay(attempt) for attempt in range(10)]
    for attempt, delay in enumerate(delays):
        ceiling = min(3.0, 0.1 * 2**attempt)
        assert 0.5 * ceiling <= delay <= ceiling
    assert all(later >= earlier for earlier, later in itertools.pairwise(delays[:5]))  # grows until capped
    assert max(delays) <= 3.0 and backoff.ceiling(1000) == 3.0  # capped, no overflow
    draws = {round(backoff.delay(4), 9) for _ in range(20)}
    assert len(draws) > 15  # jittered: a fleet does not come back in step
    other = Backoff(0.1, 3.0, rng=random.Random(8))
    assert [other.delay(a) for a in range(10)] != delays
    for bad in ({"min_s": 0}, {"min_s": 2, "max_s": 1}, {"factor": 0.5}, {"jitter": 1.5}):
        with pytest.raises(ConfigError):
            Backoff(**{"min_s": 0.1, "max_s": 1.0, **bad})


def test_reconnect_attempts_back_off_while_the_broker_is_away(tmp_path: Path, queue: WorkQueue) -> None:
    port = free_port()  # nothing listens here yet
    reporter = Reporter(make_config(tmp_path, port, reconnect_min_s=0.1, reconnect_max_s=0.4), queue)
    reporter.start()
    try:
        time.sleep(1.2)
        assert not reporter.connected
        stats = reporter.stats()
        assert "cannot connect" in (stats.last_error or "")
        # delays of ~0.1, 0.2, 0.4, 0.4 s (each less up to half by jitter): a handful of attempts, not one per 0.1 s
        assert 3 <= stats.failed_attempts <= 9, stats
        with MosquittoBroker(tmp_path / "late-broker", port=port):
            assert reporter.wait_connected(5)  # comes back by itself within the capped delay
    finally:
        reporter.stop()


# -- status ----------------------------------------------------------------------------------------------------------


def test_birth_status_is_retained_names_packages_and_the_socket_has_nodelay(
    tmp_path: Path, broker: MosquittoBroker, queue: WorkQueue
) -> None:
    reporter = Reporter(make_config(tmp_path, broker.port), queue, status_packages=lambda: [PACKAGE], version="9.9.9")
    with running(reporter):
        status = wait_for(lambda: (s := retained_status(broker.port))["state"] == "online" and s, what="online")
        assert status["schema"] == "medge.status/1" and (status["site"], status["device"]) == (SITE, DEVICE)
        assert status["packages"] == [PACKAGE.model_dump()] and status["version"] == "9.9.9"
        sock = reporter._link.client.socket()  # type: ignore[union-attr]
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    assert retained_status(broker.port)["state"] == "offline"  # a clean stop says so too


_REPORTER_PROCESS = """
import json, sys, time
from pathlib import Path
from runtime.reporting import Reporter
from runtime.work_queue import WorkQueue
from sdk.appliance_config import ApplianceConfig

reporter = Reporter(ApplianceConfig(**json.loads(sys.argv[1])), WorkQueue(Path(sys.argv[2])))
reporter.start()
time.sleep(600)
"""


def test_will_says_offline_when_the_process_is_killed_and_a_restart_resends_what_was_unacknowledged(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    path = tmp_path / "data" / "queue.sqlite"
    with WorkQueue(path) as queue:
        ids = fill(queue, 400)
    config = make_config(tmp_path, broker.port)
    with dashboard(broker.port, acking=False) as board:
        process = subprocess.Popen(
            [sys.executable, "-c", _REPORTER_PROCESS, config.model_dump_json(), str(path)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        try:
            wait_for(lambda: board.of("status") and board.of("status")[-1]["state"] == "online", what="online")
            wait_for(lambda: len(board.ids()) >= 400, what="the findings")
            process.send_signal(signal.SIGKILL)
            process.wait(10)
        finally:
            process.kill()
            process.wait()
        wait_for(lambda: board.of("status")[-1]["state"] == "offline", timeout=5, what="the will")
        assert retained_status(broker.port)["state"] == "offline"
        assert board.ids() == ids  # in sequence order, once each so far

        board.clear()
        board.start_acking()
        with WorkQueue(path) as queue:
            assert queue.outbox_depth().findings == 400  # nothing left the outbox on PUBACK
            with running(Reporter(config, queue)):
                wait_for(lambda: queue.outbox_depth().findings == 0, what="every finding acknowledged")
            assert board.ids() == ids  # re-sent after the restart, in order
            assert all(record.state is InstanceState.REPORTED for record in queue.instances())
        assert retained_status(broker.port)["state"] == "offline"


# -- the outbox ------------------------------------------------------------------------------------------------------


def test_findings_go_in_sequence_order_and_leave_the_outbox_only_on_the_dashboards_ack(
    tmp_path: Path, broker: MosquittoBroker, queue: WorkQueue
) -> None:
    ids = fill(queue, 600)
    with dashboard(broker.port, acking=False) as board, running(Reporter(make_config(tmp_path, broker.port), queue)):
        wait_for(lambda: len(board.ids()) == 600, what="600 findings")
        assert board.ids() == ids
        assert [f["seq"] for f in board.of("finding")] == sorted(f["seq"] for f in board.of("finding"))
        wait_for(lambda: queue.outbox_depth().findings_sent == 600, what="every PUBACK recorded")
        time.sleep(0.3)
        depth = queue.outbox_depth()
        assert (depth.findings_pending, depth.findings_sent) == (0, 600)  # PUBACK alone moves nothing out
        assert {record.state for record in queue.instances()} == {InstanceState.ANALYSED}

        board.ack(ids[:100])
        wait_for(lambda: queue.outbox_depth().findings == 500, what="100 acknowledged")
        assert [e.state for e in queue.findings()[:101]] == [OutboxState.ACKED] * 100 + [OutboxState.SENT]
        board.start_acking()
        wait_for(lambda: queue.outbox_depth().findings == 0, what="all acknowledged")
        assert {record.state for record in queue.instances()} == {InstanceState.REPORTED}
        board.ack(ids[:10])  # acks repeat: harmless
        time.sleep(0.1)
        assert len(board.ids()) == 600  # nothing sent twice while acknowledgements kept coming


def test_unacknowledged_findings_are_probed_after_the_timeout_then_all_sent_again_in_order(
    tmp_path: Path, broker: MosquittoBroker, queue: WorkQueue
) -> None:
    ids = fill(queue, 150)
    config = make_config(tmp_path, broker.port, resend_after_s=0.3)
    with dashboard(broker.port, acking=False) as board, running(Reporter(config, queue)) as reporter:
        wait_for(lambda: len(board.ids()) >= 150, what="the findings")
        window = reporter.stats().window
        time.sleep(1.1)  # about three timeouts without any acknowledgement: only the oldest window goes, as probes
        probes = board.ids()[150:]
        assert board.ids()[:150] == ids
        assert window <= len(probes) <= 4 * window and probes[:window] == ids[:window]
        assert set(probes) <= set(ids[:window])

        before = len(board.ids())
        board.start_acking(backlog=False)  # the next probe is acknowledged: everything overdue goes again, in order
        wait_for(lambda: queue.outbox_depth().findings == 0, what="all acknowledged")
        again = [i for i in board.ids()[before:] if i not in ids[:window]]
        assert again == ids[window:]
        assert reporter.stats().resent >= 150


def test_a_broker_killed_mid_stream_loses_nothing_and_the_reconnect_resends_what_it_lost(
    tmp_path: Path, broker: MosquittoBroker, queue: WorkQueue
) -> None:
    ids = fill(queue, 6000, per_instance=500)
    # No resend timer within the test: only the re-send after the reconnect can bring back what the broker lost.
    # The reporter reconnects after 1-2 s, the dashboard within a few tenths: it is subscribed again by then.
    config = make_config(tmp_path, broker.port, resend_after_s=600.0, reconnect_min_s=2.0, reconnect_max_s=2.0)
    with dashboard(broker.port) as board, running(Reporter(config, queue)) as reporter:
        wait_for(lambda: len(board.ids()) >= 300, what="the stream to start")
        broker.kill()  # SIGKILL: what the broker held in memory is gone
        wait_for(lambda: reporter.stats().failed_attempts >= 1, what="the reporter to notice")
        lost = queue.outbox_depth().findings_sent
        assert lost > 0  # PUBACKed by the broker, never acknowledged by the dashboard
        broker.start()
        wait_for(lambda: queue.outbox_depth().findings == 0, timeout=40, what="every finding acknowledged")
        assert set(board.ids()) == set(ids)
        assert reporter.stats().connects == 2 and reporter.stats().resent >= lost
    assert {record.state for record in queue.instances()} == {InstanceState.REPORTED}
    reconnected = [e for e in board.of("event") if e["kind"] == "broker-reconnected"]
    assert reconnected and reconnected[0]["detail"]["resent"] >= lost


def test_the_outbox_bound_raises_an_event_an_alarm_and_back_pressure_but_drops_no_finding(
    tmp_path: Path, broker: MosquittoBroker, queue: WorkQueue
) -> None:
    ids = fill(queue, 6)
    config = make_config(tmp_path, broker.port, outbox_limit=5, heartbeat_interval_s=1)
    with dashboard(broker.port, acking=False) as board, running(Reporter(config, queue)) as reporter:
        wait_for(lambda: reporter.backpressure, what="back-pressure")
        assert queue.outbox_full(5)
        full = wait_for(lambda: [e for e in board.of("event") if e["kind"] == "outbox-full"], what="the event")
        assert full[0]["severity"] == "error" and full[0]["detail"] == {"findings": 6, "limit": 5}
        alarmed = wait_for(
            lambda: [h for h in board.of("heartbeat") if any("outbox full" in a for a in h["alarms"])],
            what="a heartbeat alarm",
        )
        assert alarmed[0]["queues"]["outbox_messages"] >= 0
        assert len(queue.findings()) == 6  # nothing dropped
        board.start_acking()
        wait_for(lambda: not reporter.backpressure, what="back-pressure to end")
        wait_for(lambda: [e for e in board.of("event") if e["kind"] == "outbox-drained"], what="the drained event")
        assert set(board.ids()) == set(ids)


def test_events_are_durable_acknowledged_and_dropped_oldest_first_beyond_their_bound(
    tmp_path: Path, broker: MosquittoBroker, queue: WorkQueue
) -> None:
    config = make_config(tmp_path, broker.port, events_limit=3, heartbeat_interval_s=1)
    reporter = Reporter(config, queue)
    for number in range(5):  # before any connection: they wait on disk
        reporter.event("quarantined", "warning", f"instance {number} quarantined", {"path": Path(f"/spool/{number}")})
    depth = queue.outbox_depth()
    assert (depth.messages, depth.messages_dropped) == (3, 2)
    with dashboard(broker.port) as board, running(reporter):
        events = wait_for(lambda: len(board.of("event")) >= 3 and board.of("event"), what="the events")
        assert [e["message"] for e in events] == [f"instance {n} quarantined" for n in (2, 3, 4)]
        assert events[0]["detail"] == {"path": "/spool/2"}
        wait_for(lambda: queue.outbox_depth().messages == 0, what="the events acknowledged")
        beat = wait_for(lambda: board.of("heartbeat"), what="a heartbeat")[-1]
        assert beat["queues"]["outbox_messages_dropped"] == 2


# -- commands --------------------------------------------------------------------------------------------------------


def test_commands_are_answered_with_their_correlation_id_and_bad_ones_do_not_stop_the_reporter(
    tmp_path: Path, broker: MosquittoBroker, queue: WorkQueue
) -> None:
    def report_config(command: Command) -> dict[str, Any]:
        raise RuntimeError("config unreadable")

    handlers = {"selftest": lambda command: {"passed": True, "echo": command.args}, "report-config": report_config}
    logged: list[str] = []

    def appliance_sink(kind: str, severity: str, message: str, detail: Any) -> None:  # like Appliance._emit
        logged.append(kind)
        reporter.event(kind, severity, message, detail)

    reporter = Reporter(make_config(tmp_path, broker.port), queue, commands=handlers, on_event=appliance_sink)

    def command(which: str, **args: Any) -> str:
        message = Command(site=SITE, device=DEVICE, command=which, args=args)  # type: ignore[arg-type]
        board.command(message.to_json())
        return message.id

    def result(correlation_id: str) -> dict[str, Any]:
        return wait_for(
            lambda: next((r for r in board.of("cmd/result") if r["correlation_id"] == correlation_id), None),
            what=f"the result of {correlation_id}",
        )

    with dashboard(broker.port) as board, running(reporter):
        answer = result(command("selftest", quick=True))
        assert answer["ok"] is True and answer["result"] == {"passed": True, "echo": {"quick": True}}
        failed = result(command("report-config"))
        assert failed["ok"] is False and "config unreadable" in failed["error"]
        missing = result(command("activate-package", name="x"))
        assert missing["ok"] is False and "not available" in missing["error"]

        board.command(b"{not json")
        board.command(json.dumps({"schema": "medge.cmd/1", "id": "c-42", "command": "format-disk"}).encode())
        board.client.publish(topic(SITE, DEVICE, TopicKind.ACK), b"\xff\xfe garbage", qos=1)
        unknown = result("c-42")
        assert unknown["ok"] is False and "malformed command" in unknown["error"]
        kinds = wait_for(
            lambda: {e["kind"] for e in board.of("event")} >= {"bad-command", "bad-message"} and board.of("event"),
            what="the bad-input events",
        )
        assert sum(e["kind"] == "bad-command" for e in kinds) == 2  # each once, through the appliance's sink
        assert sorted(logged) == ["bad-command", "bad-command", "bad-message"]

        assert result(command("selftest"))["ok"] is True  # still serving
        assert reporter.connected and reporter.stats().connects == 1
        wait_for(lambda: queue.outbox_depth().messages == 0, what="results and events acknowledged")


# -- TLS -------------------------------------------------------------------------------------------------------------


def _certificate(
    name: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None, **kw: Any
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer or (subject, key)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if kw.get("server"):
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> tuple[Path, Path]:
    key_path, cert_path = path.with_suffix(".key"), path.with_suffix(".pem")
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def test_mutual_tls_connects_and_a_certificate_from_another_ca_is_refused(tmp_path: Path, queue: WorkQueue) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    ca_key, rogue_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("medge test CA", ca_key, None)
    rogue_ca = _certificate("rogue CA", rogue_key, None)
    ca_file, _ = _write(pki / "ca", ca_key, ca)
    keys = {name: ec.generate_private_key(ec.SECP256R1()) for name in ("broker", "device", "rogue")}
    broker_cert, broker_key = _write(
        pki / "broker", keys["broker"], _certificate("broker", keys["broker"], (ca.subject, ca_key), server=True)
    )
    device_cert, device_key = _write(
        pki / "device", keys["device"], _certificate(DEVICE, keys["device"], (ca.subject, ca_key))
    )
    rogue_cert, rogue_key_file = _write(
        pki / "rogue", keys["rogue"], _certificate(DEVICE, keys["rogue"], (rogue_ca.subject, rogue_key))
    )
    tls_port, plain_port = free_port(), free_port()
    listeners = (
        f"listener {tls_port} 127.0.0.1\ncafile {ca_file}\ncertfile {broker_cert}\nkeyfile {broker_key}\n"
        "require_certificate true\n"
        f"listener {plain_port} 127.0.0.1\nallow_anonymous true\n"
    )
    with MosquittoBroker(tmp_path / "tls-broker", extra_config=listeners, port=tls_port):
        ids = fill(queue, 5)
        config = make_config(tmp_path, tls_port, ca_file=ca_file, cert_file=device_cert, key_file=device_key)
        with dashboard(plain_port) as board, running(Reporter(config, queue)) as reporter:
            wait_for(lambda: queue.outbox_depth().findings == 0, what="the findings over TLS")
            assert board.ids() == ids
            assert reporter._link.client.socket().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)  # type: ignore[union-attr]

        rogue = make_config(tmp_path, tls_port, ca_file=ca_file, cert_file=rogue_cert, key_file=rogue_key_file)
        impostor = Reporter(rogue, queue)
        impostor.start()
        try:
            time.sleep(1.5)
            assert not impostor.connected and impostor.stats().connects == 0
            assert impostor.stats().last_error
        finally:
            impostor.stop()


def test_mqtt_settings_that_cannot_work_are_refused(tmp_path: Path) -> None:
    for bad, field in (
        ({"reconnect_min_s": 5.0, "reconnect_max_s": 1.0}, "reconnect_min_s"),
        ({"cert_file": tmp_path / "device.pem"}, "ca_file"),
        ({"ca_file": tmp_path / "ca.pem", "key_file": tmp_path / "device.key"}, "cert_file"),
        ({"client_id": "has/slash"}, "client_id"),
    ):
        with pytest.raises(ValidationError, match=field):
            make_config(tmp_path, 1883, **bad)


def test_unreadable_tls_material_or_password_is_a_config_error_at_construction(
    tmp_path: Path, queue: WorkQueue
) -> None:
    with pytest.raises(ConfigError, match=r"mqtt\.ca_file"):
        Reporter(make_config(tmp_path, 1883, ca_file=tmp_path / "missing-ca.pem"), queue)
    with pytest.raises(ConfigError, match=r"mqtt\.password_file"):
        Reporter(make_config(tmp_path, 1883, username="dev", password_file=tmp_path / "missing"), queue)
