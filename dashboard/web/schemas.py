"""What the REST API returns and accepts (pydantic), in families: a summary for lists, a detail for one.

Response models are built from store rows field by field, so a column added
to a table never leaks into the API by accident (password hashes, token
hashes and session rows have no public model at all).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dashboard.enrollment import EnrollmentTokenInfo
from dashboard.packages import PackageInfo
from dashboard.rollouts import RolloutInfo
from dashboard.store.models import Event, Feedback, Finding, FindingState, RolloutState, Verdict
from sdk.fleet_contracts import KeyRotation

__all__ = [
    "AuditEntryPublic",
    "AuditPage",
    "DeviceMetricsPublic",
    "DevicePublic",
    "EnrollmentTokenCreate",
    "EnrollmentTokenCreated",
    "EnrollmentTokenPublic",
    "EventPublic",
    "EventsPage",
    "FeedbackPublic",
    "FindingDetail",
    "FindingSummary",
    "FindingsPagePublic",
    "KeyRotationRequest",
    "MePublic",
    "ModelPackagePublic",
    "PackagePublic",
    "ReviewRequest",
    "RolloutPublic",
    "RolloutRequest",
    "RolloutStepPublic",
    "SentCommandPublic",
]


class _Public(BaseModel):
    model_config = ConfigDict(frozen=True)


class PackagePublic(_Public):
    """The model package that produced a finding."""

    name: str
    version: str
    precision: str
    profile: str


class FindingSummary(_Public):
    """A finding as the worklist lists it (no study reference)."""

    id: int
    message_id: str = Field(description="the appliance's finding id (stable across re-sends)")
    site: str
    device: str
    seq: int
    modality: str
    label: str
    score: float
    threshold: float
    positive: bool
    state: FindingState
    created: datetime = Field(description="when the appliance made it")
    received_at: datetime = Field(description="when the dashboard committed it")
    package: PackagePublic
    url: str

    @classmethod
    def of(cls, row: Finding) -> FindingSummary:
        return cls(**_summary_fields(row))


def _summary_fields(row: Finding) -> dict[str, Any]:
    return {
        "id": row.id,
        "message_id": row.message_id,
        "site": row.site,
        "device": row.device,
        "seq": row.seq,
        "modality": row.modality,
        "label": row.label,
        "score": row.score,
        "threshold": row.threshold,
        "positive": row.positive,
        "state": row.state,
        "created": row.created,
        "received_at": row.received_at,
        "package": PackagePublic(
            name=row.package_name,
            version=row.package_version,
            precision=row.package_precision,
            profile=row.package_profile,
        ),
        "url": f"/findings/{row.id}",
    }


class FeedbackPublic(_Public):
    """What staff did with a finding."""

    acknowledged_by: str
    acknowledged_at: datetime
    reviewed_by: str | None
    reviewed_at: datetime | None
    verdict: Verdict | None
    comment: str | None

    @classmethod
    def of(cls, row: Feedback) -> FeedbackPublic:
        return cls(
            acknowledged_by=row.acknowledged_by,
            acknowledged_at=row.acknowledged_at,
            reviewed_by=row.reviewed_by,
            reviewed_at=row.reviewed_at,
            verdict=row.verdict,
            comment=row.comment,
        )


class FindingDetail(FindingSummary):
    """One finding whole, with its study reference (reading it is audited)."""

    package_sha256: str
    scores: dict[str, float]
    latency_ms: dict[str, float]
    location: dict[str, Any] | None
    flags: list[str]
    frame: int | None
    study_ref: str = Field(description="keyed pseudonym of the study (HMAC with the site key)")
    series_ref: str
    instance_ref: str
    accession_number: str | None = Field(
        description="only when the site's PHI policy sends it and the dashboard shows it"
    )
    patient_id: str | None = Field(description="only when the site's PHI policy sends it and the dashboard shows it")
    state_changed_at: datetime | None
    feedback: FeedbackPublic | None

    @classmethod
    def of_row(cls, row: Finding, feedback: Feedback | None, *, show_accession: bool) -> FindingDetail:
        return cls(
            **_summary_fields(row),
            package_sha256=row.package_sha256,
            scores=row.scores,
            latency_ms=row.latency_ms,
            location=row.location,
            flags=row.flags,
            frame=row.frame,
            study_ref=row.study_ref,
            series_ref=row.series_ref,
            instance_ref=row.instance_ref,
            accession_number=row.accession_number if show_accession else None,
            patient_id=row.patient_id if show_accession else None,
            state_changed_at=row.state_changed_at,
            feedback=None if feedback is None else FeedbackPublic.of(feedback),
        )


class FindingsPagePublic(_Public):
    """One page of findings; pass ``next_cursor`` as ``cursor`` for the next."""

    items: list[FindingSummary]
    next_cursor: str | None


class ReviewRequest(BaseModel):
    """A reviewer's verdict on an acknowledged finding."""

    model_config = ConfigDict(extra="forbid")

    verdict: Verdict
    comment: str | None = Field(default=None, max_length=2000)


