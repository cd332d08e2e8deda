"""``/api/v1/packages``, ``/api/v1/rollouts``, ``/api/v1/key-rotations``: model packages and over-the-air updates."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, UploadFile

from dashboard.auth.roles import Permission, Principal
from dashboard.packages import add_package, get_package, list_packages, trusted_keys
from dashboard.rollouts import Targets, get_rollout, list_rollouts, send_key_rotation, start_rollout
from dashboard.web.context import WebContext
from dashboard.web.deps import ContextDep, PackageManager, actor_of
from dashboard.web.schemas import (
    KeyRotationRequest,
    ModelPackagePublic,
    RolloutPublic,
    RolloutRequest,
    SentCommandPublic,
)

router = APIRouter(prefix="/api/v1", tags=["packages"])


@router.get("/packages", response_model=list[ModelPackagePublic], summary="Uploaded model packages, newest first")
def packages(_principal: PackageManager, context: ContextDep) -> list[ModelPackagePublic]:
    return [ModelPackagePublic.of(info) for info in list_packages(context.store)]


@router.post(
    "/packages",
    response_model=ModelPackagePublic,
    summary="Upload a signed package (multipart field 'file'); refused unless it verifies against the trusted keys",
)
def upload_package(file: UploadFile, principal: PackageManager, context: ContextDep) -> ModelPackagePublic:
    info = add_package(context.store, context.config, file.file, actor=actor_of(principal), filename=file.filename)
    return ModelPackagePublic.of(info)


@router.get("/packages/{sha256}", response_model=ModelPackagePublic, summary="One package")
def package(sha256: str, _principal: PackageManager, context: ContextDep) -> ModelPackagePublic:
    return ModelPackagePublic.of(get_package(context.store, sha256))


def rollout(
    context: WebContext, principal: Principal, sha256: str, targets: Targets, force: bool
) -> list[RolloutPublic]:
    """Start a rollout for a page or the API (the version and force rules live in ``dashboard.rollouts``)."""
    started = start_rollout(
        context.store,
        sha256,
        targets,
        actor=actor_of(principal),
        sender=context.ingest,
        force=force,
        may_force=principal.can(Permission.FORCE_UPDATES),
        probation_s=context.config.packages.probation_s,
    )
    return [RolloutPublic.of(info) for info in started]


@router.post(
    "/packages/{sha256}/rollouts",
    response_model=list[RolloutPublic],
    summary="Send a package to devices, groups or sites (the version must go up unless an admin forces it)",
)
def start(sha256: str, body: RolloutRequest, principal: PackageManager, context: ContextDep) -> list[RolloutPublic]:
    return rollout(context, principal, sha256, Targets(body.devices, body.groups, body.sites), body.force)


@router.get("/rollouts", response_model=list[RolloutPublic], summary="Rollouts, newest first, with their steps")
def rollouts(
    _principal: PackageManager,
    context: ContextDep,
    device_id: int | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[RolloutPublic]:
    return [RolloutPublic.of(info) for info in list_rollouts(context.store, device_id=device_id, limit=limit)]


@router.get("/rollouts/{update_id}", response_model=RolloutPublic, summary="One rollout and its steps")
def one_rollout(update_id: str, _principal: PackageManager, context: ContextDep) -> RolloutPublic:
    return RolloutPublic.of(get_rollout(context.store, update_id))


@router.post(
    "/key-rotations",
    response_model=list[SentCommandPublic],
    summary="Send an endorsed change of the package-signing keys to devices (admins only)",
)
def rotate_keys(body: KeyRotationRequest, principal: PackageManager, context: ContextDep) -> list[SentCommandPublic]:
    principal.require(Permission.ROTATE_KEYS)
    sent = send_key_rotation(
        context.store,
        body.rotation,
        Targets(body.devices, body.groups, body.sites),
        actor=actor_of(principal),
        sender=context.ingest,
        trusted=trusted_keys(context.config),
    )
    return [SentCommandPublic(site=s.site, device=s.device, command_id=s.command_id) for s in sent]
