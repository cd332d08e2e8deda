"""Enrolling appliances: single-use tokens, the enrollment itself, and the device tokens it hands out.

A technician creates an enrollment token on the dashboard (shown once, only
its SHA-256 is kept) restricted to a site, optionally to one device name, a
group and a package to offer. The appliance's ``medge provision`` sends it with
a CSR of a key pair it made itself to ``POST /api/v1/enroll``; in one
transaction the token is claimed (two concurrent uses: one wins), the device
is registered with a new device token (the bearer credential of the device
API, again stored only as a hash), the broker learns its credentials through a
:class:`BrokerRegistrar`, and the answer carries the MQTT grant, the trusted
package-signing keys and the package offered, if any.

The dashboard imports only ``sdk``, so the broker side is behind the
:class:`BrokerRegistrar` protocol; ``firmware_integration.broker.registrar``
implements it on a Mosquitto folder and ``medge dashboard`` wires it in.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from sqlalchemy import Table, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from dashboard.audit import Actor, record
from dashboard.auth.secret_digest import secret_digest
from dashboard.auth.throttle import ThrottlePolicy
from dashboard.errors import (
    AccountError,
    EnrollmentRefused,
    LoginThrottled,
    NotFoundError,
    PermissionDenied,
    Unavailable,
)
from dashboard.store.engine import Store
from dashboard.store.models import (
    Device,
    DeviceCredential,
    DeviceState,
    EnrollmentToken,
    Package,
    Rollout,
    RolloutState,
)
from sdk.errors import MedgeError
from sdk.fleet_contracts import EnrollmentRequest, EnrollmentResponse, MqttGrant, PackageOffer

__all__ = [
    "DEVICE_TOKEN_PREFIX",
    "ENROLLMENT_TOKEN_PREFIX",
    "BrokerRegistrar",
    "CreatedEnrollmentToken",
    "DeviceIdentity",
    "EnrollmentTokenInfo",
    "authenticate_device",
    "check_csr",
    "create_enrollment_token",
    "enroll",
    "list_enrollment_tokens",
    "package_url",
    "provision_command",
    "revoke_enrollment_token",
]

logger = logging.getLogger(__name__)

ENROLLMENT_TOKEN_PREFIX = "medge_enroll_"
DEVICE_TOKEN_PREFIX = "medge_device_"
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_THROTTLE_PREFIX = "enroll-ip:"


@runtime_checkable
class BrokerRegistrar(Protocol):
    """Adds and removes a device's broker credentials and ACL (the broker side of enrollment).

    ``register`` is called inside the enrollment's transaction: if it raises,
    nothing is committed and the token stays unused.
    """

    def register(self, site: str, device: str, csr_pem: str) -> MqttGrant:
        """Let ``{site}/{device}`` connect (a new password, or a certificate for the CSR's key) and say how."""
        ...

    def unregister(self, site: str, device: str) -> None:
        """Stop ``{site}/{device}`` from connecting."""
        ...


def package_url(sha256: str) -> str:
    """Where a device downloads a package (relative to the dashboard's URL)."""
    return f"/api/v1/device/packages/{sha256}"


# Tokens ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnrollmentTokenInfo:
    """An enrollment token as the pages list it (never the token itself)."""

    id: int
    prefix: str
    site: str
    device: str | None
    group: str | None
    package_sha256: str | None
    created_by: str
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None
    used_by: str | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: EnrollmentToken) -> EnrollmentTokenInfo:
        return cls(
            row.id,
            row.prefix,
            row.site,
            row.device,
            row.device_group,
            row.package_sha256,
            row.created_by,
            row.created_at,
            row.expires_at,
            row.used_at,
            row.used_by,
            row.revoked_at,
        )

    def state(self, now: datetime | None = None) -> str:
        """``used``, ``revoked``, ``expired`` or ``active``."""
        if self.used_at is not None:
            return "used"
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at <= (now or datetime.now(UTC)):
            return "expired"
        return "active"


@dataclass(frozen=True)
class CreatedEnrollmentToken:
    """A new enrollment token: ``secret`` is shown once and never stored."""

    info: EnrollmentTokenInfo
    secret: str