class DevicePublic(_Public):
    """One appliance's health (see the fleet page)."""

    id: int
    site: str
    device: str
    online: bool
    state: Literal["online", "offline", "unknown"]
    offline_reason: str | None
    silent_s: float = Field(description="seconds since anything was heard from it")
    last_seen: datetime
    version: str | None
    packages: list[dict[str, Any]]
    engines: list[dict[str, Any]]
    degraded: bool
    degraded_reasons: list[str]
    queue_depth: int | None
    outbox_depth: int | None
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    alarms: list[str]
    last_heartbeat_at: datetime | None
    findings_count: int
    max_seq: int | None
    missing_count: int = Field(description="finding sequence numbers never received")
    last_error: dict[str, Any] | None


class DeviceMetricsPublic(_Public):
    """The series a device page charts, oldest first."""

    hours: int
    findings_per_hour: list[tuple[str, int, int]] = Field(description="[hour start, findings, positives]")
    latency: list[tuple[str, float | None, float | None]] = Field(description="[time, p50 ms, p95 ms]")
    queue_depth: list[tuple[str, int, int]] = Field(description="[time, queued instances, outbox depth]")
    gaps: list[tuple[int, int]] = Field(description="finding sequence numbers missing, [first, last], newest first")


class EventPublic(_Public):
    """Something that happened on an appliance."""

    id: int
    message_id: str
    site: str
    device: str
    kind: str
    severity: str
    message: str
    detail: dict[str, Any]
    created: datetime
    received_at: datetime

    @classmethod
    def of(cls, row: Event) -> EventPublic:
        return cls(
            id=row.id,
            message_id=row.message_id,
            site=row.site,
            device=row.device,
            kind=row.kind,
            severity=row.severity,
            message=row.message,
            detail=row.detail,
            created=row.created,
            received_at=row.received_at,
        )


class EventsPage(_Public):
    """Events newest first; pass ``next_before`` as ``before`` for the next page."""

    items: list[EventPublic]
    next_before: int | None


class AuditEntryPublic(_Public):
    """One audit log entry."""

    id: int
    at: datetime
    actor: str
    role: str | None
    client_ip: str | None
    action: str
    target: str | None
    detail: dict[str, Any]
    prev_hash: str
    hash: str


class AuditPage(_Public):
    """Audit entries newest first; pass ``next_before`` as ``before`` for the next page."""

    items: list[AuditEntryPublic]
    next_before: int | None


class MePublic(_Public):
    """Who the API sees."""

    name: str
    kind: Literal["session", "token"]
    role: str
    permissions: list[str]


# Enrollment, packages, rollouts (issue 7) -------------------------------------------------------------

_SEGMENT = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class EnrollmentTokenCreate(BaseModel):
    """Ask for an enrollment token."""

    model_config = ConfigDict(extra="forbid")

    site: str = Field(pattern=_SEGMENT, description="the site the device belongs to")
    device: str | None = Field(default=None, pattern=_SEGMENT, description="the only device name it may enroll")
    group: str | None = Field(default=None, pattern=_SEGMENT, description="the group the device joins")
    package_sha256: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{64}$", description="a package to offer the device at enrollment"
    )
    ttl_s: float | None = Field(default=None, gt=0, description="validity; default and maximum: enrollment.token_ttl_s")


