"""The MQTT ingest against a real Mosquitto, with a plain paho client playing the appliance."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import func, select

from dashboard.ingest import DeadLetterReason, IngestService
from dashboard.settings import DashboardConfig
from dashboard.store import DeadLetter, Device, DeviceState, Event, Finding, FindingState, Heartbeat, Store
from sdk.messages import CommandResult, Status
from sdk.messages import Event as EventMessage
from sdk.messages import Heartbeat as HeartbeatMessage
from sdk.testing.mosquitto import MosquittoBroker, free_port
from sdk.topics import TopicKind
from tests.dashboard.conftest import Appliance, make_finding, wait_for

logger = logging.getLogger(__name__)

ConfigFactory = Callable[..., DashboardConfig]
REPO = Path(__file__).resolve().parents[3]


def _db_file(config: DashboardConfig) -> str:
    return config.store_url.removeprefix("sqlite:///")


@contextmanager
def _store_locked(config: DashboardConfig):
    """Hold the SQLite write lock, so the ingest can receive but not commit."""
    lock = sqlite3.connect(_db_file(config), isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")
        yield
        lock.execute("ROLLBACK")
    finally:
        lock.close()


def _count(store: Store, model: type[Finding] | type[DeadLetter] | type[Event] | type[Heartbeat]) -> int:
    with store.session() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def _device(store: Store, site: str = "st-marys", device: str = "ct-1") -> Device | None:
    with store.session() as session:
        return session.scalar(select(Device).where(Device.site == site, Device.device == device))


def test_a_finding_is_acknowledged_only_after_it_is_committed(
    dashboard_config: ConfigFactory, appliance: Appliance
) -> None:
    config = dashboard_config()
    finding = make_finding(seq=0, accession_number=None)
    with IngestService(config) as service:
        assert service.wait_ready()
        client = service._client  # the socket is no part of the API; TCP_NODELAY is a design rule
        assert client is not None and client.socket().getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        with _store_locked(config):
            appliance.publish(TopicKind.FINDING, finding.to_json())
            assert wait_for(lambda: service.stats().received == 1)
            time.sleep(0.5)
            assert appliance.acked_ids() == [], "acknowledged before the store committed"
            assert _count(service.store, Finding) == 0
            assert service.stats().pending == 1
        assert wait_for(lambda: appliance.acked_ids() == [finding.id])
        ack = appliance.acks[0][1]
        assert (ack.site, ack.device) == ("st-marys", "ct-1"), "addressed to the device, which checks it"

        with service.store.session() as session:
            row = session.scalars(select(Finding)).one()
        assert row.message_id == finding.id
        assert (row.site, row.device, row.seq) == ("st-marys", "ct-1", 0)
        assert (row.package_name, row.package_version, row.package_precision) == ("chest-ct", "1.2.0", "int8")
        assert row.package_sha256 == "a" * 64
        assert row.scores == {"nodule": 0.91, "normal": 0.09}
        assert row.latency_ms == {"decode": 3.0, "infer": 12.5}
        assert row.positive is True and row.label == "nodule"
        assert row.created == finding.created
        assert row.state == FindingState.NEW
        stats = service.stats()
        assert (stats.received, stats.committed, stats.findings_stored, stats.pending) == (1, 1, 1, 0)
        assert stats.acks_published == 1
        assert stats.lag_ms_max >= 400  # it waited for the lock


def test_the_same_finding_twice_is_one_row_and_two_acks(dashboard_config: ConfigFactory, appliance: Appliance) -> None:
    finding = make_finding(seq=0)
    with IngestService(dashboard_config()) as service:
        assert service.wait_ready()
        appliance.publish(TopicKind.FINDING, finding.to_json())
        assert wait_for(lambda: len(appliance.acked_ids()) == 1)
        appliance.publish(TopicKind.FINDING, finding.to_json())
        assert wait_for(lambda: len(appliance.acked_ids()) == 2)
        assert appliance.acked_ids() == [finding.id, finding.id]
        assert _count(service.store, Finding) == 1
        stats = service.stats()
        assert (stats.findings_stored, stats.duplicates) == (1, 1)
        device = _device(service.store)
        assert device is not None and device.findings_count == 1


def test_bad_messages_are_dead_lettered_and_the_consumer_keeps_going(
    dashboard_config: ConfigFactory, appliance: Appliance
) -> None:
    invalid = json.loads(make_finding(seq=1).to_json())
    invalid["score"] = 2.5
    other_device = make_finding(device="ct-2", seq=2)
    with IngestService(dashboard_config()) as service:
        assert service.wait_ready()
        appliance.publish(TopicKind.FINDING, b'{"schema": "medge.finding/1", "id": ')
        appliance.publish(TopicKind.FINDING, json.dumps(invalid).encode())
        appliance.publish(TopicKind.FINDING, other_device.to_json())
        misfiled = EventMessage(site="st-marys", device="ct-1", kind="x", message="y")
        appliance.publish(TopicKind.FINDING, misfiled.to_json())
        appliance.publish_to("medge/v1/st marys/ct-1/event", b"{}")
        good = make_finding(seq=0)
        appliance.publish(TopicKind.FINDING, good.to_json())
        assert wait_for(lambda: service.stats().committed == 6)

        assert _count(service.store, Finding) == 1
        assert service.store.dead_letter_counts() == {
            DeadLetterReason.MALFORMED: 1,
            DeadLetterReason.SCHEMA: 1,
            DeadLetterReason.IDENTITY: 1,
            DeadLetterReason.WRONG_KIND: 1,
            DeadLetterReason.BAD_TOPIC: 1,
        }
        assert service.stats().dead_letters_by_reason == {
            "malformed": 1,
            "schema": 1,
            "identity": 1,
            "wrong-kind": 1,
            "bad-topic": 1,
        }
        with service.store.session() as session:
            letters = {letter.reason: letter for letter in session.scalars(select(DeadLetter))}
        assert letters[DeadLetterReason.SCHEMA].detail.startswith("field 'score'")
        assert letters[DeadLetterReason.SCHEMA].payload == json.dumps(invalid).encode()
        assert "ct-2" in letters[DeadLetterReason.IDENTITY].detail
        assert letters[DeadLetterReason.BAD_TOPIC].topic == "medge/v1/st marys/ct-1/event"
        assert letters[DeadLetterReason.MALFORMED].message_id is None
        # Whatever came on a finding topic with an id is acknowledged (it is kept as a dead letter),
        # so it does not sit in the appliance's outbox forever; a message without an id cannot be.
        acked = {invalid["id"], other_device.id, misfiled.id, good.id}
        assert wait_for(lambda: set(appliance.acked_ids()) == acked)
        assert letters[DeadLetterReason.SCHEMA].acked and not letters[DeadLetterReason.MALFORMED].acked
        assert _device(service.store, device="ct-2") is None, "a device that spoke through another was created"


def test_sequence_gaps_are_tracked(dashboard_config: ConfigFactory, appliance: Appliance) -> None:
    with IngestService(dashboard_config()) as service:
        assert service.wait_ready()
        appliance.publish_all(TopicKind.FINDING, [make_finding(seq=seq).to_json() for seq in (0, 1, 2, 5, 6, 9)])
        assert wait_for(lambda: service.stats().findings_stored == 6)
        assert service.store.sequence_gaps("st-marys", "ct-1") == [(3, 4), (7, 8)]
        device = _device(service.store)
        assert device is not None and (device.max_seq, device.missing_count) == (9, 4)

        appliance.publish(TopicKind.FINDING, make_finding(seq=3).to_json())
        assert wait_for(lambda: service.stats().findings_stored == 7)
        assert service.store.sequence_gaps("st-marys", "ct-1") == [(4, 4), (7, 8)]
        device = _device(service.store)
        assert device is not None and (device.max_seq, device.missing_count) == (9, 3)


def test_retained_status_and_will_turn_a_device_online_and_offline(
    dashboard_config: ConfigFactory, broker: MosquittoBroker
) -> None:
    first = Appliance(broker.port)
    online = Status(site="st-marys", device="ct-1", state="online", version="0.1.0")
    first.publish(TopicKind.STATUS, online.to_json(), retain=True)
    # The dashboard starts after the status was published: it learns it from the retained copy.
    with IngestService(dashboard_config()) as service:
        assert service.wait_ready()
        assert wait_for(lambda: (d := _device(service.store)) is not None and d.state == DeviceState.ONLINE)
        device = _device(service.store)
        assert device is not None and device.status is not None and device.status["version"] == "0.1.0"

        first.drop_with_will()
        assert wait_for(lambda: (d := _device(service.store)) is not None and d.state == DeviceState.OFFLINE)

        second = Appliance(broker.port)
        try:
            second.publish(TopicKind.STATUS, online.model_copy(update={"id": "birth-2"}).to_json(), retain=True)
            assert wait_for(lambda: (d := _device(service.store)) is not None and d.state == DeviceState.ONLINE)
        finally:
            second.close()


def test_events_heartbeats_and_command_results_are_stored(
    dashboard_config: ConfigFactory, appliance: Appliance
) -> None:
    with IngestService(dashboard_config()) as service:
        assert service.wait_ready()
        event = EventMessage(site="st-marys", device="ct-1", kind="quarantine", severity="warning", message="bad file")
        appliance.publish(TopicKind.EVENT, event.to_json())
        appliance.publish(TopicKind.EVENT, event.to_json())
        beat = HeartbeatMessage(site="st-marys", device="ct-1", uptime_s=12.0, queues={"decode": 2, "infer": 1})
        appliance.client.publish(appliance.topic(TopicKind.HEARTBEAT), beat.to_json(), qos=0)
        answer = CommandResult(site="st-marys", device="ct-1", correlation_id="cmd-1", ok=True, result={"a": 1})
        appliance.publish(TopicKind.CMD_RESULT, answer.to_json())
        assert wait_for(lambda: service.stats().committed == 4)
        assert _count(service.store, Event) == 1
        assert wait_for(lambda: set(appliance.acked_ids()) == {event.id, answer.id})
        device = _device(service.store)
        assert device is not None and device.last_heartbeat is not None
        assert device.last_heartbeat["uptime_s"] == 12.0
        with service.store.session() as session:
            assert session.scalars(select(Heartbeat.queue_depth)).one() == 3
            from dashboard.store import CommandResult as CommandResultRow

            assert session.scalars(select(CommandResultRow.correlation_id)).one() == "cmd-1"


def test_two_dashboards_on_a_shared_subscription_split_the_findings(
    dashboard_config: ConfigFactory, appliance: Appliance
) -> None:
    findings = [make_finding(seq=seq) for seq in range(1000)]
    first = IngestService(dashboard_config("dashboard-1"))
    second = IngestService(dashboard_config("dashboard-2"))
    with first, second:
        assert first.wait_ready() and second.wait_ready()
        appliance.publish_all(TopicKind.FINDING, [finding.to_json() for finding in findings])
        assert wait_for(lambda: _count(first.store, Finding) == len(findings), timeout=30)
        assert wait_for(lambda: len(appliance.acked_ids()) == len(findings))
        a, b = first.stats(), second.stats()
    assert a.findings_stored > 0 and b.findings_stored > 0, (a, b)
    assert a.findings_stored + b.findings_stored == len(findings)
    assert a.duplicates == b.duplicates == 0
    assert sorted(appliance.acked_ids()) == sorted(finding.id for finding in findings)


def _start_process(config: DashboardConfig, tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path]:
    config_file = tmp_path / "ingest-config.json"
    config_file.write_text(config.model_dump_json())
    stats_file = tmp_path / "ingest-stats.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.dashboard.ingest.ingest_process", str(config_file), str(stats_file)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    return process, stats_file


def _read_stats(stats_file: Path) -> dict[str, object]:
    try:
        return dict(json.loads(stats_file.read_text()))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def test_a_killed_dashboard_loses_no_finding(
    dashboard_config: ConfigFactory, appliance: Appliance, tmp_path: Path
) -> None:
    config = dashboard_config("dashboard-k")
    findings = [make_finding(seq=seq) for seq in range(300)]
    process, stats_file = _start_process(config, tmp_path)
    try:
        assert wait_for(lambda: _read_stats(stats_file).get("connected") is True, timeout=20)
        with _store_locked(config):
            appliance.publish_all(TopicKind.FINDING, [finding.to_json() for finding in findings])
            # The broker has delivered every finding to the dashboard, which cannot commit them.
            assert wait_for(lambda: _read_stats(stats_file).get("received") == len(findings))
            process.send_signal(signal.SIGKILL)
            process.wait(10)
        assert appliance.acked_ids() == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    # Same client id, persistent session: the broker delivers the unacknowledged findings again.
    with IngestService(config) as service:
        assert wait_for(lambda: _count(service.store, Finding) == len(findings))
        assert wait_for(lambda: len(set(appliance.acked_ids())) == len(findings))
        assert service.stats().duplicates == 0
    assert sorted(set(appliance.acked_ids())) == sorted(finding.id for finding in findings)


def test_ingest_rate(dashboard_config: ConfigFactory, broker: MosquittoBroker) -> None:
    """Findings/s from a paho publisher in its own process into the store, both durable, next to bare paho."""
    count = 20_000
    publisher = subprocess.Popen(
        [sys.executable, "-m", "tests.dashboard.ingest.publisher_process", str(broker.port), str(count)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert publisher.stdin is not None and publisher.stdout is not None
    try:
        assert publisher.stdout.readline().strip() == "ready"
        publisher.stdin.write("bare\n")
        publisher.stdin.flush()
        bare = float(publisher.stdout.readline().split()[1])
        with IngestService(dashboard_config()) as service:
            assert service.wait_ready()
            start = time.perf_counter()
            publisher.stdin.write("findings\n")
            publisher.stdin.flush()
            assert wait_for(lambda: service.stats().findings_stored == count, timeout=60, interval=0.005)
            elapsed = time.perf_counter() - start
            stats = service.stats()
            assert _count(service.store, Finding) == count
        publisher.stdin.close()
        published = float(publisher.stdout.readline().split()[1])
        assert publisher.wait(10) == 0
    finally:
        if publisher.poll() is None:
            publisher.kill()
            publisher.wait()
        publisher.stdout.close()
    rate = count / elapsed
    report = (
        f"ingest: {rate:,.0f} findings/s into SQLite (WAL, synchronous=FULL), {stats.batches} transactions "
        f"(~{count / stats.batches:.0f} each), lag max {stats.lag_ms_max:.0f} ms; publisher {published:,.0f}/s; "
        f"bare paho QoS 1 publish {bare:,.0f}/s; ingest/bare {rate / bare:.2f}"
    )
    logger.info(report)
    print(report)
    assert stats.duplicates == 0 and stats.dead_letters == 0
    assert rate >= 1_000, report


def _secure_config(tmp_path: Path, port: int, **mqtt_settings: object) -> DashboardConfig:
    return DashboardConfig(
        data_dir=tmp_path / "secure",
        mqtt={"host": "127.0.0.1", "port": port, "client_id": "dashboard-secure", **mqtt_settings},  # type: ignore[arg-type]
    )


def test_username_and_password_file(tmp_path: Path) -> None:
    passwords = tmp_path / "passwords"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "dashboard", "s3cret"], check=True)
    (tmp_path / "good").write_text("s3cret\n")
    (tmp_path / "bad").write_text("guess\n")
    port = free_port()
    extra = f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwords}\n"
    with MosquittoBroker(tmp_path / "broker-auth", extra_config=extra, port=port):
        with IngestService(_secure_config(tmp_path, port, username="dashboard", password_file=tmp_path / "good")) as ok:
            assert ok.wait_ready()
        with IngestService(_secure_config(tmp_path, port, username="dashboard", password_file=tmp_path / "bad")) as bad:
            assert not bad.wait_ready(1.5)


def _certificates(folder: Path) -> dict[str, Path]:
    """A test CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    now = datetime.now(UTC)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("medge test CA"))
        .issuer_name(name("medge test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = {"ca": folder / "ca.pem"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for role, common_name in (("server", "127.0.0.1"), ("client", "dashboard")):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common_name))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        if role == "server":
            san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
            builder = builder.add_extension(san, critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        files[f"{role}_cert"] = folder / f"{role}.pem"
        files[f"{role}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{role}_key"] = folder / f"{role}.key"
        files[f"{role}_key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return files


def test_mutual_tls(tmp_path: Path) -> None:
    files = _certificates(tmp_path)
    port = free_port()
    extra = (
        f"listener {port} 127.0.0.1\ncafile {files['ca']}\ncertfile {files['server_cert']}\n"
        f"keyfile {files['server_key']}\nrequire_certificate true\nuse_identity_as_username true\n"
    )
    with MosquittoBroker(tmp_path / "broker-tls", extra_config=extra, port=port):
        config = _secure_config(
            tmp_path, port, ca_file=files["ca"], cert_file=files["client_cert"], key_file=files["client_key"]
        )
        with IngestService(config) as service:
            assert service.wait_ready()
        # Without a client certificate the broker refuses the connection.
        anonymous = _secure_config(tmp_path, port, ca_file=files["ca"], username="x", password_file=files["ca"])
        with IngestService(anonymous) as refused:
            assert not refused.wait_ready(1.5)
