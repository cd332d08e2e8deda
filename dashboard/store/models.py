"""The dashboard's tables (SQLAlchemy 2 typed ORM).

The schema is owned by the Alembic migrations in ``dashboard/store/migrations``;
these classes must match them (a test compares the two). Every message table
keeps the message's own ``id`` as ``message_id`` under a unique constraint:
that is the idempotency key that turns at-least-once delivery into an
exactly-once effect. Rows get a small integer ``id`` too, for URLs and foreign
keys from the UI's own tables (feedback, audit).

Times are aware UTC datetimes. ``created`` is the device's clock (when the
message was made), ``received_at`` the dashboard's (when it was committed).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dashboard.store.types import JsonType, UtcDateTime

__all__ = [
    "ApiToken",
    "AuditEntry",
    "Base",
    "CommandResult",
    "DeadLetter",
    "DeadLetterCount",
    "DeadLetterReason",
    "Device",
    "DeviceCredential",
    "DeviceState",
    "EnrollmentToken",
    "Event",
    "Feedback",
    "Finding",
    "FindingState",
    "Heartbeat",
    "LoginThrottle",
    "Package",
    "Role",
    "Rollout",
    "RolloutState",
    "RolloutStep",
    "SequenceGap",
    "User",
    "Verdict",
    "WebSession",
]

# Named constraints, so migrations can address them (SQLite batch mode needs names).
_NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class DeviceState(StrEnum):
    """Whether an appliance is connected, from its retained status and will message."""

    UNKNOWN = "unknown"
    ONLINE = "online"
    OFFLINE = "offline"


class FindingState(StrEnum):
    """Where a finding is in the staff's workflow (issue 6: new → acknowledged → reviewed)."""

    NEW = "new"
    ACKNOWLEDGED = "acknowledged"
    REVIEWED = "reviewed"


class Role(StrEnum):
    """What a dashboard user may do (issue 6)."""

    CLINICIAN = "clinician"
    """Sees findings and acts on them (acknowledge, review), exports feedback."""
    TECHNICIAN = "technician"
    """Sees the fleet: appliances, their health and events."""
    ADMIN = "admin"
    """Everything, plus users, API tokens and the audit log."""


class RolloutState(StrEnum):
    """Where an update of one device stands (issue 7); the last three end it."""

    OFFERED = "offered"
    """Handed to the device at enrollment: its provisioning installs it."""
    SENT = "sent"
    """The ``update`` command is published; no answer yet."""
    RUNNING = "running"
    """The device accepted it and reports its steps."""
    DONE = "done"
    ROLLED_BACK = "rolled-back"
    REFUSED = "refused"

    @property
    def final(self) -> bool:
        return self in (RolloutState.DONE, RolloutState.ROLLED_BACK, RolloutState.REFUSED)


class Verdict(StrEnum):
    """A reviewer's judgement of a finding: the feedback that validates the model."""

    AGREE = "agree"
    DISAGREE = "disagree"


class DeadLetterReason(StrEnum):
    """Why a message was set aside instead of stored."""

    BAD_TOPIC = "bad-topic"
    """The topic is not ``medge/v1/{site}/{device}/{kind}`` or not a kind the dashboard ingests."""
    MALFORMED = "malformed"
    """The payload is not a JSON object."""
    SCHEMA = "schema"
    """Unknown schema, or a field is missing or invalid."""
    WRONG_KIND = "wrong-kind"
    """A valid message of another family than the topic's (e.g. an event on ``.../finding``)."""
    IDENTITY = "identity"
    """The payload's site/device differ from the topic's: no appliance speaks for another."""
    STORE = "store"
    """The database refused the row."""


def _enum(enum: type[StrEnum], length: int) -> Enum:
    # Stored as plain strings (the values), checked in Python: adding a state later
    # needs no ALTER TYPE on PostgreSQL and no table rebuild on SQLite.
    return Enum(
        enum,
        native_enum=False,
        create_constraint=False,
        length=length,
        values_callable=lambda members: [member.value for member in members],
    )


class Base(DeclarativeBase):
    """Declarative base of every dashboard table."""

    metadata = MetaData(naming_convention=_NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UtcDateTime(),
        dict[str, Any]: JsonType,
        list[Any]: JsonType,
    }


