"""The packages page (upload, list, send to devices or groups, key rotations) and the rollouts page."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from sqlalchemy import select

from dashboard.auth.roles import Permission
from dashboard.errors import (
    AccountError,
    NotFoundError,
    PackageRejected,
    PermissionDenied,
    RolloutRefused,
    Unavailable,
)
from dashboard.packages import add_package, list_packages, trusted_keys
from dashboard.rollouts import Targets, list_rollouts, send_key_rotation
from dashboard.store.models import Device, DeviceCredential
from dashboard.web.api.packages import rollout
from dashboard.web.deps import ContextDep, PackageManager, actor_of
from sdk.fleet_contracts import KeyRotation

router = APIRouter(include_in_schema=False)

_MAX_ENDORSEMENT_BYTES = 256 * 1024


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.replace(",", " ").split() if part.strip()]


def _page(
    request: Request,
    context: ContextDep,
    *,
    error: str | None = None,
    notice: str | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    with context.store.session() as session:
        devices = [
            (row.id, f"{row.site}/{row.device}")
            for row in session.execute(
                select(Device.id, Device.site, Device.device).order_by(Device.site, Device.device)
            )
        ]
        groups = sorted(
            group for group in session.scalars(select(DeviceCredential.device_group).distinct()) if group is not None
        )
    return context.renderer.page(
        request,
        "packages.html",
        {
            "packages": list_packages(context.store),
            "devices": devices,
            "groups": groups,
            "sites": sorted({name.split("/", 1)[0] for _, name in devices}),
            "rollouts": list_rollouts(context.store, limit=20),
            "trusted": sorted(trusted_keys(context.config)),
            "error": error,
            "notice": notice,
        },
        status_code=status_code,
    )


@router.get("/packages", response_class=HTMLResponse)
def packages_page(request: Request, _principal: PackageManager, context: ContextDep) -> Response:
    return _page(request, context)


@router.post("/packages", response_class=HTMLResponse)
def upload(request: Request, file: UploadFile, principal: PackageManager, context: ContextDep) -> Response:
    try:
        info = add_package(context.store, context.config, file.file, actor=actor_of(principal), filename=file.filename)
    except (PackageRejected, Unavailable) as exc:
        return _page(request, context, error=str(exc), status_code=400)
    return _page(
        request, context, notice=f"{info.name} {info.version} verified and kept (signed by {info.signer_key_id})"
    )


@router.post("/packages/rollout", response_class=HTMLResponse)
def send(
    request: Request,
    principal: PackageManager,
    context: ContextDep,
    package: Annotated[str, Form(max_length=64)],
    devices: Annotated[list[int] | None, Form()] = None,
    groups: Annotated[str, Form(max_length=1000)] = "",
    sites: Annotated[str, Form(max_length=1000)] = "",
    force: Annotated[bool, Form()] = False,
) -> Response:
    targets = Targets(devices or [], _split(groups), _split(sites))
    try:
        started = rollout(context, principal, package, targets, force)
    except (AccountError, NotFoundError, PermissionDenied, RolloutRefused, Unavailable) as exc:
        return _page(request, context, error=str(exc), status_code=409 if isinstance(exc, RolloutRefused) else 400)
    return _page(request, context, notice=f"sent to {len(started)} device(s)")


@router.post("/packages/rotate-keys", response_class=HTMLResponse)
def rotate_keys(
    request: Request,
    endorsement: UploadFile,
    principal: PackageManager,
    context: ContextDep,
    devices: Annotated[list[int] | None, Form()] = None,
    groups: Annotated[str, Form(max_length=1000)] = "",
    sites: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    principal.require(Permission.ROTATE_KEYS)
    targets = Targets(devices or [], _split(groups), _split(sites))
    try:
        data = endorsement.file.read(_MAX_ENDORSEMENT_BYTES + 1)
        if len(data) > _MAX_ENDORSEMENT_BYTES:
            raise AccountError("the endorsement file is too large", field="endorsement")
        rotation = KeyRotation.model_validate(json.loads(data))
        sent = send_key_rotation(
            context.store,
            rotation,
            targets,
            actor=actor_of(principal),
            sender=context.ingest,
            trusted=trusted_keys(context.config),
        )
    except (ValueError, ValidationError) as exc:
        return _page(request, context, error=f"the endorsement is not a key rotation: {exc}", status_code=400)
    except (AccountError, NotFoundError, Unavailable) as exc:
        return _page(request, context, error=str(exc), status_code=400)
    return _page(request, context, notice=f"key change sent to {len(sent)} device(s)")


@router.get("/rollouts", response_class=HTMLResponse)
def rollouts_page(request: Request, _principal: PackageManager, context: ContextDep) -> Response:
    raw = request.query_params.get("device", "")
    device_id = int(raw) if raw.isdigit() else None
    return context.renderer.page(
        request,
        "rollouts.html",
        {"rollouts": list_rollouts(context.store, device_id=device_id, limit=200), "device_id": device_id},
    )
