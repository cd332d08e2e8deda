"""Who may do what: permissions, the roles that hold them, and the principal behind a request."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from dashboard.errors import PermissionDenied
from dashboard.store.models import Role

__all__ = ["ROLE_PERMISSIONS", "Permission", "Principal", "Role"]


class Permission(StrEnum):
    """One thing a route may require."""

    VIEW_FINDINGS = "view-findings"
    """The worklist, a finding's page (its study reference) and the findings API."""
    ACT_ON_FINDINGS = "act-on-findings"
    """Acknowledge and review findings."""
    EXPORT_FEEDBACK = "export-feedback"
    """Download the reviewers' feedback (CSV/JSON)."""
    VIEW_FLEET = "view-fleet"
    """Appliances, their health, charts and events."""
    MANAGE_USERS = "manage-users"
    """Create and disable users, create and revoke API tokens."""
    VIEW_AUDIT = "view-audit"
    """The audit log and the dashboard's own health."""
    ENROLL_DEVICES = "enroll-devices"
    """Create, list and revoke enrollment tokens for new appliances."""
    MANAGE_PACKAGES = "manage-packages"
    """Upload signed model packages, send them to appliances, follow the rollouts."""
    FORCE_UPDATES = "force-updates"
    """Send a package whose version does not go up (a downgrade or a reinstall)."""
    ROTATE_KEYS = "rotate-keys"
    """Send an endorsed change of the package-signing keys to appliances."""


ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.CLINICIAN: frozenset(
        {Permission.VIEW_FINDINGS, Permission.ACT_ON_FINDINGS, Permission.EXPORT_FEEDBACK, Permission.VIEW_FLEET}
    ),
    Role.TECHNICIAN: frozenset({Permission.VIEW_FLEET, Permission.ENROLL_DEVICES, Permission.MANAGE_PACKAGES}),
    Role.ADMIN: frozenset(Permission),
}
"""Clinicians see and act on findings (and see which appliances are healthy); technicians see the
fleet, enroll appliances and update their packages; admins may do everything, downgrades and key
rotations included."""


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: a logged-in user (a browser session) or an API token.

    Attributes:
        kind: ``session`` or ``token``.
        name: the username, or ``token:<name>`` (what the audit log records).
        role: the role whose permissions apply.
        user_id: the user behind a session.
        session_id: the session's row id.
        token_id: the API token's row id.
        csrf_token: the session's CSRF token (``None`` for tokens: no cookie, no CSRF).
        client_ip: where the request came from.
    """

    kind: Literal["session", "token"]
    name: str
    role: Role
    user_id: int | None = None
    session_id: int | None = None
    token_id: int | None = None
    csrf_token: str | None = None
    client_ip: str | None = None

    @property
    def permissions(self) -> frozenset[Permission]:
        return ROLE_PERMISSIONS[self.role]

    def can(self, permission: Permission) -> bool:
        """True when the role holds ``permission``."""
        return permission in self.permissions

    def require(self, permission: Permission) -> None:
        """Raise unless the role holds ``permission``.

        Raises:
            PermissionDenied: it does not.
        """
        if permission not in self.permissions:
            raise PermissionDenied(f"{self.name} ({self.role}) may not {permission.value.replace('-', ' ')}")
