"""Reads shared by the pages and the API: one finding (its view audited), events, the audit log."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select

from dashboard.audit import Actor, record
from dashboard.errors import NotFoundError
from dashboard.store.engine import Store
from dashboard.store.models import AuditEntry, Event, Feedback, Finding, FindingState
from dashboard.web.schemas import AuditEntryPublic
from dashboard.worklist import FindingFilter

__all__ = ["EventQuery", "audit_page", "events_page", "filter_from_form", "view_finding"]


def view_finding(store: Store, finding_id: int, actor: Actor, *, via: str) -> tuple[Finding, Feedback | None]:
    """Load a finding for display with its study reference, recording the view (``finding.view``).

    Raises:
        NotFoundError: no such finding (nothing is recorded).
    """
    with store.write() as session:
        finding = session.get(Finding, finding_id)
        if finding is None:
            raise NotFoundError(f"no finding {finding_id}")
        feedback = session.scalar(select(Feedback).where(Feedback.finding_id == finding_id))
        detail: dict[str, object] = {"message_id": finding.message_id, "study_ref": finding.study_ref, "via": via}
        if finding.accession_number is not None:
            detail["accession_number_shown"] = True
        if finding.patient_id is not None:
            detail["patient_id_shown"] = True
        record(session, actor, "finding.view", f"finding:{finding.id}", detail)
        return finding, feedback


def _day(value: str | None, zone: ZoneInfo) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.combine(date.fromisoformat(value), time(), zone).astimezone(UTC)
    except ValueError:
        return None


def filter_from_form(params: dict[str, str], zone: ZoneInfo) -> FindingFilter:
    """The worklist filter from the page's query string (empty fields mean any; dates are local days)."""

    def text(name: str) -> str | None:
        value = params.get(name, "").strip()
        return value or None

    state = text("state")
    positive = text("positive")
    until = _day(text("to"), zone)
    return FindingFilter(
        site=text("site"),
        device=text("device"),
        modality=text("modality"),
        label=text("label"),
        state=FindingState(state) if state in {s.value for s in FindingState} else None,
        positive={"1": True, "0": False}.get(positive or ""),
        since=_day(text("from"), zone),
        until=None if until is None else until + timedelta(days=1),
        sort="score" if params.get("sort") == "score" else "time",
    )


@dataclass(frozen=True)
class EventQuery:
    """Which events: of one device, of at least one severity, before an id (paging)."""

    device_id: int | None = None
    severity: str | None = None
    before: int | None = None
    limit: int = 100


def events_page(store: Store, query: EventQuery) -> tuple[list[Event], int | None]:
    """Events newest first, and the ``before`` of the next page."""
    statement = select(Event)
    if query.device_id is not None:
        statement = statement.where(Event.device_id == query.device_id)
    if query.severity:
        statement = statement.where(Event.severity == query.severity)
    if query.before is not None:
        statement = statement.where(Event.id < query.before)
    with store.session() as session:
        rows = list(session.scalars(statement.order_by(Event.id.desc()).limit(query.limit + 1)))
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    return rows, rows[-1].id if more and rows else None


def _detail(text: str) -> dict[str, object]:
    try:
        value = json.loads(text)
    except ValueError:
        return {"unparsable": text}  # tampered with; audit-verify names the entry
    return value if isinstance(value, dict) else {"value": value}


def audit_page(
    store: Store, *, before: int | None, limit: int, action: str | None = None
) -> tuple[list[AuditEntryPublic], int | None]:
    """Audit entries newest first, and the ``before`` of the next page."""
    statement = select(AuditEntry)
    if before is not None:
        statement = statement.where(AuditEntry.id < before)
    if action:
        statement = statement.where(AuditEntry.action == action)
    with store.session() as session:
        rows = list(session.scalars(statement.order_by(AuditEntry.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    items = [
        AuditEntryPublic(
            id=row.id,
            at=row.at,
            actor=row.actor,
            role=row.role,
            client_ip=row.client_ip,
            action=row.action,
            target=row.target,
            detail=_detail(row.detail),
            prev_hash=row.prev_hash,
            hash=row.hash,
        )
        for row in rows
    ]
    return items, rows[-1].id if more and rows else None
