"""Who may use the dashboard: users, roles and permissions, sessions, API tokens, login throttling.

Passwords are salted scrypt hashes (:mod:`dashboard.auth.passwords`); session
cookies and API tokens are random and stored only as SHA-256. Every login,
logout and account change is written to the audit log (:mod:`dashboard.audit`).
"""

from dashboard.auth.accounts import UserInfo, check_password_policy, create_user, list_users, set_disabled
from dashboard.auth.passwords import MIN_PASSWORD_LENGTH, hash_password, verify_password
from dashboard.auth.roles import ROLE_PERMISSIONS, Permission, Principal, Role
from dashboard.auth.sessions import Authenticator, OpenedSession, SessionPolicy
from dashboard.auth.throttle import ThrottlePolicy
from dashboard.auth.tokens import CreatedToken, TokenInfo, create_token, list_tokens, resolve_token, revoke_token

__all__ = [
    "MIN_PASSWORD_LENGTH",
    "ROLE_PERMISSIONS",
    "Authenticator",
    "CreatedToken",
    "OpenedSession",
    "Permission",
    "Principal",
    "Role",
    "SessionPolicy",
    "ThrottlePolicy",
    "TokenInfo",
    "UserInfo",
    "check_password_policy",
    "create_token",
    "create_user",
    "hash_password",
    "list_tokens",
    "list_users",
    "resolve_token",
    "revoke_token",
    "set_disabled",
    "verify_password",
]
