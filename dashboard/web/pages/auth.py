"""``/login`` and ``/logout``: the session cookie's whole life."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from dashboard.errors import LoginFailed, LoginThrottled
from dashboard.web.deps import ContextDep, PrincipalDep
from dashboard.web.gate import LOGIN_CSRF_COOKIE, SESSION_COOKIE

router = APIRouter(include_in_schema=False)


def safe_next(target: str | None) -> str:
    """Only a path on this site is a place to go back to (never ``//evil.example``)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def secure_cookies(request: Request, context: ContextDep) -> bool:
    """Secure cookies when the browser reached us over HTTPS (directly, or through a trusted proxy)."""
    web = context.config.web
    return request.url.scheme == "https" or web.uses_tls or web.behind_https_proxy


def _login_form(
    request: Request,
    context: ContextDep,
    *,
    next_: str,
    error: str | None = None,
    status_code: int = 200,
    username: str = "",
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    token = secrets.token_urlsafe(32)
    response = context.renderer.page(
        request,
        "login.html",
        {"login_csrf": token, "next": next_, "error": error, "username": username},
        status_code=status_code,
        headers=headers,
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=secure_cookies(request, context),
        path="/login",
    )
    return response


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, context: ContextDep, next: str | None = None) -> Response:
    if getattr(request.state, "principal", None) is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return _login_form(request, context, next_=safe_next(next))


@router.post("/login")
def login(
    request: Request,
    context: ContextDep,
    username: Annotated[str, Form(max_length=200)],
    password: Annotated[str, Form(max_length=1024)],
    next: Annotated[str, Form()] = "/",
) -> Response:
    client = request.client.host if request.client else None
    try:
        opened = context.auth.login(username, password, client_ip=client, user_agent=request.headers.get("user-agent"))
    except LoginThrottled as exc:
        retry = str(int(exc.retry_after_s) + 1)
        return _login_form(
            request,
            context,
            next_=safe_next(next),
            error=str(exc),
            status_code=429,
            username=username,
            headers={"retry-after": retry},
        )
    except LoginFailed as exc:
        return _login_form(request, context, next_=safe_next(next), error=str(exc), status_code=401, username=username)
    response = RedirectResponse(safe_next(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        opened.token,
        httponly=True,
        samesite="lax",
        secure=secure_cookies(request, context),
        path="/",
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


@router.post("/logout")
def logout(request: Request, principal: PrincipalDep, context: ContextDep) -> Response:
    context.auth.logout(principal)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax")
    return response
