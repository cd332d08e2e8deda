"""Logging in and out, and the browser sessions in between.

:class:`Authenticator` checks a password against the stored scrypt hash (a
bounded number at a time: each takes ~0.3 s and 32 MiB), applies the login
throttle, opens a session and audits the outcome. The session cookie holds a
random token; the store keeps only its SHA-256, the user, a CSRF token, and
the times that end it (idle timeout and absolute lifetime).
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, or_, select, update

from dashboard.audit import Actor, record
from dashboard.auth.accounts import normalize_username
from dashboard.auth.passwords import hash_password, needs_rehash, verify_password
from dashboard.auth.roles import Principal
from dashboard.auth.secret_digest import secret_digest
from dashboard.auth.throttle import ThrottlePolicy, throttle_keys
from dashboard.errors import LoginFailed, LoginThrottled
from dashboard.store.engine import Store
from dashboard.store.models import User, WebSession

__all__ = ["Authenticator", "OpenedSession", "SessionPolicy"]

_TOUCH_EVERY = timedelta(minutes=1)


@dataclass(frozen=True)
class SessionPolicy:
    """How long a session lasts: ``idle`` without a request, ``max_age`` at most."""

    idle: timedelta = timedelta(hours=1)
    max_age: timedelta = timedelta(hours=12)


@dataclass(frozen=True)
class OpenedSession:
    """A new session: ``token`` goes into the cookie and is never stored."""

    token: str
    principal: Principal
    expires_at: datetime


class Authenticator:
    """Password logins, sessions and logouts against the store.

    Args:
        store: the open store.
        throttle: the login rate limits.
        sessions: session lifetimes.
        parallel_hashes: password checks run at once (each holds a core and 32 MiB).
    """

    def __init__(
        self,
        store: Store,
        *,
        throttle: ThrottlePolicy | None = None,
        sessions: SessionPolicy | None = None,
        parallel_hashes: int = 2,
    ) -> None:
        self.store = store
        self.throttle = throttle or ThrottlePolicy()
        self.sessions = sessions or SessionPolicy()
        self._hashing = threading.BoundedSemaphore(parallel_hashes)
        self._dummy_hash: str | None = None

    def _verify(self, password: str, stored: str | None) -> bool:
        with self._hashing:
            if stored is None:
                # An unknown user costs as much as a known one: the timing does not tell them apart.
                if self._dummy_hash is None:
                    self._dummy_hash = hash_password(secrets.token_urlsafe(16))
                verify_password(password, self._dummy_hash)
                return False
            return verify_password(password, stored)

    def login(self, username: str, password: str, *, client_ip: str | None, user_agent: str | None) -> OpenedSession:
        """Check the password and open a session; every attempt is audited.

        Raises:
            LoginThrottled: this user or this address is locked out for now (the password is not checked).
            LoginFailed: wrong username or password, or the user is disabled.
        """
        name = normalize_username(username)[:64]
        keys = throttle_keys(name, client_ip)
        now = datetime.now(UTC)
        with self.store.session() as session:
            locked_for = self.throttle.locked_for(session, keys, now)
            user = session.scalar(select(User).where(User.username == name))
        if locked_for > 0:
            with self.store.write() as session:
                record(session, Actor(name, None, client_ip), "login.throttled", f"user:{name}")
            raise LoginThrottled(
                f"too many failed logins; try again in {int(locked_for) + 1} s", retry_after_s=locked_for
            )
        good = self._verify(password, None if user is None else user.password_hash)
        if user is None or user.disabled or not good:
            with self.store.write() as session:
                self.throttle.failed(session, keys, now)
                reason = "unknown user" if user is None else ("disabled" if user.disabled else "wrong password")
                record(session, Actor(name, None, client_ip), "login.failure", f"user:{name}", {"reason": reason})
            raise LoginFailed("wrong username or password")
        rehash = hash_password(password) if needs_rehash(user.password_hash) else None
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        expires = now + self.sessions.max_age
        with self.store.write() as session:
            self.throttle.succeeded(session, keys[0])
            # Sweep ended sessions of everyone now and then: logins are a fine moment.
            session.execute(
                delete(WebSession).where(
                    or_(WebSession.expires_at <= now, WebSession.last_seen_at <= now - self.sessions.idle)
                )
            )
            values: dict[str, object] = {"last_login_at": now}
            if rehash is not None:
                values.update(password_hash=rehash, password_changed_at=now)
            session.execute(update(User).where(User.id == user.id).values(**values))
            row = WebSession(
                token_hash=secret_digest(token),
                user_id=user.id,
                csrf_token=csrf,
                created_at=now,
                last_seen_at=now,
                expires_at=expires,
                client_ip=client_ip,
                user_agent=(user_agent or "")[:256] or None,
            )
            session.add(row)
            session.flush()
            actor = Actor(user.username, user.role.value, client_ip)
            record(session, actor, "login.success", f"user:{user.id}", {"session": row.id})
            principal = Principal(
                "session", user.username, user.role, user.id, row.id, csrf_token=csrf, client_ip=client_ip
            )
        return OpenedSession(token, principal, expires)

    def resolve(self, token: str, client_ip: str | None) -> Principal | None:
        """The principal of a session cookie, or ``None`` if it is unknown, ended, or its user is disabled."""
        if not token or len(token) > 200:
            return None
        now = datetime.now(UTC)
        with self.store.session() as session:
            found = session.execute(
                select(WebSession, User)
                .join(User, User.id == WebSession.user_id)
                .where(WebSession.token_hash == secret_digest(token))
            ).first()
        if found is None:
            return None
        row, user = found
        if user.disabled or row.expires_at <= now or row.last_seen_at + self.sessions.idle <= now:
            return None
        if now - row.last_seen_at > _TOUCH_EVERY:
            with self.store.write() as session:
                session.execute(update(WebSession).where(WebSession.id == row.id).values(last_seen_at=now))
        return Principal(
            "session", user.username, user.role, user.id, row.id, csrf_token=row.csrf_token, client_ip=client_ip
        )

    def logout(self, principal: Principal) -> None:
        """End the principal's session; audited as ``logout``."""
        if principal.session_id is None:
            return
        with self.store.write() as session:
            session.execute(delete(WebSession).where(WebSession.id == principal.session_id))
            actor = Actor(principal.name, principal.role.value, principal.client_ip)
            record(session, actor, "logout", f"user:{principal.user_id}")