class Device(Base):
    """One appliance, created by its first message."""

    __tablename__ = "devices"
    __table_args__ = (UniqueConstraint("site", "device"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    site: Mapped[str] = mapped_column(String(64))
    device: Mapped[str] = mapped_column(String(64))
    first_seen: Mapped[datetime]
    last_seen: Mapped[datetime] = mapped_column(comment="when any message of it was last received")
    state: Mapped[DeviceState] = mapped_column(_enum(DeviceState, 16), default=DeviceState.UNKNOWN)
    state_changed_at: Mapped[datetime | None]
    status: Mapped[dict[str, Any] | None] = mapped_column(comment="the last status message (packages, version)")
    last_heartbeat_at: Mapped[datetime | None]
    last_heartbeat: Mapped[dict[str, Any] | None]
    max_seq: Mapped[int | None] = mapped_column(comment="highest finding sequence number received")
    missing_count: Mapped[int] = mapped_column(default=0, comment="sequence numbers below max_seq never received")
    findings_count: Mapped[int] = mapped_column(default=0)


class SequenceGap(Base):
    """A run of finding sequence numbers of one device not (yet) received: ``first_seq..last_seq``."""

    __tablename__ = "sequence_gaps"
    __table_args__ = (Index(None, "device_id", "first_seq"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    first_seq: Mapped[int]
    last_seq: Mapped[int]
    detected_at: Mapped[datetime]


class Finding(Base):
    """One finding message, flattened for the worklist's filters and sorts."""

    __tablename__ = "findings"
    __table_args__ = (
        Index(None, "created"),
        Index(None, "site", "device", "created"),
        Index(None, "label", "created"),
        Index(None, "positive", "created"),
        Index(None, "state", "created"),
        Index(None, "modality", "created"),
        Index(None, "device_id", "seq"),
        Index(None, "score"),
        Index(None, "received_at"),
        Index(None, "state_changed_at"),
        Index(None, "state", "score"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[str] = mapped_column(String(128), unique=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"))
    site: Mapped[str] = mapped_column(String(64))
    device: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int]
    package_name: Mapped[str] = mapped_column(String)
    package_version: Mapped[str] = mapped_column(String)
    package_precision: Mapped[str] = mapped_column(String)
    package_profile: Mapped[str] = mapped_column(String)
    package_sha256: Mapped[str] = mapped_column(String(64))
    study_ref: Mapped[str] = mapped_column(String)
    series_ref: Mapped[str] = mapped_column(String)
    instance_ref: Mapped[str] = mapped_column(String)
    accession_number: Mapped[str | None] = mapped_column(String)
    patient_id: Mapped[str | None] = mapped_column(String)
    modality: Mapped[str] = mapped_column(String)
    frame: Mapped[int | None]
    label: Mapped[str] = mapped_column(String)
    score: Mapped[float]
    scores: Mapped[dict[str, Any]]
    threshold: Mapped[float]
    positive: Mapped[bool]
    location: Mapped[dict[str, Any] | None]
    flags: Mapped[list[Any]]
    latency_ms: Mapped[dict[str, Any]]
    created: Mapped[datetime] = mapped_column(comment="device time the finding was made")
    received_at: Mapped[datetime]
    state: Mapped[FindingState] = mapped_column(_enum(FindingState, 16), default=FindingState.NEW)
    state_changed_at: Mapped[datetime | None]


class Event(Base):
    """Something that happened on a device: a rejection, an error, a model change."""

    __tablename__ = "events"
    __table_args__ = (
        Index(None, "created"),
        Index(None, "device_id", "created"),
        Index(None, "severity", "created"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[str] = mapped_column(String(128), unique=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"))
    site: Mapped[str] = mapped_column(String(64))
    device: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    detail: Mapped[dict[str, Any]]
    created: Mapped[datetime]
    received_at: Mapped[datetime]


class Heartbeat(Base):
    """One heartbeat, kept for the device page's charts (the newest ``heartbeat_history`` per device)."""

    __tablename__ = "heartbeats"
    __table_args__ = (Index(None, "device_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[str] = mapped_column(String(128))
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    created: Mapped[datetime]
    received_at: Mapped[datetime]
    uptime_s: Mapped[float]
    queue_depth: Mapped[int] = mapped_column(comment="sum of the device's queues")
    outbox_depth: Mapped[int]
    latency_ms_p50: Mapped[float | None]
    latency_ms_p95: Mapped[float | None]
    degraded: Mapped[bool] = mapped_column(comment="an engine runs degraded (e.g. fell back to CPU)")
    alarms: Mapped[list[Any]]
    payload: Mapped[dict[str, Any]] = mapped_column(comment="the whole heartbeat message")


class CommandResult(Base):
    """A device's answer to a command, matched by ``correlation_id``."""

    __tablename__ = "command_results"

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[str] = mapped_column(String(128), unique=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id"))
    correlation_id: Mapped[str] = mapped_column(String(128), index=True)
    ok: Mapped[bool]
    result: Mapped[dict[str, Any]]
    error: Mapped[str | None] = mapped_column(Text)
    created: Mapped[datetime]
    received_at: Mapped[datetime]


class DeadLetter(Base):
    """A message that could not be stored, kept whole (up to a size cap) with the reason."""

    __tablename__ = "dead_letters"
    __table_args__ = (Index(None, "received_at"), Index(None, "reason", "received_at"))

    id: Mapped[int] = mapped_column(primary_key=True)
    topic: Mapped[str] = mapped_column(Text)
    site: Mapped[str | None] = mapped_column(String(64), comment="from the topic, when it parses")
    device: Mapped[str | None] = mapped_column(String(64), comment="from the topic, when it parses")
    reason: Mapped[DeadLetterReason] = mapped_column(_enum(DeadLetterReason, 32))
    detail: Mapped[str] = mapped_column(Text)
    message_id: Mapped[str | None] = mapped_column(String(128), comment="the payload's id, when it has one")
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    payload_text: Mapped[str | None] = mapped_column(Text, comment="the payload as text, when it is UTF-8")
    payload_size: Mapped[int] = mapped_column(Integer, comment="bytes received (payload may be truncated)")
    acked: Mapped[bool] = mapped_column(comment="acknowledged to its device so it leaves the outbox")
    received_at: Mapped[datetime]


class DeadLetterCount(Base):
    """How many messages were dead-lettered for each reason (kept when old dead letters are purged)."""

    __tablename__ = "dead_letter_counts"

    reason: Mapped[DeadLetterReason] = mapped_column(_enum(DeadLetterReason, 32), primary_key=True)
    count: Mapped[int]
    first_at: Mapped[datetime]
    last_at: Mapped[datetime]


# The web UI's own tables (revision 0002) -----------------------------------------------------------


class User(Base):
    """A person who logs in to the dashboard. Users are disabled, never deleted: the audit log names them."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[Role] = mapped_column(_enum(Role, 16))
    password_hash: Mapped[str] = mapped_column(String(255), comment="scrypt$N$r$p$salt$hash")
    disabled: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime]
    created_by: Mapped[str | None] = mapped_column(String(64), comment="who created it; NULL: the command line")
    password_changed_at: Mapped[datetime]
    last_login_at: Mapped[datetime | None]


class WebSession(Base):
    """A logged-in browser. The cookie holds a random token; only its SHA-256 is stored."""

    __tablename__ = "web_sessions"
    __table_args__ = (Index(None, "user_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    csrf_token: Mapped[str] = mapped_column(String(64), comment="every form and state-changing request carries it")
    created_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(comment="absolute end, whatever the activity")
    client_ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(256))


class ApiToken(Base):
    """A bearer token for scripts, created by an admin. Only its SHA-256 is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    prefix: Mapped[str] = mapped_column(String(16), comment="the token's first characters, to recognise it")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[Role] = mapped_column(_enum(Role, 16))
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class LoginThrottle(Base):
    """Failed logins of one username or one client address, and the lockout they earned."""

    __tablename__ = "login_throttle"

    key: Mapped[str] = mapped_column(String(200), primary_key=True, comment="user:<name> or ip:<address>")
    failures: Mapped[int]
    window_started_at: Mapped[datetime]
    locked_until: Mapped[datetime | None]


class Feedback(Base):
    """What staff did with one finding: who acknowledged it, who reviewed it, and their verdict."""

    __tablename__ = "feedback"
    __table_args__ = (Index(None, "reviewed_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    finding_id: Mapped[int] = mapped_column(ForeignKey("findings.id", ondelete="CASCADE"), unique=True)
    acknowledged_by: Mapped[str] = mapped_column(String(64))
    acknowledged_at: Mapped[datetime]
    reviewed_by: Mapped[str | None] = mapped_column(String(64))
    reviewed_at: Mapped[datetime | None]
    verdict: Mapped[Verdict | None] = mapped_column(_enum(Verdict, 16))
    comment: Mapped[str | None] = mapped_column(Text)


class AuditEntry(Base):
    """One line of the hash-chained audit log (see :mod:`dashboard.audit`).

    ``hash`` is the SHA-256 of the entry's canonical content, which includes
    ``prev_hash``, the previous entry's hash: changing, removing or inserting
    an entry breaks every hash after it. Ids are assigned by the writer, one
    more than the last entry, so a gap is visible too.
    """

    __tablename__ = "audit_log"
    __table_args__ = (Index(None, "at"), Index(None, "target"))

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(128), comment="username, token:<name>, or cli")
    role: Mapped[str | None] = mapped_column(String(16))
    client_ip: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(128), comment="e.g. finding:42, user:7")
    detail: Mapped[str] = mapped_column(Text, comment="canonical JSON")
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


# Enrollment, packages and rollouts (revision 0003) ----------------------------------------------------


class EnrollmentToken(Base):
    """A single-use, expiring token a technician hands to an appliance's provisioning. Only its SHA-256 is stored."""

    __tablename__ = "enrollment_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16), comment="the token's first characters, to recognise it")
    site: Mapped[str] = mapped_column(String(64))
    device: Mapped[str | None] = mapped_column(String(64), comment="the only device name it enrolls; NULL: any")
    device_group: Mapped[str | None] = mapped_column(String(64), comment="the group the device joins")
    package_sha256: Mapped[str | None] = mapped_column(
        ForeignKey("packages.sha256"), comment="the package offered to the device at enrollment"
    )
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    used_by: Mapped[str | None] = mapped_column(String(129), comment="site/device it enrolled")
    revoked_at: Mapped[datetime | None]


class DeviceCredential(Base):
    """How an enrolled appliance authenticates to the device API. Only its token's SHA-256 is stored."""

    __tablename__ = "device_credentials"

    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    enrolled_at: Mapped[datetime]
    public_key_sha256: Mapped[str] = mapped_column(String(64), comment="SHA-256 of the CSR's public key (DER)")
    device_group: Mapped[str | None] = mapped_column(String(64), index=True)
    profile: Mapped[str | None] = mapped_column(String(64))
    medge_version: Mapped[str | None] = mapped_column(String(64))
    enrollment_token_id: Mapped[int | None] = mapped_column(ForeignKey("enrollment_tokens.id"))


class Package(Base):
    """A signed model package uploaded to the dashboard, kept as a file named by its SHA-256."""

    __tablename__ = "packages"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64))
    profile: Mapped[str] = mapped_column(String(64))
    precision: Mapped[str] = mapped_column(String(16))
    size: Mapped[int] = mapped_column(BigInteger)
    signer_key_id: Mapped[str] = mapped_column(String(64))
    uploaded_by: Mapped[str] = mapped_column(String(64))
    uploaded_at: Mapped[datetime]
    file_path: Mapped[str] = mapped_column(Text)


class Rollout(Base):
    """One package going to one device: the ``update`` command sent and the steps the device reported."""

    __tablename__ = "rollouts"
    __table_args__ = (Index(None, "device_id", "created_at"), Index(None, "state"))

    id: Mapped[int] = mapped_column(primary_key=True)
    update_id: Mapped[str] = mapped_column(String(128), unique=True)
    device_id: Mapped[int] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"))
    package_sha256: Mapped[str] = mapped_column(ForeignKey("packages.sha256"))
    force: Mapped[bool]
    requested_by: Mapped[str] = mapped_column(String(128))
    command_id: Mapped[str | None] = mapped_column(String(128), index=True, comment="the update command's id")
    created_at: Mapped[datetime]
    state: Mapped[RolloutState] = mapped_column(_enum(RolloutState, 16))
    last_step: Mapped[str | None] = mapped_column(String(16))
    progress: Mapped[float | None]
    reason: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime]


class RolloutStep(Base):
    """One step a device reported for a rollout (an ``ota`` event), or its answer to the command."""

    __tablename__ = "rollout_steps"
    __table_args__ = (Index(None, "rollout_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"))
    message_id: Mapped[str] = mapped_column(String(128), unique=True, comment="the event or command result's id")
    step: Mapped[str] = mapped_column(String(16))
    ok: Mapped[bool]
    reason: Mapped[str | None] = mapped_column(Text)
    progress: Mapped[float | None]
    created: Mapped[datetime] = mapped_column(comment="device time")
    received_at: Mapped[datetime]
