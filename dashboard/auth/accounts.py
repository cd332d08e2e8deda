"""Dashboard users: created with a role and a password, disabled (never deleted), listed."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from dashboard.audit import Actor, record
from dashboard.auth.passwords import MIN_PASSWORD_LENGTH, hash_password
from dashboard.errors import AccountError, NotFoundError
from dashboard.store.engine import Store
from dashboard.store.models import Role, User, WebSession

__all__ = ["UserInfo", "check_password_policy", "create_user", "list_users", "normalize_username", "set_disabled"]

_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")


@dataclass(frozen=True)
class UserInfo:
    """A user as pages and commands show it (never the password hash)."""

    id: int
    username: str
    role: Role
    disabled: bool
    created_at: datetime
    created_by: str | None
    last_login_at: datetime | None

    @classmethod
    def of(cls, user: User) -> UserInfo:
        return cls(
            user.id, user.username, user.role, user.disabled, user.created_at, user.created_by, user.last_login_at
        )


def normalize_username(username: str) -> str:
    """Usernames are case-insensitive: stored and compared in lower case, without surrounding spaces."""
    return username.strip().lower()


def check_password_policy(password: str, username: str) -> None:
    """Refuse a password that is too short or is the username.

    Raises:
        AccountError: it is.
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters", field="password")
    if password.strip().lower() == normalize_username(username):
        raise AccountError("the password must not be the username", field="password")


def create_user(store: Store, username: str, role: Role | str, password: str, *, actor: Actor) -> UserInfo:
    """Create a user with a salted scrypt hash of ``password``; audited as ``user.create``.

    Raises:
        AccountError: the username is malformed or taken, the role unknown, or the password too weak.
    """
    name = normalize_username(username)
    if not _USERNAME.match(name):
        raise AccountError(
            f"username {username!r} must be 1-64 characters of letters, digits, '.', '_', '@' or '-'",
            field="username",
        )
    try:
        role = Role(role)
    except ValueError as exc:
        raise AccountError(f"unknown role {role!r} (use {', '.join(r.value for r in Role)})", field="role") from exc
    check_password_policy(password, name)
    password_hash = hash_password(password)  # slow: outside the write transaction
    now = datetime.now(UTC)
    try:
        with store.write() as session:
            if session.scalar(select(User.id).where(User.username == name)) is not None:
                raise AccountError(f"user {name!r} already exists", field="username")
            user = User(
                username=name,
                role=role,
                password_hash=password_hash,
                disabled=False,
                created_at=now,
                created_by=None if actor.name == "cli" else actor.name,
                password_changed_at=now,
            )
            session.add(user)
            session.flush()
            record(session, actor, "user.create", f"user:{user.id}", {"username": name, "role": role.value})
            return UserInfo.of(user)
    except IntegrityError as exc:  # created by someone else at the same moment
        raise AccountError(f"user {name!r} already exists", field="username") from exc


def set_disabled(store: Store, user_id: int, disabled: bool, *, actor: Actor) -> UserInfo:
    """Disable a user (their sessions end at once) or enable them again; audited.

    Raises:
        NotFoundError: no such user.
        AccountError: an admin tried to disable themselves (someone must stay able to manage users).
    """
    with store.write() as session:
        user = session.get(User, user_id, with_for_update=True)
        if user is None:
            raise NotFoundError(f"no user {user_id}")
        if disabled and user.username == actor.name:
            raise AccountError("you cannot disable your own account")
        if user.disabled != disabled:
            user.disabled = disabled
            if disabled:
                session.execute(delete(WebSession).where(WebSession.user_id == user.id))
            action = "user.disable" if disabled else "user.enable"
            record(session, actor, action, f"user:{user.id}", {"username": user.username})
        return UserInfo.of(user)


def list_users(store: Store) -> list[UserInfo]:
    """Every user, by name."""
    with store.session() as session:
        return [UserInfo.of(user) for user in session.scalars(select(User).order_by(User.username))]
