"""The dashboard's broker registrar on a real Mosquitto (firmware_integration/broker/registrar.py).

A device makes its own key pair and CSR, as ``medge provision`` does; the
registrar adds it to a broker folder (a password, or a certificate issued for
the CSR's key), signals the running broker, and the device can then connect
and publish on its own topics, and not on another device's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from firmware_integration.broker import AuthMode, TlsMaterial, read_broker_settings
from firmware_integration.broker.registrar import FolderRegistrar
from firmware_integration.provisioning import certificate_request
from sdk.errors import ConfigError
from sdk.fleet_contracts import MqttGrant
from sdk.testing.mosquitto import MosquittoBroker
from sdk.topics import TopicKind, topic
from tests.firmware_integration.test_broker import (
    ACCEPTED,
    Identity,
    Peer,
    Reason,
    make_broker_folder,
    make_test_pki,
    start_broker,
)

SITE, DEVICE, OTHER = "site-a", "ct-1", "ct-2"


def device_key_and_csr(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, str]:
    """What the appliance makes for itself: a key that never leaves it, and a CSR naming its identity."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key, certificate_request(key, common_name)


def tampered(csr_pem: str) -> str:
    """The CSR with one byte of its signature changed (still parseable, no longer signed by its key)."""
    der = bytearray(x509.load_pem_x509_csr(csr_pem.encode()).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


def _running(tmp_path: Path, pki: TlsMaterial, auth: AuthMode) -> Iterator[tuple[Path, MosquittoBroker]]:
    folder = make_broker_folder(tmp_path / "broker", pki, auth)
    broker = start_broker(folder, tmp_path / "run")
    try:
        yield folder, broker
    finally:
        broker.stop()


@pytest.fixture
def password_broker(tmp_path: Path, pki: TlsMaterial) -> Iterator[tuple[Path, MosquittoBroker]]:
    yield from _running(tmp_path, pki, AuthMode.PASSWORD)


@pytest.fixture
def certificate_broker(tmp_path: Path, pki: TlsMaterial) -> Iterator[tuple[Path, MosquittoBroker]]:
    yield from _running(tmp_path, pki, AuthMode.CERTIFICATE)


def identity_of(grant: MqttGrant, key: ec.EllipticCurvePrivateKey, folder: Path) -> tuple[Identity, Path]:
    """The grant written to files as the appliance would, and the CA file to verify the broker with."""
    folder.mkdir(parents=True, exist_ok=True)
    assert grant.ca_cert_pem is not None
    ca = folder / "ca.crt"
    ca.write_text(grant.ca_cert_pem)
    if grant.cert_pem is None:
        return Identity(grant.username, grant.password), ca
    (folder / "client.crt").write_text(grant.cert_pem)
    (folder / "client.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return Identity(cert=folder / "client.crt", key=folder / "client.key"), ca


def connect_when_reloaded(port: int, identity: Identity, ca: Path, timeout: float = 5.0) -> Peer:
    """A connected client; retried while the broker re-reads its files after the SIGHUP."""
    deadline = time.monotonic() + timeout
    while True:
        peer = Peer(port, identity, ca=ca)
        if peer.connect() == Reason.SUCCESS:
            return peer
        peer.close()
        assert time.monotonic() < deadline, "the broker never accepted the new credentials"
        time.sleep(0.05)


def refused_when_reloaded(port: int, identity: Identity, ca: Path, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        peer = Peer(port, identity, ca=ca)
        if peer.refused() or peer.connack != Reason.SUCCESS:
            return True
        peer.close()
        time.sleep(0.05)
    return False


def check_confined(port: int, identity: Identity, ca: Path) -> None:
    """Publishes on its own topics; a publish on another device's is refused (and ends that connection)."""
    own = connect_when_reloaded(port, identity, ca)
    try:
        for kind in (TopicKind.FINDING, TopicKind.EVENT, TopicKind.STATUS):
            assert own.publish(topic(SITE, DEVICE, kind)) in ACCEPTED, kind
    finally:
        own.close()
    intruder = connect_when_reloaded(port, identity, ca)
    try:
        assert intruder.publish(topic(SITE, OTHER, TopicKind.FINDING)) in (Reason.NOT_AUTHORIZED, None)
    finally:
        intruder.close()


def test_password_auth_grants_a_password_the_broker_takes_at_once(
    password_broker: tuple[Path, MosquittoBroker], tmp_path: Path
) -> None:
    folder, broker = password_broker
    assert broker.process is not None
    registrar = FolderRegistrar(folder, reload_target=broker.process.pid)
    key, csr = device_key_and_csr(f"{SITE}/{DEVICE}")
    grant = registrar.register(SITE, DEVICE, csr)
    assert grant.username == f"{SITE}/{DEVICE}" and grant.password and grant.cert_pem is None
    assert (grant.host, grant.port) == ("127.0.0.1", broker.port)
    identity, ca = identity_of(grant, key, tmp_path / "device")
    check_confined(broker.port, identity, ca)

    # Enrolling again replaces the password: the old one stops working.
    again = registrar.register(SITE, DEVICE, csr)
    assert again.password != grant.password
    assert refused_when_reloaded(broker.port, identity, ca)
    connect_when_reloaded(broker.port, Identity(again.username, again.password), ca).close()

    registrar.unregister(SITE, DEVICE)
    assert read_broker_settings(folder).device(SITE, DEVICE) is None
    assert refused_when_reloaded(broker.port, Identity(again.username, again.password), ca)
    registrar.unregister(SITE, DEVICE)  # nothing left to remove: no error


def test_certificate_auth_issues_a_certificate_for_the_devices_own_key(
    certificate_broker: tuple[Path, MosquittoBroker], tmp_path: Path
) -> None:
    folder, broker = certificate_broker
    assert broker.process is not None
    registrar = FolderRegistrar(folder, reload_target=str(tmp_path / "pid"))
    (tmp_path / "pid").write_text(f"{broker.process.pid}\n")  # the pid-file form of the reload target
    key, csr = device_key_and_csr(f"{SITE}/{DEVICE}")
    grant = registrar.register(SITE, DEVICE, csr)
    assert grant.cert_pem is not None and grant.password is None and grant.username is None
    cert = x509.load_pem_x509_certificate(grant.cert_pem.encode())
    assert cert.public_key() == key.public_key(), "the certificate is for the device's own key"
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"{SITE}/{DEVICE}"
    assert "PRIVATE KEY" not in grant.model_dump_json()
    identity, ca = identity_of(grant, key, tmp_path / "device")
    check_confined(broker.port, identity, ca)

    entry = read_broker_settings(folder).device(SITE, DEVICE)
    assert entry is not None and entry.cert_serial == f"{cert.serial_number:x}"
    registrar.unregister(SITE, DEVICE)
    assert refused_when_reloaded(broker.port, identity, ca), "a revoked certificate no longer connects"


@pytest.mark.parametrize("auth", [AuthMode.PASSWORD, AuthMode.CERTIFICATE])
def test_a_csr_for_another_identity_or_not_signed_by_its_key_is_refused(
    auth: AuthMode, pki: TlsMaterial, tmp_path: Path
) -> None:
    folder = make_broker_folder(tmp_path / "broker", pki, auth)
    registrar = FolderRegistrar(folder)  # no broker running: nothing to reload
    _, other = device_key_and_csr(f"{SITE}/{OTHER}")
    with pytest.raises(ConfigError, match="CN must be 'site-a/ct-1'"):
        registrar.register(SITE, DEVICE, other)
    _, good = device_key_and_csr(f"{SITE}/{DEVICE}")
    with pytest.raises(ConfigError, match="signature"):
        registrar.register(SITE, DEVICE, tampered(good))
    with pytest.raises(ConfigError, match="not a PEM"):
        registrar.register(
            SITE, DEVICE, "-----BEGIN CERTIFICATE REQUEST-----\nnope\n-----END CERTIFICATE REQUEST-----\n"
        )
    assert read_broker_settings(folder).devices == []