def _segment(value: str | None, what: str) -> str | None:
    if value is None or not value.strip():
        return None
    value = value.strip()
    if not _SEGMENT.match(value):
        raise AccountError(f"{what} {value!r} must be 1-64 letters, digits, '.', '_' or '-'", field=what)
    return value


def create_enrollment_token(
    store: Store,
    site: str,
    *,
    actor: Actor,
    ttl_s: float,
    device: str | None = None,
    group: str | None = None,
    package_sha256: str | None = None,
) -> CreatedEnrollmentToken:
    """Create a single-use token that enrolls one device of ``site``; audited as ``enrollment-token.create``.

    Args:
        store: the store.
        site: the site the device must belong to.
        actor: who creates it.
        ttl_s: how long it is valid.
        device: the only device name it may enroll (``None``: any name at the site).
        group: the group the device joins (packages can be sent to a group).
        package_sha256: a package (uploaded already) offered to the device at enrollment.

    Raises:
        AccountError: a bad site, device or group name, or a validity that is not positive.
        NotFoundError: no such package.
    """
    checked_site = _segment(site, "site")
    if checked_site is None:
        raise AccountError("name the site the device belongs to", field="site")
    checked_device, checked_group = _segment(device, "device"), _segment(group, "group")
    if ttl_s <= 0:
        raise AccountError("a token's validity must be positive", field="ttl_s")
    secret = ENROLLMENT_TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    with store.write() as session:
        sha = (package_sha256 or "").strip().lower() or None
        if sha is not None and session.get(Package, sha) is None:
            raise NotFoundError(f"no package {sha}")
        row = EnrollmentToken(
            token_hash=secret_digest(secret),
            prefix=secret[: len(ENROLLMENT_TOKEN_PREFIX) + 3],
            site=checked_site,
            device=checked_device,
            device_group=checked_group,
            package_sha256=sha,
            created_by=actor.name[:64],
            created_at=now,
            expires_at=now + timedelta(seconds=ttl_s),
        )
        session.add(row)
        session.flush()
        detail = {"site": checked_site, "device": checked_device, "group": checked_group, "package": sha}
        record(session, actor, "enrollment-token.create", f"enrollment-token:{row.id}", detail)
        return CreatedEnrollmentToken(EnrollmentTokenInfo.of(row), secret)


def revoke_enrollment_token(store: Store, token_id: int, *, actor: Actor) -> EnrollmentTokenInfo:
    """Revoke an unused token; audited as ``enrollment-token.revoke``.

    Raises:
        NotFoundError: no such token.
    """
    with store.write() as session:
        row = session.get(EnrollmentToken, token_id, with_for_update=True)
        if row is None:
            raise NotFoundError(f"no enrollment token {token_id}")
        if row.revoked_at is None and row.used_at is None:
            row.revoked_at = datetime.now(UTC)
            record(session, actor, "enrollment-token.revoke", f"enrollment-token:{row.id}", {"site": row.site})
        return EnrollmentTokenInfo.of(row)


def list_enrollment_tokens(store: Store, limit: int = 200) -> list[EnrollmentTokenInfo]:
    """The newest tokens first."""
    with store.session() as session:
        rows = session.scalars(select(EnrollmentToken).order_by(EnrollmentToken.id.desc()).limit(limit))
        return [EnrollmentTokenInfo.of(row) for row in rows]


def provision_command(dashboard_url: str, created: CreatedEnrollmentToken, device: str | None = None) -> str:
    """The command a technician types on the appliance."""
    name = created.info.device or device or "DEVICE"
    return (
        f"medge provision --dashboard {dashboard_url.rstrip('/')} --token {created.secret} "
        f"--site {created.info.site} --device {name}"
    )


# Enrollment -----------------------------------------------------------------------------------------


def check_csr(csr_pem: str, site: str, device: str) -> str:
    """Check a CSR's own signature and its subject CN (``{site}/{device}``); return its public key's SHA-256.

    Raises:
        AccountError: not a PEM CSR, a bad signature, or another CN.
    """
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError as exc:
        raise AccountError("csr_pem is not a PEM certificate signing request", field="csr_pem") from exc
    if not csr.is_signature_valid:
        raise AccountError("the CSR's signature does not check out (it was not made with its key)", field="csr_pem")
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    expected = f"{site}/{device}"
    if len(names) != 1 or names[0].value != expected:
        found = names[0].value if names else None
        raise AccountError(f"the CSR's subject CN must be {expected!r}, not {found!r}", field="csr_pem")
    der = csr.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _throttle_key(client_ip: str | None) -> list[str]:
    return [f"{_THROTTLE_PREFIX}{client_ip[:150]}"] if client_ip else []


