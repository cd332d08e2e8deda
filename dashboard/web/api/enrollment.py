"""``/api/v1/enrollment-tokens``: single-use tokens that let appliances enroll (technicians and admins)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from dashboard.enrollment import (
    create_enrollment_token,
    list_enrollment_tokens,
    provision_command,
    revoke_enrollment_token,
)
from dashboard.web.deps import ContextDep, DeviceEnroller, actor_of
from dashboard.web.schemas import EnrollmentTokenCreate, EnrollmentTokenCreated, EnrollmentTokenPublic

router = APIRouter(prefix="/api/v1", tags=["enrollment"])


@router.get("/enrollment-tokens", response_model=list[EnrollmentTokenPublic], summary="Enrollment tokens, newest first")
def list_tokens(_principal: DeviceEnroller, context: ContextDep) -> list[EnrollmentTokenPublic]:
    return [EnrollmentTokenPublic.of(info) for info in list_enrollment_tokens(context.store)]


@router.post(
    "/enrollment-tokens",
    response_model=EnrollmentTokenCreated,
    summary="Create a single-use enrollment token (shown once, with the medge provision command)",
)
def create_token(
    body: EnrollmentTokenCreate, request: Request, principal: DeviceEnroller, context: ContextDep
) -> EnrollmentTokenCreated:
    limit = context.config.enrollment.token_ttl_s
    created = create_enrollment_token(
        context.store,
        body.site,
        actor=actor_of(principal),
        ttl_s=min(body.ttl_s or limit, limit),
        device=body.device,
        group=body.group,
        package_sha256=body.package_sha256,
    )
    command = provision_command(str(request.base_url), created)
    return EnrollmentTokenCreated(token=created.secret, command=command, info=EnrollmentTokenPublic.of(created.info))


@router.post(
    "/enrollment-tokens/{token_id}/revoke", response_model=EnrollmentTokenPublic, summary="Revoke an unused token"
)
def revoke_token(token_id: int, principal: DeviceEnroller, context: ContextDep) -> EnrollmentTokenPublic:
    return EnrollmentTokenPublic.of(revoke_enrollment_token(context.store, token_id, actor=actor_of(principal)))
