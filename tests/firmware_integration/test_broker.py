"""The shipped broker configuration against a real Mosquitto (firmware_integration/broker).

Each broker runs the rendered ``conf.d/medge.conf`` through sdk.testing.mosquitto
on a free loopback port, with a test CA made here with ``cryptography`` (not
with the code under test). Clients are paho MQTT 5 clients driven from the
test's thread, so every wait is explicit and bounded.

Mosquitto 2.0.11 facts these tests rely on (checked on the real broker):
a QoS 1 publish the ACL denies gets PUBACK 0x87 and the connection is then
closed, so each denied publish uses its own connection; subscriptions are not
checked when made (SUBACK grants them) but every delivery is checked against
the subscriber's read ACL, so reads are checked by what arrives.
"""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import socket
import ssl
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from firmware_integration.broker import (
    AuthMode,
    BrokerFolder,
    Credentials,
    TlsMaterial,
    add_dashboard,
    add_device,
    read_broker_settings,
    reload_broker,
    remove_device,
    write_broker_config,
)
from sdk.testing.mosquitto import MosquittoBroker, free_port
from sdk.topics import TopicKind, topic

SITE_A, SITE_B, DEVICE = "site-a", "site-b", "scanner-1"  # the same device name at two sites
A, B = (SITE_A, DEVICE), (SITE_B, DEVICE)
DASHBOARD = "dashboard"
DEVICE_WRITES = {TopicKind.FINDING, TopicKind.EVENT, TopicKind.HEARTBEAT, TopicKind.STATUS, TopicKind.CMD_RESULT}
DEVICE_READS = {TopicKind.CMD, TopicKind.CMD_RESULT, TopicKind.ACK}
DASHBOARD_WRITES = {TopicKind.CMD, TopicKind.ACK}


class Reason(IntEnum):
    """The MQTT 5 reason codes these tests expect."""

    SUCCESS = 0x00
    NO_MATCHING_SUBSCRIBERS = 0x10
    BAD_USERNAME_OR_PASSWORD = 0x86
    NOT_AUTHORIZED = 0x87


ACCEPTED = {Reason.SUCCESS, Reason.NO_MATCHING_SUBSCRIBERS}


# --- a test PKI made independently of the code under test ------------------------------------------------


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    **kw: bool,
) -> x509.Certificate:
    start = datetime.now(UTC) - timedelta(minutes=5)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if kw.get("server"):
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    if kw.get("client"):
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def make_test_pki(folder: Path) -> TlsMaterial:
    """A CA and a server certificate for 127.0.0.1, as a site's own PKI would hand them over."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("medge test CA", ca_key, None)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _cert("127.0.0.1", server_key, (ca, ca_key), server=True)
    files = {
        "ca.crt": ca.public_bytes(serialization.Encoding.PEM),
        "ca.key": _pem_key(ca_key),
        "server.crt": server.public_bytes(serialization.Encoding.PEM),
        "server.key": _pem_key(server_key),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return TlsMaterial(folder / "ca.crt", folder / "server.crt", folder / "server.key", folder / "ca.key")


def foreign_client_cert(folder: Path, cn: str) -> tuple[Path, Path]:
    """A client certificate with a trusted-looking CN from a CA the broker does not know."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("another CA", ca_key, None)
    key = ec.generate_private_key(ec.SECP256R1())
    (folder / "client.crt").write_bytes(
        _cert(cn, key, (ca, ca_key), client=True).public_bytes(serialization.Encoding.PEM)
    )
    (folder / "client.key").write_bytes(_pem_key(key))
    return folder / "client.crt", folder / "client.key"


# --- brokers and clients ---------------------------------------------------------------------------------


def make_broker_folder(directory: Path, pki: TlsMaterial, auth: AuthMode) -> Path:
    """A broker folder on a free loopback port with the test PKI installed."""
    write_broker_config(
        directory, tls=pki, auth=auth, port=free_port(), bind_address="127.0.0.1", hostnames=["127.0.0.1"]
    )
    return directory


def start_broker(folder: Path, work_dir: Path) -> MosquittoBroker:
    """Mosquitto running the folder's ``conf.d/medge.conf`` (as the current user: see MosquittoBroker)."""
    settings = read_broker_settings(folder)
    config = BrokerFolder(folder).medge_config.read_text()
    return MosquittoBroker(work_dir, port=settings.port, extra_config=config).start()


