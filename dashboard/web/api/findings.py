"""``/api/v1/findings``: the worklist for scripts, one finding, acknowledge and review."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query

from dashboard.store.models import FindingState
from dashboard.web.deps import ActsOnFindings, ContextDep, FindingsViewer, actor_of
from dashboard.web.queries import view_finding
from dashboard.web.schemas import FindingDetail, FindingsPagePublic, FindingSummary, ReviewRequest
from dashboard.workflow import acknowledge, review
from dashboard.worklist import FindingFilter, InvalidCursor, findings_page

router = APIRouter(prefix="/api/v1/findings", tags=["findings"])


def _aware(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


@router.get("", response_model=FindingsPagePublic, summary="Findings, newest (or highest score) first, paged")
def list_findings(
    _principal: FindingsViewer,
    context: ContextDep,
    site: str | None = None,
    device: str | None = None,
    modality: str | None = None,
    label: str | None = None,
    state: FindingState | None = None,
    positive: bool | None = None,
    since: Annotated[datetime | None, Query(description="created at or after (ISO 8601; UTC if no offset)")] = None,
    until: Annotated[datetime | None, Query(description="created before")] = None,
    sort: Literal["time", "score"] = "time",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> FindingsPagePublic:
    which = FindingFilter(
        site=site,
        device=device,
        modality=modality,
        label=label,
        state=state,
        positive=positive,
        since=_aware(since),
        until=_aware(until),
        sort=sort,
    )
    try:
        with context.store.session() as session:
            page = findings_page(session, which, limit=limit, cursor=cursor)
            items = [FindingSummary.of(row) for row in page.items]
    except InvalidCursor as exc:
        raise HTTPException(400, str(exc)) from exc
    return FindingsPagePublic(items=items, next_cursor=page.next_cursor)


@router.get("/{finding_id}", response_model=FindingDetail, summary="One finding with its study reference (audited)")
def get_finding(finding_id: int, principal: FindingsViewer, context: ContextDep) -> FindingDetail:
    finding, feedback = view_finding(context.store, finding_id, actor_of(principal), via="api")
    return FindingDetail.of_row(finding, feedback, show_accession=context.config.web.show_accession_number)


@router.post("/{finding_id}/acknowledge", response_model=FindingDetail, summary="new → acknowledged")
def acknowledge_finding(finding_id: int, principal: ActsOnFindings, context: ContextDep) -> FindingDetail:
    actor = actor_of(principal)
    acknowledge(context.store, finding_id, actor=actor)
    finding, feedback = view_finding(context.store, finding_id, actor, via="api")
    return FindingDetail.of_row(finding, feedback, show_accession=context.config.web.show_accession_number)


@router.post("/{finding_id}/review", response_model=FindingDetail, summary="acknowledged → reviewed, with a verdict")
def review_finding(
    finding_id: int, body: ReviewRequest, principal: ActsOnFindings, context: ContextDep
) -> FindingDetail:
    actor = actor_of(principal)
    review(context.store, finding_id, body.verdict, body.comment, actor=actor)
    finding, feedback = view_finding(context.store, finding_id, actor, via="api")
    return FindingDetail.of_row(finding, feedback, show_accession=context.config.web.show_accession_number)
