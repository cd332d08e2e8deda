"""Server-side rendering: the Jinja2 templates shipped in this package and their filters.

Templates autoescape everything; times are shown in ``web.display_timezone``.
Static assets are addressed with a content hash (``/static/app.css?v=...``), so
browsers may cache them and still never run an old script after an upgrade.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse
from starlette.templating import Jinja2Templates

from dashboard.auth.roles import Permission, Principal
from dashboard.settings import DashboardConfig

__all__ = ["STATIC_DIR", "TEMPLATES_DIR", "Renderer", "app_version"]

TEMPLATES_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"


@cache
def _asset_version(name: str) -> str:
    try:
        return hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest()[:10]
    except OSError:
        return "0"


def app_version() -> str:
    """The installed medge version (``dev`` in a source checkout without metadata)."""
    try:
        return metadata.version("medge")
    except metadata.PackageNotFoundError:
        return "dev"


def _ago(value: datetime | None, now: datetime | None = None) -> str:
    if value is None:
        return "never"
    seconds = ((now or datetime.now(UTC)) - value).total_seconds()
    if seconds < 0:
        return "just now"
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} d ago"


_MISSING = "\u2013"  # an en dash: "no value"


def _ms(value: float | None) -> str:
    return _MISSING if value is None else f"{value:.1f} ms"


class Renderer:
    """Renders a template with what every page needs (the user, the CSRF token, the navigation)."""

    def __init__(self, config: DashboardConfig) -> None:
        self.config = config
        self.zone = ZoneInfo(config.web.display_timezone)
        environment = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        environment.filters.update(localtime=self.localtime, ago=_ago, ms=_ms, score=lambda v: f"{v:.2f}")
        environment.globals.update(
            static=lambda name: f"/static/{name}?v={_asset_version(name)}",
            Permission=Permission,
            version=app_version(),
            timezone=config.web.display_timezone,
        )
        self.templates = Jinja2Templates(env=environment)

    def localtime(self, value: datetime | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
        """A stored (UTC) time in the display time zone."""
        return _MISSING if value is None else value.astimezone(self.zone).strftime(fmt)

    def page(
        self,
        request: Request,
        name: str,
        context: dict[str, Any] | None = None,
        *,
        status_code: int = 200,
        headers: dict[str, str] | None = None,
    ) -> HTMLResponse:
        principal: Principal | None = getattr(request.state, "principal", None)
        full = {
            "principal": principal,
            "csrf_token": principal.csrf_token if principal is not None else None,
            "path": request.url.path,
            "demo": self.config.demo,
            "now": datetime.now(UTC),
            **(context or {}),
        }
        return self.templates.TemplateResponse(request, name, full, status_code=status_code, headers=headers)
