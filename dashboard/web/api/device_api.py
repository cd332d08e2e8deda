"""The device API: ``POST /api/v1/enroll`` and ``GET /api/v1/device/packages/{sha256}``.

Appliances call these, not people: the gate lets them through without a
session (see :func:`dashboard.web.gate.is_device_path`) and each route checks
the appliance's own credential, the single-use enrollment token or the
device token.
"""

from __future__ import annotations

import logging
import os
from typing import Annotated

from fastapi import APIRouter, Header, Path, Request
from fastapi.responses import FileResponse, JSONResponse
from sqlalchemy import select

from dashboard.enrollment import authenticate_device, enroll
from dashboard.errors import NotFoundError, Unavailable
from dashboard.packages import trusted_key_pems
from dashboard.store.models import Package, Rollout
from dashboard.web.deps import ContextDep
from sdk.errors import KeyStoreError
from sdk.fleet_contracts import EnrollmentRequest, EnrollmentResponse

router = APIRouter(prefix="/api/v1", tags=["device"])

logger = logging.getLogger(__name__)


@router.post(
    "/enroll",
    response_model=EnrollmentResponse,
    summary="Enroll an appliance with a single-use token (appliances only: medge provision)",
    responses={401: {"description": "unknown, used, revoked or expired token"}, 503: {"description": "not set up"}},
)
def enroll_device(body: EnrollmentRequest, request: Request, context: ContextDep) -> JSONResponse:
    try:
        keys = trusted_key_pems(context.config)
    except KeyStoreError as exc:
        raise Unavailable(f"the trusted keys cannot be read: {exc}") from exc
    enrollment = context.config.enrollment
    answer = enroll(
        context.store,
        body,
        registrar=context.registrar,
        trusted_keys=keys,
        throttle=context.auth.throttle,
        client_ip=request.client.host if request.client else None,
        broker_host=enrollment.broker_host,
        broker_port=enrollment.broker_port,
    )
    return JSONResponse(answer.model_dump(mode="json", by_alias=True))


@router.get(
    "/device/packages/{sha256}",
    summary="Download a package assigned to this device (Authorization: Bearer <device token>; Range: bytes=N-)",
    response_class=FileResponse,
)
def download_package(
    sha256: Annotated[str, Path(pattern=r"^[0-9a-f]{64}$")],
    context: ContextDep,
    authorization: Annotated[str | None, Header()] = None,
) -> FileResponse:
    device = authenticate_device(context.store, authorization)
    with context.store.session() as session:
        row = session.execute(
            select(Package.file_path, Package.name, Package.version)
            .join(Rollout, Rollout.package_sha256 == Package.sha256)
            .where(Rollout.device_id == device.device_id, Package.sha256 == sha256)
            .limit(1)
        ).first()
    if row is None:
        # The same answer for "no such package" and "not assigned to you": nothing to learn by guessing.
        raise NotFoundError(f"no package {sha256} is assigned to {device.site}/{device.device}")
    if not os.path.isfile(row.file_path):
        logger.error("package %s is in the store but its file %s is gone", sha256, row.file_path)
        raise NotFoundError(f"the file of package {sha256} is missing on the dashboard")
    return FileResponse(
        row.file_path,
        media_type="application/octet-stream",
        filename=f"{row.name}-{row.version}.medge",
    )