def enroll(
    store: Store,
    request: EnrollmentRequest,
    *,
    registrar: BrokerRegistrar | None,
    trusted_keys: list[str],
    throttle: ThrottlePolicy,
    client_ip: str | None = None,
    broker_host: str | None = None,
    broker_port: int | None = None,
) -> EnrollmentResponse:
    """Enroll one appliance with its single-use token (see the module docstring); audited as ``device.enroll``.

    Failed attempts (unknown, used, expired token; another site) count
    against the client address like failed logins.

    Raises:
        Unavailable: no broker registrar or no trusted keys configured, or the broker refused.
        LoginThrottled: too many failed attempts from this address.
        EnrollmentRefused: the token is unknown, used, revoked or expired.
        PermissionDenied: the token is for another site or device, or the device is enrolled already.
        AccountError: the CSR is not valid for this device.
    """
    if registrar is None:
        raise Unavailable(
            "enrollment is not set up on this dashboard: set [enrollment] broker_dir in its config "
            "so new devices get broker credentials"
        )
    if not trusted_keys:
        raise Unavailable("no trusted package-signing keys on this dashboard: add them to [packages] trusted_keys_dir")
    keys = _throttle_key(client_ip)
    now = datetime.now(UTC)
    with store.session() as session:
        wait = throttle.locked_for(session, keys, now) if keys else 0.0
    if wait > 0:
        raise LoginThrottled(
            f"too many failed enrollments from this address: try again in {wait:.0f} s", retry_after_s=wait
        )
    fingerprint = check_csr(request.csr_pem, request.site, request.device)
    try:
        with store.write() as session:
            return _enroll(
                session, request, fingerprint, registrar, trusted_keys, client_ip, now, broker_host, broker_port
            )
    except (EnrollmentRefused, PermissionDenied) as exc:
        with store.write() as session:
            if keys:
                throttle.failed(session, keys, datetime.now(UTC))
            actor = Actor(f"device:{request.site}/{request.device}", None, client_ip)
            detail = {"site": request.site, "device": request.device, "reason": str(exc)}
            record(session, actor, "device.enroll-refused", None, detail)
        logger.warning("enrollment of %s/%s refused: %s", request.site, request.device, exc)
        raise