class EnrollmentTokenPublic(_Public):
    """An enrollment token as listed (never the token itself)."""

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
    state: Literal["active", "used", "revoked", "expired"]

    @classmethod
    def of(cls, info: EnrollmentTokenInfo) -> EnrollmentTokenPublic:
        return cls(
            id=info.id,
            prefix=info.prefix,
            site=info.site,
            device=info.device,
            group=info.group,
            package_sha256=info.package_sha256,
            created_by=info.created_by,
            created_at=info.created_at,
            expires_at=info.expires_at,
            used_at=info.used_at,
            used_by=info.used_by,
            revoked_at=info.revoked_at,
            state=info.state(),  # type: ignore[arg-type]
        )


class EnrollmentTokenCreated(_Public):
    """A new enrollment token: ``token`` is shown this once."""

    token: str
    command: str = Field(description="what to type on the appliance")
    info: EnrollmentTokenPublic


class ModelPackagePublic(_Public):
    """An uploaded, verified model package."""

    sha256: str
    name: str
    version: str
    profile: str
    precision: str
    size: int
    signer_key_id: str
    uploaded_by: str
    uploaded_at: datetime

    @classmethod
    def of(cls, info: PackageInfo) -> ModelPackagePublic:
        return cls(
            sha256=info.sha256,
            name=info.name,
            version=info.version,
            profile=info.profile,
            precision=info.precision,
            size=info.size,
            signer_key_id=info.signer_key_id,
            uploaded_by=info.uploaded_by,
            uploaded_at=info.uploaded_at,
        )


class RolloutRequest(BaseModel):
    """Send a package to devices (row ids), groups and sites."""

    model_config = ConfigDict(extra="forbid")

    devices: list[int] = []
    groups: list[str] = []
    sites: list[str] = []
    force: bool = Field(default=False, description="send it even if the version does not go up (admins only)")


class RolloutStepPublic(_Public):
    """A step a device reported."""

    step: str
    ok: bool
    reason: str | None
    progress: float | None
    created: datetime
    received_at: datetime


class RolloutPublic(_Public):
    """One package going to one device, and where it stands."""

    update_id: str
    device_id: int
    site: str
    device: str
    package_sha256: str
    package: str = Field(description="'{name} {version}'")
    force: bool
    requested_by: str
    created_at: datetime
    state: RolloutState
    last_step: str | None
    progress: float | None
    reason: str | None
    updated_at: datetime
    steps: list[RolloutStepPublic]

    @classmethod
    def of(cls, info: RolloutInfo) -> RolloutPublic:
        return cls(
            update_id=info.update_id,
            device_id=info.device_id,
            site=info.site,
            device=info.device,
            package_sha256=info.package_sha256,
            package=f"{info.package_name} {info.package_version}",
            force=info.force,
            requested_by=info.requested_by,
            created_at=info.created_at,
            state=info.state,
            last_step=info.last_step,
            progress=info.progress,
            reason=info.reason,
            updated_at=info.updated_at,
            steps=[
                RolloutStepPublic(
                    step=s.step,
                    ok=s.ok,
                    reason=s.reason,
                    progress=s.progress,
                    created=s.created,
                    received_at=s.received_at,
                )
                for s in info.steps
            ],
        )


class KeyRotationRequest(BaseModel):
    """Send an endorsed key change (``medge keys endorse``) to devices, groups and sites (admins only)."""

    model_config = ConfigDict(extra="forbid")

    rotation: KeyRotation
    devices: list[int] = []
    groups: list[str] = []
    sites: list[str] = []


class SentCommandPublic(_Public):
    """A command published to a device; its answer carries ``command_id`` as correlation id."""

    site: str
    device: str
    command_id: str
