"""The worklist (``/``) and a finding's page, with its acknowledge and review forms."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import func, select

from dashboard.auth.roles import Permission
from dashboard.errors import TransitionError
from dashboard.store.models import Device, Finding, Verdict
from dashboard.web.deps import ActsOnFindings, ContextDep, FindingsViewer, PrincipalDep, actor_of
from dashboard.web.pages.auth import safe_next
from dashboard.web.queries import filter_from_form, view_finding
from dashboard.workflow import MAX_COMMENT_LENGTH, acknowledge, allowed_next, review
from dashboard.worklist import InvalidCursor, findings_page

router = APIRouter(include_in_schema=False)

_FILTER_FIELDS = ("site", "device", "modality", "label", "state", "positive", "from", "to", "sort")


@router.get("/", response_class=HTMLResponse)
def worklist(request: Request, principal: PrincipalDep, context: ContextDep) -> Response:
    if not principal.can(Permission.VIEW_FINDINGS):
        return RedirectResponse("/fleet", status_code=303)  # a technician's home is the fleet
    params = {key: value for key, value in request.query_params.items() if key in (*_FILTER_FIELDS, "cursor")}
    which = filter_from_form(params, context.renderer.zone)
    cursor = params.get("cursor") or None
    with context.store.session() as session:
        try:
            page = findings_page(session, which, limit=context.config.web.page_size, cursor=cursor)
        except InvalidCursor:
            cursor = None
            page = findings_page(session, which, limit=context.config.web.page_size)
        newest = session.scalar(select(func.max(Finding.id))) or 0
    kept = {key: params[key] for key in _FILTER_FIELDS if params.get(key)}
    next_url = "/?" + urlencode({**kept, "cursor": page.next_cursor}) if page.next_cursor else None
    return context.renderer.page(
        request,
        "worklist.html",
        {
            "rows": page.items,
            "filters": {key: params.get(key, "") for key in _FILTER_FIELDS},
            "options": context.filter_options(),
            "next_url": next_url,
            "first_page": cursor is None,
            "newest_id": newest,
            "can_act": principal.can(Permission.ACT_ON_FINDINGS),
            "here": request.url.path + (f"?{request.url.query}" if request.url.query else ""),
        },
    )


@router.get("/findings/{finding_id}", response_class=HTMLResponse)
def finding_page(finding_id: int, request: Request, principal: FindingsViewer, context: ContextDep) -> Response:
    finding, feedback = view_finding(context.store, finding_id, actor_of(principal), via="page")
    with context.store.session() as session:
        device = session.get(Device, finding.device_id)
    return context.renderer.page(
        request,
        "finding.html",
        {
            "finding": finding,
            "feedback": feedback,
            "device_id": None if device is None else device.id,
            "next_states": {state.value for state in allowed_next(finding.state)},
            "can_act": principal.can(Permission.ACT_ON_FINDINGS),
            "show_accession": context.config.web.show_accession_number,
            "max_comment": MAX_COMMENT_LENGTH,
            "verdicts": list(Verdict),
        },
    )


@router.post("/findings/{finding_id}/acknowledge")
def acknowledge_form(
    finding_id: int, principal: ActsOnFindings, context: ContextDep, next: Annotated[str, Form()] = ""
) -> Response:
    acknowledge(context.store, finding_id, actor=actor_of(principal))
    return RedirectResponse(safe_next(next or f"/findings/{finding_id}"), status_code=303)


@router.post("/findings/{finding_id}/review")
def review_form(
    finding_id: int,
    principal: ActsOnFindings,
    context: ContextDep,
    verdict: Annotated[str, Form()],
    comment: Annotated[str, Form(max_length=MAX_COMMENT_LENGTH)] = "",
) -> Response:
    if verdict not in {v.value for v in Verdict}:
        raise TransitionError(f"a review needs a verdict ({' or '.join(v.value for v in Verdict)})")
    review(context.store, finding_id, verdict, comment, actor=actor_of(principal))
    return RedirectResponse(f"/findings/{finding_id}", status_code=303)