def _enroll(
    session: Session,
    request: EnrollmentRequest,
    fingerprint: str,
    registrar: BrokerRegistrar,
    trusted_keys: list[str],
    client_ip: str | None,
    now: datetime,
    broker_host: str | None,
    broker_port: int | None,
) -> EnrollmentResponse:
    token = session.scalar(
        select(EnrollmentToken).where(EnrollmentToken.token_hash == secret_digest(request.token)).with_for_update()
    )
    if token is None:
        raise EnrollmentRefused("the enrollment token is not known: ask for a new one")
    if token.used_at is not None:
        raise EnrollmentRefused(f"the enrollment token was used already (by {token.used_by}): ask for a new one")
    if token.revoked_at is not None:
        raise EnrollmentRefused("the enrollment token was revoked: ask for a new one")
    if token.expires_at <= now:
        raise EnrollmentRefused(f"the enrollment token expired at {token.expires_at:%Y-%m-%d %H:%M} UTC")
    if token.site != request.site:
        raise PermissionDenied(f"this token enrolls devices of site {token.site!r}, not {request.site!r}")
    if token.device is not None and token.device != request.device:
        raise PermissionDenied(f"this token enrolls device {token.device!r} only, not {request.device!r}")
    device = _device_row(session, request.site, request.device, now)
    credential = session.scalar(select(DeviceCredential).where(DeviceCredential.device_id == device.id))
    if credential is not None and token.device is None:
        raise PermissionDenied(
            f"{request.site}/{request.device} is enrolled already: re-enrolling it needs a token made for that device"
        )
    # The claim itself: conditional, so that of two concurrent uses exactly one changes the row.
    claimed = session.execute(
        update(EnrollmentToken)
        .where(EnrollmentToken.id == token.id, EnrollmentToken.used_at.is_(None))
        .values(used_at=now, used_by=f"{request.site}/{request.device}")
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        raise EnrollmentRefused("the enrollment token was used already: ask for a new one")
    device_token = DEVICE_TOKEN_PREFIX + secrets.token_urlsafe(32)
    if credential is None:
        credential = DeviceCredential(device_id=device.id, token_hash="", enrolled_at=now, public_key_sha256="")
        session.add(credential)
    credential.token_hash = secret_digest(device_token)
    credential.enrolled_at = now
    credential.public_key_sha256 = fingerprint
    credential.device_group = token.device_group
    credential.profile = request.profile[:64] if request.profile else None
    credential.medge_version = request.medge_version[:64] or None
    credential.enrollment_token_id = token.id
    offer = None
    if token.package_sha256 is not None:
        package = session.get(Package, token.package_sha256)
        if package is not None:
            offer = PackageOffer(
                name=package.name,
                version=package.version,
                sha256=package.sha256,
                size=package.size,
                url=package_url(package.sha256),
            )
            session.add(
                Rollout(
                    update_id=f"enroll-{uuid.uuid4()}",
                    device_id=device.id,
                    package_sha256=package.sha256,
                    force=False,
                    requested_by=token.created_by,
                    created_at=now,
                    state=RolloutState.OFFERED,
                    updated_at=now,
                )
            )
    session.flush()
    try:
        grant = registrar.register(request.site, request.device, request.csr_pem)
    except MedgeError as exc:
        raise Unavailable(f"the broker could not register {request.site}/{request.device}: {exc}") from exc
    changes: dict[str, object] = {}
    if broker_host:
        changes["host"] = broker_host
    if broker_port:
        changes["port"] = broker_port
    if changes:
        grant = grant.model_copy(update=changes)
    actor = Actor(f"device:{request.site}/{request.device}", None, client_ip)
    detail = {
        "site": request.site,
        "device": request.device,
        "group": token.device_group,
        "token": f"enrollment-token:{token.id}",
        "token_created_by": token.created_by,
        "key_sha256": fingerprint,
        "package": token.package_sha256,
        "profile": request.profile,
        "medge_version": request.medge_version,
    }
    record(session, actor, "device.enroll", f"device:{device.id}", detail)
    logger.info("enrolled %s/%s (token %d)", request.site, request.device, token.id)
    return EnrollmentResponse(
        site=request.site,
        device=request.device,
        device_token=device_token,
        mqtt=grant,
        trusted_keys=trusted_keys,
        package=offer,
    )


def _device_row(session: Session, site: str, device: str, now: datetime) -> Device:
    """The device's row, created as the ingest would (it may be racing us to it)."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    table: Table = Device.__table__  # type: ignore[assignment]
    row = {
        "site": site,
        "device": device,
        "first_seen": now,
        "last_seen": now,
        "state": DeviceState.UNKNOWN,
        "missing_count": 0,
        "findings_count": 0,
    }
    session.execute(insert(table).on_conflict_do_nothing(index_elements=["site", "device"]), [row])
    found = session.scalar(select(Device).where(Device.site == site, Device.device == device))
    assert found is not None
    return found


# Device tokens ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceIdentity:
    """An enrolled device, as its bearer token proved it."""

    device_id: int
    site: str
    device: str


def authenticate_device(store: Store, authorization: str | None) -> DeviceIdentity:
    """The device behind ``Authorization: Bearer <device token>``.

    Raises:
        EnrollmentRefused: no bearer token, or not a current device token.
    """
    scheme, _, secret = (authorization or "").partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        raise EnrollmentRefused("send the device token: Authorization: Bearer <device token>")
    if not secret.startswith(DEVICE_TOKEN_PREFIX) or len(secret) > 200:
        raise EnrollmentRefused("the device token is not valid")
    digest = secret_digest(secret)
    with store.session() as session:
        row = session.execute(
            select(DeviceCredential.token_hash, Device.id, Device.site, Device.device)
            .join(Device, Device.id == DeviceCredential.device_id)
            .where(DeviceCredential.token_hash == digest)
        ).first()
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        raise EnrollmentRefused("the device token is not valid")
    return DeviceIdentity(row.id, row.site, row.device)
