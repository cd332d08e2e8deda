"""The gate every request passes: who is asking, CSRF, and the security headers of every response.

It is ASGI middleware rather than a per-route dependency so that nothing can
be forgotten: a route added tomorrow without any auth dependency is still
closed to anonymous requests, and a form added without a token is still
refused. Only ``PUBLIC_PATHS`` (login, health) and ``/static/`` pass without
a principal; the routes' dependencies then check the role.

The device API (:func:`is_device_path`: ``POST /api/v1/enroll`` and
``/api/v1/device/...``) is the one exception: appliances, not people, call
it, with their own credentials (the single-use enrollment token in the body,
the device token as ``Authorization: Bearer``) that its routes check
themselves. It takes no cookies, so it needs no CSRF token.

- **Who**: ``Authorization: Bearer medge_...`` (an API token), else the
  ``medge_session`` cookie. Without either: ``401`` under ``/api/``, a
  redirect to ``/login`` elsewhere.
- **CSRF**: a POST/PUT/PATCH/DELETE carried by a session cookie must bring
  the session's CSRF token, in the ``X-CSRF-Token`` header or the
  ``csrf_token`` form field (a file upload, ``multipart/form-data``, in the
  ``csrf_token`` query parameter: the gate does not parse uploads); the login
  form (no session yet) uses a double-submit cookie. Token-authenticated calls carry no cookie, so they
  need none. A cross-site ``Origin`` is refused outright.
- **Headers**: a Content-Security-Policy that allows nothing but this origin
  (no CDN could load even by mistake), no framing, no sniffing, no referrer,
  ``no-store`` on everything but static assets, HSTS under HTTPS.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import anyio.to_thread
from starlette.datastructures import Headers
from starlette.requests import cookie_parser

from dashboard.auth.roles import Principal
from dashboard.auth.tokens import resolve_token
from dashboard.web.context import WebContext

__all__ = [
    "CSRF_FIELD",
    "CSRF_HEADER",
    "DEVICE_PATHS",
    "LOGIN_CSRF_COOKIE",
    "PUBLIC_PATHS",
    "SESSION_COOKIE",
    "Gate",
    "is_api_path",
    "is_device_path",
]

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SESSION_COOKIE = "medge_session"
LOGIN_CSRF_COOKIE = "medge_login_csrf"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
PUBLIC_PATHS = frozenset({"/login", "/healthz", "/favicon.ico"})
DEVICE_PATHS = ("/api/v1/enroll", "/api/v1/device/")
"""The device API: the exact enroll path and everything under ``/api/v1/device/``."""
_PUBLIC_PREFIX = "/static/"
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_MAX_FORM_BYTES = 64 * 1024

_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_COMMON_HEADERS = [
    (b"content-security-policy", _CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]


def is_api_path(path: str) -> bool:
    """True for the REST API (JSON errors, 401 instead of a redirect to the login page)."""
    return path == "/api" or path.startswith("/api/")


def is_device_path(path: str) -> bool:
    """True for the device API, whose routes authenticate appliances themselves."""
    return path == DEVICE_PATHS[0] or path.startswith(DEVICE_PATHS[1])


def _public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(_PUBLIC_PREFIX)


class Gate:
    """ASGI middleware: authentication, CSRF and security headers (see the module docstring)."""

    def __init__(self, app: ASGIApp, context: WebContext) -> None:
        self.app = app
        self.context = context

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = self._secure_headers(scope, send)
        headers = Headers(scope=scope)
        path: str = scope["path"]
        if is_device_path(path):
            scope.setdefault("state", {})["principal"] = None
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        client_ip = client[0] if client else None
        try:
            principal = await self._principal(headers, client_ip)
        except _BadCredentials:
            await self._refuse(scope, send, 401, "the API token is unknown, revoked or expired", bearer=True)
            return
        scope.setdefault("state", {})["principal"] = principal
        if principal is None and not _public(path):
            if is_api_path(path):
                await self._refuse(scope, send, 401, "log in, or send an API token (Authorization: Bearer)", True)
            else:
                await self._to_login(scope, send)
            return
        if scope["method"] in _UNSAFE:
            checked = await self._check_csrf(scope, receive, send, headers, principal)
            if checked is None:
                return
            receive = checked
        await self.app(scope, receive, send)

    # Who ----------------------------------------------------------------------------------------

    async def _principal(self, headers: Headers, client_ip: str | None) -> Principal | None:
        authorization = headers.get("authorization")
        if authorization:
            scheme, _, credentials = authorization.partition(" ")
            if scheme.lower() != "bearer" or not credentials.strip():
                raise _BadCredentials
            principal = await anyio.to_thread.run_sync(
                resolve_token, self.context.store, credentials.strip(), client_ip
            )
            if principal is None:
                raise _BadCredentials
            return principal
        token = cookie_parser(headers.get("cookie", "")).get(SESSION_COOKIE)
        if not token:
            return None
        return await anyio.to_thread.run_sync(self.context.auth.resolve, token, client_ip)

    # CSRF -----------------------------------------------------------------------------------------

    async def _check_csrf(
        self, scope: Scope, receive: Receive, send: Send, headers: Headers, principal: Principal | None
    ) -> Receive | None:
        """The receive channel to go on with (the body replayed), or ``None`` once refused."""
        origin = headers.get("origin")
        if origin and origin != "null" and urlsplit(origin).netloc != headers.get("host", ""):
            await self._refuse(scope, send, 403, f"cross-site request from {origin} refused")
            return None
        if principal is not None and principal.kind == "token":
            return receive
        if principal is not None:
            expected = principal.csrf_token
        else:
            expected = cookie_parser(headers.get("cookie", "")).get(LOGIN_CSRF_COOKIE)
        supplied = headers.get(CSRF_HEADER)
        replay = receive
        if supplied is None and headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            body = await _read_body(receive, _MAX_FORM_BYTES)
            if body is None:
                await self._refuse(scope, send, 413, "the form is too large")
                return None
            supplied = parse_qs(body.decode("latin-1")).get(CSRF_FIELD, [None])[0]
            replay = _replay(body, receive)
        elif supplied is None and headers.get("content-type", "").startswith("multipart/form-data"):
            query = scope.get("query_string", b"").decode("latin-1")
            supplied = parse_qs(query).get(CSRF_FIELD, [None])[0]
        if not expected or not supplied or not hmac.compare_digest(expected.encode(), supplied.encode()):
            logger.warning("refused %s %s: CSRF token missing or wrong", scope["method"], scope["path"])
            await self._refuse(scope, send, 403, "the form's CSRF token is missing or wrong: reload the page")
            return None
        return replay

    # Responses ------------------------------------------------------------------------------------

    def _secure_headers(self, scope: Scope, send: Send) -> Send:
        static = scope["path"].startswith(_PUBLIC_PREFIX)
        https = scope.get("scheme") == "https"

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                extra = list(_COMMON_HEADERS)
                extra.append((b"cache-control", b"public, max-age=3600" if static else b"no-store"))
                if https:
                    extra.append((b"strict-transport-security", b"max-age=31536000"))
                headers += [(name, value) for name, value in extra if name not in present]
                message["headers"] = headers
            await send(message)

        return wrapped

    @staticmethod
    async def _refuse(scope: Scope, send: Send, status: int, detail: str, bearer: bool = False) -> None:
        api = is_api_path(scope["path"])
        body = json.dumps({"detail": detail}).encode() if api else f"{status}: {detail}\n".encode()
        headers = [
            (b"content-type", b"application/json" if api else b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
        ]
        if bearer or status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="medge"'))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    async def _to_login(scope: Scope, send: Send) -> None:
        target = scope["path"]
        query = scope.get("query_string", b"").decode("latin-1")
        if query:
            target += "?" + query
        # After logging in the browser comes back with a GET: only a page it could GET is worth returning to.
        back = scope["method"] in ("GET", "HEAD") and target != "/"
        location = f"/login?next={quote(target, safe='')}" if back else "/login"
        await send(
            {
                "type": "http.response.start",
                "status": 303,
                "headers": [(b"location", location.encode()), (b"content-length", b"0")],
            }
        )
        await send({"type": "http.response.body", "body": b""})


class _BadCredentials(Exception):
    """An Authorization header that names no valid token."""


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
