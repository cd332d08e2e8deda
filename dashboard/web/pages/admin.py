"""Admin pages: users and API tokens, the audit log (and its verification), the dashboard's own health."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from dashboard.audit import ChainReport, record, verify_chain
from dashboard.auth.accounts import create_user, list_users, set_disabled
from dashboard.auth.tokens import CreatedToken, create_token, list_tokens, revoke_token
from dashboard.errors import AccountError
from dashboard.store.models import Role
from dashboard.web.deps import AuditViewer, ContextDep, UserManager, actor_of
from dashboard.web.queries import audit_page

router = APIRouter(prefix="/admin", include_in_schema=False)


@router.get("")
def admin_home(_principal: UserManager) -> Response:
    return RedirectResponse("/admin/users", status_code=303)


def _users_page(
    request: Request,
    context: ContextDep,
    *,
    error: str | None = None,
    created_token: CreatedToken | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    return context.renderer.page(
        request,
        "admin/users.html",
        {
            "users": list_users(context.store),
            "tokens": list_tokens(context.store),
            "roles": list(Role),
            "error": error,
            "created_token": created_token,
        },
        status_code=status_code,
    )


@router.get("/users", response_class=HTMLResponse)
def users_page(request: Request, _principal: UserManager, context: ContextDep) -> Response:
    return _users_page(request, context)


@router.post("/users")
def add_user(
    request: Request,
    principal: UserManager,
    context: ContextDep,
    username: Annotated[str, Form(max_length=64)],
    role: Annotated[str, Form()],
    password: Annotated[str, Form(max_length=1024)],
) -> Response:
    try:
        create_user(context.store, username, role, password, actor=actor_of(principal))
    except AccountError as exc:
        return _users_page(request, context, error=str(exc), status_code=400)
    return RedirectResponse("/admin/users", status_code=303)


@router.post("/users/{user_id}/disable")
def disable_user(user_id: int, request: Request, principal: UserManager, context: ContextDep) -> Response:
    try:
        set_disabled(context.store, user_id, True, actor=actor_of(principal))
    except AccountError as exc:
        return _users_page(request, context, error=str(exc), status_code=400)
    return RedirectResponse("/admin/users", status_code=303)


@router.post("/users/{user_id}/enable")
def enable_user(user_id: int, principal: UserManager, context: ContextDep) -> Response:
    set_disabled(context.store, user_id, False, actor=actor_of(principal))
    return RedirectResponse("/admin/users", status_code=303)


@router.post("/tokens", response_class=HTMLResponse)
def add_token(
    request: Request,
    principal: UserManager,
    context: ContextDep,
    name: Annotated[str, Form(max_length=64)],
    role: Annotated[str, Form()],
    valid_days: Annotated[str, Form()] = "",
) -> Response:
    try:
        days = float(valid_days) if valid_days.strip() else None
        created = create_token(context.store, name, role, actor=actor_of(principal), valid_days=days)
    except ValueError as exc:  # AccountError is a MedgeError; a bad number is a ValueError
        return _users_page(request, context, error=str(exc), status_code=400)
    except AccountError as exc:
        return _users_page(request, context, error=str(exc), status_code=400)
    # Shown once, on this response only: it is not stored.
    return _users_page(request, context, created_token=created)


@router.post("/tokens/{token_id}/revoke")
def revoke(token_id: int, principal: UserManager, context: ContextDep) -> Response:
    revoke_token(context.store, token_id, actor=actor_of(principal))
    return RedirectResponse("/admin/users", status_code=303)


def _audit_page(
    request: Request, context: ContextDep, *, report: ChainReport | None = None, status_code: int = 200
) -> HTMLResponse:
    params = request.query_params
    before = int(params["before"]) if params.get("before", "").isdigit() else None
    action = params.get("action") or None
    items, next_before = audit_page(context.store, before=before, limit=100, action=action)
    query: dict[str, Any] = {"before": next_before}
    if action:
        query["action"] = action
    return context.renderer.page(
        request,
        "admin/audit.html",
        {
            "entries": items,
            "next_before": next_before,
            "action": action or "",
            "report": report,
        },
        status_code=status_code,
    )


@router.get("/audit", response_class=HTMLResponse)
def audit_log(request: Request, _principal: AuditViewer, context: ContextDep) -> Response:
    return _audit_page(request, context)


@router.post("/audit/verify", response_class=HTMLResponse)
def audit_verify(request: Request, principal: AuditViewer, context: ContextDep) -> Response:
    report = verify_chain(context.store)
    with context.store.write() as session:
        detail = {"intact": report.intact, "entries": report.entries, "first_broken": report.first_broken}
        record(session, actor_of(principal), "audit.verify", None, detail)
    return _audit_page(request, context, report=report)


@router.get("/system", response_class=HTMLResponse)
def system(request: Request, _principal: AuditViewer, context: ContextDep) -> Response:
    ingest = context.ingest.stats() if context.ingest is not None else None
    return context.renderer.page(
        request,
        "admin/system.html",
        {
            "ingest": ingest,
            "dialect": context.store.dialect,
            "dead_letters": context.store.dead_letter_counts(),
            "subscribers": context.live.subscribers,
            "config": context.config,
        },
    )
