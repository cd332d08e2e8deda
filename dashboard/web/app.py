"""The app factory: routes, the gate, static assets, and the one place errors become HTTP."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from dashboard.enrollment import BrokerRegistrar
from dashboard.errors import (
    AccountError,
    CsrfError,
    EnrollmentRefused,
    LoginFailed,
    LoginThrottled,
    NotAuthenticated,
    NotFoundError,
    PermissionDenied,
    RolloutRefused,
    TransitionError,
    Unavailable,
)
from dashboard.ingest.service import IngestService
from dashboard.settings import DashboardConfig
from dashboard.store.engine import Store, create_store
from dashboard.web.api import device_api, devices, enrollment, feedback, findings, meta, packages, stream
from dashboard.web.context import WebContext
from dashboard.web.gate import Gate, is_api_path
from dashboard.web.pages import admin, auth
from dashboard.web.pages import enrollment as enrollment_pages
from dashboard.web.pages import findings as finding_pages
from dashboard.web.pages import fleet as fleet_pages
from dashboard.web.pages import packages as package_pages
from dashboard.web.rendering import STATIC_DIR, app_version
from sdk.errors import MedgeError

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

_STATUS: list[tuple[type[MedgeError], int]] = [
    (NotAuthenticated, 401),
    (EnrollmentRefused, 401),
    (LoginFailed, 401),
    (LoginThrottled, 429),
    (PermissionDenied, 403),
    (CsrfError, 403),
    (NotFoundError, 404),
    (TransitionError, 409),
    (RolloutRefused, 409),
    (Unavailable, 503),
    (AccountError, 400),
]
"""MedgeError → HTTP status; any other MedgeError is a 400 (the caller asked for something it cannot have)."""

_TITLES = {
    400: "Bad request",
    401: "Log in",
    403: "Not allowed",
    404: "Not found",
    405: "Not allowed",
    409: "Not possible now",
    413: "Too large",
    429: "Too many attempts",
    503: "Not available",
}


def _status_of(exc: MedgeError) -> int:
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    return 400


def create_app(
    config: DashboardConfig,
    store: Store | None = None,
    ingest: IngestService | None = None,
    *,
    registrar: BrokerRegistrar | None = None,
) -> FastAPI:
    """Build the dashboard's web app (pages, REST API under ``/api/v1``, live feed).

    Args:
        config: the dashboard config (``web`` and ``fleet`` sections matter here).
        store: the open store to read and write (shared with the ingest); default:
            opened from ``config`` and closed when the app shuts down.
        ingest: the in-process ingest, for its health on ``/healthz`` and the system page, and
            to send commands (package updates, key rotations) to devices.
        registrar: adds enrolled devices to the broker; without it enrollment answers 503.

    Raises:
        StoreError: the store had to be opened and could not be.
    """
    owns_store = store is None
    if store is None:
        store = create_store(config.store_url)
    context = WebContext.build(config, store, ingest, registrar)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        context.live.start()
        try:
            yield
        finally:
            await context.live.stop()
            if owns_store:
                context.store.close()

    app = FastAPI(
        title="medge dashboard API",
        version=app_version(),
        description=(
            "Findings, appliances, events and reviewers' feedback of a medge site. Authenticate with an API "
            "token (`Authorization: Bearer medge_...`, created by an admin on the Users page) or a browser session. "
            "Appliances use the device API (`POST /api/v1/enroll` with a single-use enrollment token, then "
            "`/api/v1/device/...` with their device token)."
        ),
        docs_url=None,  # Swagger UI comes from a CDN: /api/v1/docs renders the schema from shipped templates instead
        redoc_url=None,
        openapi_url=None,  # served behind auth at /api/v1/openapi.json
        lifespan=lifespan,
        telemetry={"tracing": False, "metrics": False, "logs": False, "auto_configure": False},
    )
    app.state.medge = context
    app.add_middleware(Gate, context=context)  # type: ignore[arg-type]
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    for module in (
        auth,
        finding_pages,
        fleet_pages,
        enrollment_pages,
        package_pages,
        admin,
        findings,
        devices,
        feedback,
        stream,
        device_api,
        enrollment,
        packages,
        meta,
    ):
        app.include_router(module.router)
    _add_health(app, context)
    _add_error_handlers(app, context)
    return app


def _add_health(app: FastAPI, context: WebContext) -> None:
    @app.get("/healthz", include_in_schema=False)
    def healthz() -> JSONResponse:
        body: dict[str, Any] = {"status": "ok", "store": "ok"}
        try:
            with context.store.session() as session:
                session.execute(text("SELECT 1"))
        except SQLAlchemyError:
            body.update(status="degraded", store="unreachable")
        if context.ingest is not None:
            connected = context.ingest.stats().connected
            body["ingest"] = "connected" if connected else "disconnected"
            if not connected:
                body["status"] = "degraded"
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")


def _add_error_handlers(app: FastAPI, context: WebContext) -> None:
    def error_page(request: Request, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        if is_api_path(request.url.path):
            return JSONResponse({"detail": message}, status_code=status, headers=headers)
        if status == 401:
            return RedirectResponse("/login", status_code=303)
        title = _TITLES.get(status, "Error")
        page = {"status": status, "title": title, "message": message}
        return context.renderer.page(request, "error.html", page, status_code=status, headers=headers)

    @app.exception_handler(MedgeError)
    async def medge_error(request: Request, exc: MedgeError) -> Response:
        status = _status_of(exc)
        if status >= 403 and status != 404:
            logger.info("%s %s refused (%d): %s", request.method, request.url.path, status, exc)
        headers = {"retry-after": str(int(exc.retry_after_s) + 1)} if isinstance(exc, LoginThrottled) else None
        if status == 401 and is_api_path(request.url.path):
            headers = {"www-authenticate": 'Bearer realm="medge"'}
        return error_page(request, status, str(exc), headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return error_page(request, exc.status_code, str(exc.detail), dict(exc.headers or {}) or None)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        if is_api_path(request.url.path):
            return JSONResponse({"detail": _jsonable_errors(exc)}, status_code=422)
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors())
        return error_page(request, 400, problems or "the request is not valid")


def _jsonable_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """FastAPI's validation errors without the offending input (it may be a password)."""
    return [{"loc": list(error["loc"]), "msg": error["msg"], "type": error["type"]} for error in exc.errors()]
