"""The enrollment page: create a single-use token (shown once with the command to type), list and revoke tokens."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from dashboard.enrollment import (
    CreatedEnrollmentToken,
    create_enrollment_token,
    list_enrollment_tokens,
    provision_command,
    revoke_enrollment_token,
)
from dashboard.errors import AccountError, NotFoundError
from dashboard.packages import list_packages
from dashboard.web.deps import ContextDep, DeviceEnroller, actor_of

router = APIRouter(include_in_schema=False)


def _page(
    request: Request,
    context: ContextDep,
    *,
    error: str | None = None,
    created: CreatedEnrollmentToken | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    return context.renderer.page(
        request,
        "enrollment.html",
        {
            "tokens": list_enrollment_tokens(context.store),
            "packages": list_packages(context.store),
            "created": created,
            "command": provision_command(str(request.base_url), created) if created else None,
            "error": error,
            "ttl_hours": context.config.enrollment.token_ttl_s / 3600,
            "enabled": context.registrar is not None,
        },
        status_code=status_code,
    )


@router.get("/enrollment", response_class=HTMLResponse)
def enrollment_page(request: Request, _principal: DeviceEnroller, context: ContextDep) -> Response:
    return _page(request, context)


@router.post("/enrollment/tokens", response_class=HTMLResponse)
def add_token(
    request: Request,
    principal: DeviceEnroller,
    context: ContextDep,
    site: Annotated[str, Form(max_length=64)],
    device: Annotated[str, Form(max_length=64)] = "",
    group: Annotated[str, Form(max_length=64)] = "",
    package: Annotated[str, Form(max_length=64)] = "",
    valid_hours: Annotated[str, Form(max_length=16)] = "",
) -> Response:
    limit = context.config.enrollment.token_ttl_s
    try:
        ttl = float(valid_hours) * 3600 if valid_hours.strip() else limit
        created = create_enrollment_token(
            context.store,
            site,
            actor=actor_of(principal),
            ttl_s=min(ttl, limit),
            device=device,
            group=group,
            package_sha256=package or None,
        )
    except ValueError:
        return _page(request, context, error=f"validity {valid_hours!r} is not a number of hours", status_code=400)
    except (AccountError, NotFoundError) as exc:
        return _page(request, context, error=str(exc), status_code=400)
    # Shown once, on this response only: it is not stored.
    return _page(request, context, created=created)


@router.post("/enrollment/tokens/{token_id}/revoke")
def revoke(token_id: int, principal: DeviceEnroller, context: ContextDep) -> Response:
    revoke_enrollment_token(context.store, token_id, actor=actor_of(principal))
    return RedirectResponse("/enrollment", status_code=303)