@dataclass(frozen=True)
class Identity:
    """How a test client logs in."""

    username: str | None = None
    password: str | None = None
    cert: Path | None = None
    key: Path | None = None

    @classmethod
    def of(cls, credentials: Credentials, bundle: Path) -> Identity:
        credentials.write(bundle)
        if credentials.password is not None:
            return cls(credentials.username, credentials.password)
        return cls(credentials.username, cert=bundle / "client.crt", key=bundle / "client.key")


class Peer:
    """A paho MQTT 5 client driven from the test's thread.

    Args:
        port: the broker's port on 127.0.0.1.
        identity: username/password and/or client certificate.
        ca: the CA to verify the broker with; ``"system"`` for the system's CAs; None for plain MQTT.
        client_id: the client id sent (the broker replaces it with the username).
    """

    def __init__(
        self, port: int, identity: Identity, *, ca: Path | str | None, client_id: str = "", timeout: float = 5.0
    ) -> None:
        self.port = port
        self.timeout = timeout
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if identity.username is not None:
            self.client.username_pw_set(identity.username, identity.password)
        if ca is not None:
            self.client.tls_set(
                ca_certs=None if ca == "system" else str(ca),
                certfile=str(identity.cert) if identity.cert else None,
                keyfile=str(identity.key) if identity.key else None,
            )
        self.connack: int | None = None
        self.session_present = False
        self.disconnected = False
        self.acks: dict[int, int] = {}
        self.subacks: dict[int, list[int]] = {}
        self.messages: list[tuple[str, bytes]] = []
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *args: setattr(self, "disconnected", True)
        self.client.on_publish = lambda _c, _u, mid, rc, _p: self.acks.__setitem__(mid, rc.value)
        self.client.on_subscribe = lambda _c, _u, mid, rcs, _p: self.subacks.__setitem__(mid, [r.value for r in rcs])
        self.client.on_message = lambda _c, _u, msg: self.messages.append((msg.topic, bytes(msg.payload)))

    def _on_connect(self, _c: object, _u: object, flags: mqtt.ConnectFlags, rc: object, _p: object) -> None:
        self.connack = rc.value  # type: ignore[attr-defined]
        self.session_present = flags.session_present

    def connect(self, *, clean_start: bool = True, session_expiry_s: int | None = None) -> int | None:
        """The CONNACK reason code, or None when the connection failed before one (TLS refused)."""
        properties = None
        if session_expiry_s is not None:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = session_expiry_s
        self.client.connect("127.0.0.1", self.port, keepalive=30, clean_start=clean_start, properties=properties)
        self.until(lambda: self.connack is not None or self.disconnected)
        return self.connack

    def refused(self) -> bool:
        """Whether the connection fails before MQTT starts (TLS refused by either side)."""
        # paho leaves the socket of a failed handshake open (paho.mqtt.client._ssl_wrap_socket):
        # let it be collected here without its ResourceWarning.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            try:
                return self.connect() is None
            except (ssl.SSLError, OSError):
                return True
            finally:
                gc.collect()

    def publish(self, name: str, payload: bytes = b"{}", *, qos: int = 1) -> int | None:
        """The PUBACK reason code, or None if the connection dropped first."""
        info = self.client.publish(name, payload, qos=qos)
        self.until(lambda: info.mid in self.acks or self.disconnected)
        return self.acks.get(info.mid)

    def subscribe(self, name: str) -> list[int]:
        result, mid = self.client.subscribe(name, qos=1)
        assert result == mqtt.MQTT_ERR_SUCCESS and mid is not None
        self.until(lambda: mid in self.subacks)
        return self.subacks[mid]

    def until(self, condition: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.timeout
        while not condition():
            assert time.monotonic() < deadline, "timed out waiting for the broker"
            self.client.loop(timeout=0.02)

    def close(self) -> None:
        if not self.disconnected and self.connack is not None:
            self.client.disconnect()
            self.until(lambda: self.disconnected)


@contextlib.contextmanager
def peer_pool() -> Iterator[Callable[..., Peer]]:
    """Makes clients and closes them on exit."""
    made: list[Peer] = []

    def make(port: int, identity: Identity, **kw: object) -> Peer:
        peer = Peer(port, identity, **kw)  # type: ignore[arg-type]
        made.append(peer)
        return peer

    try:
        yield make
    finally:
        for peer in made:
            peer.close()


@pytest.fixture
def peers() -> Iterator[Callable[..., Peer]]:
    with peer_pool() as make:
        yield make


def connected(make: Callable[..., Peer], port: int, identity: Identity, ca: Path, **kw: object) -> Peer:
    peer = make(port, identity, ca=ca, **kw)
    assert peer.connect() == Reason.SUCCESS
    return peer


# --- password authentication over TLS ------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """A running broker with two devices at two sites and a dashboard."""

    folder: Path
    broker: MosquittoBroker
    ca: Path
    identities: dict[object, Identity]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


def _site(base: Path, pki: TlsMaterial, auth: AuthMode) -> Site:
    folder = make_broker_folder(base / "broker", pki, auth)
    identities: dict[object, Identity] = {}
    for who in (A, B):
        identities[who] = Identity.of(add_device(folder, *who), base / f"bundle-{who[0]}")
    identities[DASHBOARD] = Identity.of(add_dashboard(folder), base / "bundle-dashboard")
    return Site(folder, start_broker(folder, base / "run"), pki.ca_cert, identities)


@pytest.fixture(scope="module")
def password_site(tmp_path_factory: pytest.TempPathFactory, pki: TlsMaterial) -> Iterator[Site]:
    site = _site(tmp_path_factory.mktemp("password"), pki, AuthMode.PASSWORD)
    yield site
    site.broker.stop()


def tls_handshake(port: int, ca: Path | None) -> None:
    """A TLS handshake with the broker, verifying it with ``ca`` (None: the system's CAs)."""
    context = ssl.create_default_context(cafile=ca)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1"),
    ):
        pass


