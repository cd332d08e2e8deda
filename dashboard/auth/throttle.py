"""Login rate limiting per username and per client address, kept in the store.

Each key (``user:<name>``, ``ip:<address>``) counts failed logins within a
window. At ``max_failures`` the key is locked for ``lockout_s``, doubling with
each further failure (at most an hour). While any key of an attempt is
locked, the attempt is refused without looking at the password. A success
clears the user's key, not the address's: one valid account must not wash
out the failures of a password-guessing client.

The counters live in the database, so every dashboard process behind a load
balancer sees the same ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from dashboard.store.models import LoginThrottle

__all__ = ["ThrottlePolicy", "throttle_keys"]

_MAX_LOCKOUT_S = 3600.0


def throttle_keys(username: str, client_ip: str | None) -> list[str]:
    """The keys one login attempt counts against."""
    keys = [f"user:{username.strip().lower()[:150]}"]
    if client_ip:
        keys.append(f"ip:{client_ip[:150]}")
    return keys


@dataclass(frozen=True)
class ThrottlePolicy:
    """How many failures, within which window, earn how long a lockout.

    Attributes:
        max_failures: failures before the first lockout.
        window_s: failures older than this are forgotten.
        lockout_s: the first lockout; it doubles with each further failure, up to an hour.
    """

    max_failures: int = 5
    window_s: float = 900.0
    lockout_s: float = 60.0

    def locked_for(self, session: Session, keys: Iterable[str], now: datetime) -> float:
        """Seconds until every key of the attempt is unlocked (0: not locked)."""
        until = session.scalars(
            select(LoginThrottle.locked_until).where(
                LoginThrottle.key.in_(list(keys)), LoginThrottle.locked_until > now
            )
        ).all()
        return max(((moment - now).total_seconds() for moment in until if moment is not None), default=0.0)

    def failed(self, session: Session, keys: Iterable[str], now: datetime) -> None:
        """Count a failed attempt against each key, locking those over the limit."""
        for key in keys:
            row = session.get(LoginThrottle, key, with_for_update=True)
            if row is None:
                row = LoginThrottle(key=key, failures=0, window_started_at=now, locked_until=None)
                session.add(row)
            elif (now - row.window_started_at).total_seconds() > self.window_s and (
                row.locked_until is None or row.locked_until <= now
            ):
                row.failures, row.window_started_at, row.locked_until = 0, now, None
            row.failures += 1
            over = row.failures - self.max_failures
            if over >= 0:
                lockout = min(self.lockout_s * 2**over, _MAX_LOCKOUT_S)
                row.locked_until = now + timedelta(seconds=lockout)

    @staticmethod
    def succeeded(session: Session, username_key: str) -> None:
        """Forget the user's failures after a good login."""
        session.execute(delete(LoginThrottle).where(LoginThrottle.key == username_key))
