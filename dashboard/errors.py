"""The errors of the dashboard's users, workflow and audit, under :class:`sdk.errors.MedgeError`.

Grouped by what the caller can do::

    MedgeError
    ├── AuthError               who is asking is not established, or may not do this
    │   ├── NotAuthenticated    no valid session or API token: log in (HTTP 401)
    │   ├── LoginFailed         wrong username or password, or a disabled user (401)
    │   ├── LoginThrottled      too many failed logins: wait ``retry_after_s`` (429)
    │   ├── PermissionDenied    the role does not allow it (403)
    │   ├── CsrfError           a state-changing request without its CSRF token (403)
    │   └── EnrollmentRefused   an enrollment or device token is unknown, used, revoked or expired (401)
    ├── AccountError            a user or token cannot be created or changed as asked (400)
    ├── NotFoundError           no such finding, device, user or token (404)
    ├── TransitionError         a finding cannot go from its state to the one asked (409)
    ├── RolloutRefused          a package cannot go to a device as asked (version does not go up: 409)
    ├── PackageRejected         an uploaded package does not verify or is too large (400)
    ├── Unavailable             what is needed is not configured or not reachable (broker folder, MQTT: 503)
    └── AuditChainError         the audit log's hash chain is broken at ``entry_id``

The web app maps each to its HTTP status in one place
(:func:`dashboard.web.app.create_app`).
"""

from __future__ import annotations

from sdk.errors import MedgeError

__all__ = [
    "AccountError",
    "AuditChainError",
    "AuthError",
    "CsrfError",
    "EnrollmentRefused",
    "LoginFailed",
    "LoginThrottled",
    "NotAuthenticated",
    "NotFoundError",
    "PackageRejected",
    "PermissionDenied",
    "RolloutRefused",
    "TransitionError",
    "Unavailable",
]


class AuthError(MedgeError):
    """Who is asking is not established, or may not do what they ask."""


class NotAuthenticated(AuthError):
    """No valid session or API token came with the request."""


class LoginFailed(AuthError):
    """The username or password is wrong, or the user is disabled (deliberately not said which)."""


class LoginThrottled(AuthError):
    """Too many failed logins for this user or from this address.

    Attributes:
        retry_after_s: seconds until the lockout ends.
    """

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message)


class PermissionDenied(AuthError):
    """The user's role does not allow this."""


class CsrfError(AuthError):
    """A state-changing request from a browser session lacks its CSRF token, or it does not match."""


class EnrollmentRefused(AuthError):
    """An enrollment token is unknown, used, revoked or expired, or a device token is not valid."""


class RolloutRefused(MedgeError):
    """A package cannot go to a device as asked (e.g. its version does not go up and no admin forced it)."""


class PackageRejected(MedgeError):
    """An uploaded package does not verify against the trusted keys, or is not a package at all."""


class Unavailable(MedgeError):
    """What the request needs is not configured or not reachable now (no broker folder, no MQTT connection)."""


class AccountError(MedgeError):
    """A user or API token cannot be created or changed as asked (name taken, weak password, ...)."""


class NotFoundError(MedgeError):
    """The finding, device, user or token asked for does not exist."""


class TransitionError(MedgeError):
    """A finding cannot move from its current state to the one asked (e.g. reviewed → acknowledged)."""


class AuditChainError(MedgeError):
    """The audit log's hash chain is broken.

    Attributes:
        entry_id: the first entry that does not check out.
    """

    def __init__(self, message: str, *, entry_id: int) -> None:
        self.entry_id = entry_id
        super().__init__(message)