def test_tls_with_the_ca_connects_and_without_it_is_refused(password_site: Site, peers: Callable[..., Peer]) -> None:
    port, me = password_site.broker.port, password_site.identities[A]
    tls_handshake(port, password_site.ca)
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_handshake(port, None)
    assert peers(port, me, ca=password_site.ca).connect() == Reason.SUCCESS
    assert peers(port, me, ca="system").refused()


def test_plain_mqtt_on_the_tls_port_gets_nowhere(password_site: Site, peers: Callable[..., Peer]) -> None:
    assert peers(password_site.broker.port, password_site.identities[A], ca=None).refused()


def test_wrong_password_and_anonymous_are_refused(password_site: Site, peers: Callable[..., Peer]) -> None:
    port, ca = password_site.broker.port, password_site.ca
    wrong = Identity(password_site.identities[A].username, "not-the-password")
    assert peers(port, wrong, ca=ca).connect() in {Reason.BAD_USERNAME_OR_PASSWORD, Reason.NOT_AUTHORIZED}
    assert peers(port, Identity(), ca=ca).connect() == Reason.NOT_AUTHORIZED
    stranger = Identity("site-a/scanner-9", password_site.identities[A].password)
    assert peers(port, stranger, ca=ca).connect() in {Reason.BAD_USERNAME_OR_PASSWORD, Reason.NOT_AUTHORIZED}


def _who(name: object) -> str:
    return name if isinstance(name, str) else "/".join(name)  # type: ignore[arg-type]


def test_acl_publish_matrix(password_site: Site, peers: Callable[..., Peer]) -> None:
    """Each identity, each device's topics, each family: only the allowed publishes are accepted."""
    port, ca = password_site.broker.port, password_site.ca
    outcomes = {}
    for writer in (A, B, DASHBOARD):
        for owner in (A, B):
            for kind in TopicKind:
                peer = connected(peers, port, password_site.identities[writer], ca)
                outcomes[(_who(writer), _who(owner), kind.value)] = peer.publish(topic(*owner, kind))
                peer.close()
    expected = {
        (_who(writer), _who(owner), kind.value): (
            (writer == owner and kind in DEVICE_WRITES) or (writer == DASHBOARD and kind in DASHBOARD_WRITES)
        )
        for writer in (A, B, DASHBOARD)
        for owner in (A, B)
        for kind in TopicKind
    }
    accepted = {key: code in ACCEPTED for key, code in outcomes.items()}
    assert accepted == expected
    refused = {code for key, code in outcomes.items() if not expected[key]}
    assert refused == {Reason.NOT_AUTHORIZED}


