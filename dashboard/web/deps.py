"""Typed dependencies of the routes: the shared context, the principal, role checks, the audit actor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request

from dashboard.audit import Actor
from dashboard.auth.roles import Permission, Principal
from dashboard.errors import NotAuthenticated
from dashboard.web.context import WebContext

__all__ = [
    "ActsOnFindings",
    "AuditViewer",
    "ContextDep",
    "DeviceEnroller",
    "FeedbackExporter",
    "FindingsViewer",
    "FleetViewer",
    "PackageManager",
    "PrincipalDep",
    "UserManager",
    "actor_of",
    "require",
]


def get_context(request: Request) -> WebContext:
    return request.app.state.medge  # type: ignore[no-any-return]


def get_principal(request: Request) -> Principal:
    """The principal the gate established (it let nobody else through)."""
    principal = getattr(request.state, "principal", None)
    if principal is None:
        raise NotAuthenticated("log in, or send an API token")
    return principal  # type: ignore[no-any-return]


ContextDep = Annotated[WebContext, Depends(get_context)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require(permission: Permission) -> Callable[[Principal], Principal]:
    """A dependency that returns the principal if its role holds ``permission``, else raises ``PermissionDenied``."""

    def check(principal: PrincipalDep) -> Principal:
        principal.require(permission)
        return principal

    check.__name__ = f"require_{permission.name.lower()}"
    return check


FindingsViewer = Annotated[Principal, Depends(require(Permission.VIEW_FINDINGS))]
ActsOnFindings = Annotated[Principal, Depends(require(Permission.ACT_ON_FINDINGS))]
FeedbackExporter = Annotated[Principal, Depends(require(Permission.EXPORT_FEEDBACK))]
FleetViewer = Annotated[Principal, Depends(require(Permission.VIEW_FLEET))]
UserManager = Annotated[Principal, Depends(require(Permission.MANAGE_USERS))]
AuditViewer = Annotated[Principal, Depends(require(Permission.VIEW_AUDIT))]
DeviceEnroller = Annotated[Principal, Depends(require(Permission.ENROLL_DEVICES))]
PackageManager = Annotated[Principal, Depends(require(Permission.MANAGE_PACKAGES))]


def actor_of(principal: Principal) -> Actor:
    """The principal as the audit log records it."""
    return Actor(principal.name, principal.role.value, principal.client_ip)
