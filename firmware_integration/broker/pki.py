"""The site's small certificate authority: broker certificate, client certificates and the revocation list.

A site without its own PKI gets a CA made by ``medge broker init``: EC P-256
keys, SHA-256 signatures. Client certificates carry the broker identity as
their CN (``{site}/{device}`` or a dashboard name) and are only good for
client authentication; the server certificate names every host name and
address clients use. The CRL has a long validity on purpose: OpenSSL refuses
every client once a CRL it checks has expired.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sdk.errors import ConfigError

__all__ = ["IssuedCertificate", "TlsMaterial", "public_key_from_csr"]

CA_DAYS = 3650
SERVER_DAYS = 1825
CLIENT_DAYS = 1825
CRL_DAYS = 3650
_BACKDATE = timedelta(minutes=5)  # clocks on appliances are rarely exact


@dataclass(frozen=True)
class TlsMaterial:
    """PEM files of an existing PKI to install into a broker folder.

    Attributes:
        ca_cert: the CA that signed the server certificate and signs client certificates.
        server_cert: the broker's certificate (its SANs must name the host clients dial).
        server_key: the broker's private key.
        ca_key: the CA's private key; only needed for medge to issue client certificates and CRLs.
    """

    ca_cert: Path
    server_cert: Path
    server_key: Path
    ca_key: Path | None = None


CertifiablePublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey
"""The key types a client certificate may be issued for (what TLS clients use)."""


@dataclass(frozen=True)
class IssuedCertificate:
    """A certificate and its new private key, both PEM (``key_pem`` is empty when the key was the caller's)."""

    cert_pem: bytes
    key_pem: bytes
    serial: int


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what}: {exc.strerror}", path=path) from exc


def load_certificate(path: Path, what: str) -> x509.Certificate:
    """Parse a PEM certificate.

    Raises:
        ConfigError: unreadable or not a PEM certificate.
    """
    try:
        return x509.load_pem_x509_certificate(_read(path, what))
    except ValueError as exc:
        raise ConfigError(f"the {what} is not a PEM certificate", path=path) from exc


def load_private_key(path: Path, what: str) -> ec.EllipticCurvePrivateKey:
    """Parse an unencrypted PEM EC private key (the only kind medge makes or signs with).

    Raises:
        ConfigError: unreadable, encrypted, or not an EC key.
    """
    try:
        key = serialization.load_pem_private_key(_read(path, what), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"the {what} is not an unencrypted PEM private key", path=path) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"the {what} must be an EC key to sign with it", path=path)
    return key


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted (file permissions protect it)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    """PEM of a certificate."""
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: CertifiablePublicKey, days: int
) -> x509.CertificateBuilder:
    start = datetime.now(UTC) - _BACKDATE
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
    )


def make_ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A new self-signed CA allowed to sign certificates and CRLs (not intermediate CAs)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(_name(common_name), _name(common_name), key.public_key(), CA_DAYS)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _host_names(hostnames: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def issue(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    *,
    server_names: Sequence[str] = (),
    days: int | None = None,
    public_key: CertifiablePublicKey | None = None,
) -> IssuedCertificate:
    """A certificate signed by the CA: for a server if ``server_names``, else for a client.

    With ``public_key`` (e.g. from a device's CSR, see :func:`public_key_from_csr`)
    the certificate is for that key, whose private half stays with its owner;
    otherwise a new key is made and returned with it.
    """
    key = ec.generate_private_key(ec.SECP256R1()) if public_key is None else None
    subject_key: CertifiablePublicKey = key.public_key() if key is not None else public_key  # type: ignore[assignment]
    server = bool(server_names)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        _builder(_name(common_name), ca_cert.subject, subject_key, days or (SERVER_DAYS if server else CLIENT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=isinstance(subject_key, ec.EllipticCurvePublicKey),
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(_host_names(server_names)), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return IssuedCertificate(cert_pem(cert), b"" if key is None else key_pem(key), cert.serial_number)


def public_key_from_csr(csr_pem: bytes | str, common_name: str) -> CertifiablePublicKey:
    """The public key of a CSR whose own signature holds and whose subject CN is ``common_name``.

    The signature proves the requester holds the private key; the CN is the
    broker identity the certificate will carry, so it must be the one asked.

    Raises:
        ConfigError: not a PEM CSR, a bad signature, another CN, or an unsupported key type.
    """
    data = csr_pem.encode() if isinstance(csr_pem, str) else csr_pem
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError as exc:
        raise ConfigError("not a PEM certificate signing request", field="csr_pem") from exc
    if not csr.is_signature_valid:
        raise ConfigError("the CSR's signature does not check out: it was not made with its key", field="csr_pem")
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or names[0].value != common_name:
        found = names[0].value if names else None
        raise ConfigError(f"the CSR's subject CN must be {common_name!r}, not {found!r}", field="csr_pem")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey):
        raise ConfigError(f"a client certificate cannot be issued for a {type(key).__name__}", field="csr_pem")
    return key


def build_crl(
    ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, revoked: Iterable[tuple[int, datetime]]
) -> bytes:
    """A PEM CRL listing ``(serial, revocation time)`` pairs, valid for :data:`CRL_DAYS`."""
    start = datetime.now(UTC) - _BACKDATE
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(start)
        .next_update(start + timedelta(days=CRL_DAYS))
    )
    for serial, when in revoked:
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(min(when, start)).build()
        builder = builder.add_revoked_certificate(entry)
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