def test_acl_read_matrix(password_site: Site, peers: Callable[..., Peer]) -> None:
    """Devices receive only their own commands, results and acks; the dashboard receives everything via $share."""
    port, ca, ids = password_site.broker.port, password_site.ca, password_site.identities
    a, b, dash = (connected(peers, port, ids[who], ca) for who in (A, B, DASHBOARD))
    for device, peer in ((A, a), (B, b)):
        for own in (topic(*device, TopicKind.CMD) + "/#", topic(*device, TopicKind.ACK)):
            assert peer.subscribe(own) == [1]
        for spy in ("medge/v1/#", "$share/spy/medge/v1/#", "#"):
            peer.subscribe(spy)  # mosquitto 2.0.11 grants these; the read ACL filters every delivery
    assert dash.subscribe("$share/ingest/medge/v1/#") == [1]

    for device, peer in ((A, a), (B, b)):
        for kind in TopicKind:
            writer = dash if kind in DASHBOARD_WRITES else peer
            assert writer.publish(topic(*device, kind), b"matrix") in ACCEPTED
    for device in (A, B):  # after everything else: delivery to each client is in order
        assert dash.publish(topic(*device, TopicKind.ACK), b"sentinel") in ACCEPTED

    def received(peer: Peer, sentinels: int) -> set[str]:
        peer.until(lambda: sum(payload == b"sentinel" for _, payload in peer.messages) >= sentinels)
        return {name for name, payload in peer.messages if payload == b"matrix"}

    assert received(a, 1) == {topic(*A, kind) for kind in DEVICE_READS}
    assert received(b, 1) == {topic(*B, kind) for kind in DEVICE_READS}
    assert received(dash, 2) == {topic(*device, kind) for device in (A, B) for kind in TopicKind}


def test_an_identity_cannot_take_over_another_session(password_site: Site, peers: Callable[..., Peer]) -> None:
    port, ca, ids = password_site.broker.port, password_site.ca, password_site.identities
    victim = connected(peers, port, ids[B], ca, client_id="site-b/scanner-1")
    connected(peers, port, ids[A], ca, client_id="site-b/scanner-1")  # the broker uses A's username instead
    assert victim.publish(topic(*B, TopicKind.HEARTBEAT)) in ACCEPTED
    assert not victim.disconnected


def test_added_and_removed_devices_take_effect_on_reload(
    tmp_path: Path, pki: TlsMaterial, peers: Callable[..., Peer]
) -> None:
    folder = make_broker_folder(tmp_path / "broker", pki, AuthMode.PASSWORD)
    longest = ("s" * 64, "d" * 64)  # the longest names fit mosquitto's password-file line
    broker = start_broker(folder, tmp_path / "run")
    try:
        newcomer = Identity.of(add_device(folder, *longest), tmp_path / "bundle")
        assert peers(broker.port, newcomer, ca=pki.ca_cert).connect() == Reason.NOT_AUTHORIZED
        assert broker.process is not None
        reload_broker(broker.process.pid)
        assert _eventually(lambda: peers(broker.port, newcomer, ca=pki.ca_cert).connect() == Reason.SUCCESS)
        live = connected(peers, broker.port, newcomer, pki.ca_cert)
        assert live.publish(topic(*longest, TopicKind.FINDING)) in ACCEPTED

        remove_device(folder, *longest)
        reload_broker(broker.process.pid)
        assert _eventually(lambda: peers(broker.port, newcomer, ca=pki.ca_cert).connect() != Reason.SUCCESS)
        live.until(lambda: live.disconnected)  # a reload drops connections whose password is gone
    finally:
        broker.stop()


