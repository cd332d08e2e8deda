"""What the REST API returns and accepts (pydantic), in families: a summary for lists, a detail for one.

Response models are built from store rows field by field, so a column added
to a table never leaks into the API by accident (password hashes, token
hashes and session rows have no public model at all).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dashboard.store.models import Event, Feedback, Finding, FindingState, Verdict

__all__ = [
    "AuditEntryPublic",
    "AuditPage",
    "DeviceMetricsPublic",
    "DevicePublic",
    "EventPublic",
    "EventsPage",
    "FeedbackPublic",
    "FindingDetail",
    "FindingSummary",
    "FindingsPagePublic",
    "MePublic",
    "PackagePublic",
    "ReviewRequest",
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