def _eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    """A reload is asynchronous: poll until ``check`` holds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_queued_message_survives_a_graceful_restart(
    tmp_path: Path, pki: TlsMaterial, peers: Callable[..., Peer]
) -> None:
    folder = make_broker_folder(tmp_path / "broker", pki, AuthMode.PASSWORD)
    device = Identity.of(add_device(folder, *A), tmp_path / "bundle-a")
    dashboard = Identity.of(add_dashboard(folder), tmp_path / "bundle-d")
    broker = start_broker(folder, tmp_path / "run")
    try:
        appliance = peers(broker.port, device, ca=pki.ca_cert)
        assert appliance.connect(clean_start=False, session_expiry_s=3600) == Reason.SUCCESS
        assert appliance.subscribe(topic(*A, TopicKind.CMD)) == [1]
        appliance.close()

        sender = connected(peers, broker.port, dashboard, pki.ca_cert)
        assert sender.publish(topic(*A, TopicKind.CMD), b"selftest") == Reason.SUCCESS  # queued for the session
        sender.close()
        broker.restart()

        back = peers(broker.port, device, ca=pki.ca_cert)
        assert back.connect(clean_start=False, session_expiry_s=3600) == Reason.SUCCESS
        assert back.session_present
        back.until(lambda: bool(back.messages))
        assert back.messages == [(topic(*A, TopicKind.CMD), b"selftest")]
    finally:
        broker.stop()


# --- mutual TLS: the certificate is the identity --------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate_site(tmp_path_factory: pytest.TempPathFactory, pki: TlsMaterial) -> Iterator[Site]:
    site = _site(tmp_path_factory.mktemp("certificate"), pki, AuthMode.CERTIFICATE)
    yield site
    site.broker.stop()


def test_mtls_certificate_is_the_identity(certificate_site: Site, peers: Callable[..., Peer]) -> None:
    mine = certificate_site.identities[A]
    claims_b = Identity("site-b/scanner-1", "ignored", mine.cert, mine.key)  # the username sent is ignored
    peer = connected(peers, certificate_site.broker.port, claims_b, certificate_site.ca)
    assert peer.publish(topic(*A, TopicKind.FINDING)) in ACCEPTED
    assert peer.publish(topic(*B, TopicKind.FINDING)) == Reason.NOT_AUTHORIZED


def test_mtls_refuses_no_certificate_and_a_foreign_one(
    certificate_site: Site, peers: Callable[..., Peer], tmp_path: Path
) -> None:
    port, ca = certificate_site.broker.port, certificate_site.ca
    assert peers(port, Identity("site-a/scanner-1", "x"), ca=ca).refused()
    cert, key = foreign_client_cert(tmp_path, "site-a/scanner-1")
    assert peers(port, Identity(cert=cert, key=key), ca=ca).refused()


def test_mtls_dashboard_reads_and_commands(certificate_site: Site, peers: Callable[..., Peer]) -> None:
    port, ca, ids = certificate_site.broker.port, certificate_site.ca, certificate_site.identities
    dash = connected(peers, port, ids[DASHBOARD], ca)
    assert dash.subscribe("$share/ingest/medge/v1/+/+/finding") == [1]
    device = connected(peers, port, ids[B], ca)
    assert device.publish(topic(*B, TopicKind.FINDING), b"f") == Reason.SUCCESS
    dash.until(lambda: bool(dash.messages))
    assert dash.messages == [(topic(*B, TopicKind.FINDING), b"f")]
    assert dash.publish(topic(*B, TopicKind.CMD)) in ACCEPTED
    assert connected(peers, port, ids[DASHBOARD], ca).publish(topic(*B, TopicKind.FINDING)) == Reason.NOT_AUTHORIZED


def test_removed_certificate_is_revoked_on_reload(tmp_path: Path, pki: TlsMaterial, peers: Callable[..., Peer]) -> None:
    folder = make_broker_folder(tmp_path / "broker", pki, AuthMode.CERTIFICATE)
    device = Identity.of(add_device(folder, *A), tmp_path / "bundle")
    broker = start_broker(folder, tmp_path / "run")
    try:
        live = connected(peers, broker.port, device, pki.ca_cert)
        remove_device(folder, *A)
        assert broker.process is not None
        reload_broker(broker.process.pid)
        assert _eventually(lambda: peers(broker.port, device, ca=pki.ca_cert).refused())  # CRL
        assert live.publish(topic(*A, TopicKind.FINDING)) in {Reason.NOT_AUTHORIZED, None}  # ACL deny block

        again = Identity.of(add_device(folder, *A), tmp_path / "bundle-again")
        reload_broker(broker.process.pid)
        assert _eventually(lambda: peers(broker.port, again, ca=pki.ca_cert).connect() == Reason.SUCCESS)
        assert connected(peers, broker.port, again, pki.ca_cert).publish(topic(*A, TopicKind.FINDING)) in ACCEPTED
    finally:
        broker.stop()
