"""API tokens for scripts: created by admins, shown once, stored as SHA-256, revocable.

A token is 32 random bytes (``medge_`` + URL-safe base64): too much entropy to
guess, so a fast hash is enough to keep a copied database from yielding
usable tokens (a slow hash would cost every API call).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from dashboard.audit import Actor, record
from dashboard.auth.roles import Principal
from dashboard.auth.secret_digest import secret_digest
from dashboard.errors import AccountError, NotFoundError
from dashboard.store.engine import Store
from dashboard.store.models import ApiToken, Role

__all__ = ["TOKEN_PREFIX", "CreatedToken", "TokenInfo", "create_token", "list_tokens", "resolve_token", "revoke_token"]

TOKEN_PREFIX = "medge_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_TOUCH_EVERY = timedelta(minutes=1)


@dataclass(frozen=True)
class TokenInfo:
    """A token as the admin page lists it (never the token itself)."""

    id: int
    name: str
    prefix: str
    role: Role
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: ApiToken) -> TokenInfo:
        return cls(
            row.id,
            row.name,
            row.prefix,
            row.role,
            row.created_by,
            row.created_at,
            row.expires_at,
            row.last_used_at,
            row.revoked_at,
        )

    def active(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


@dataclass(frozen=True)
class CreatedToken:
    """A new token: ``secret`` is shown once and never stored."""

    info: TokenInfo
    secret: str


def create_token(
    store: Store, name: str, role: Role | str, *, actor: Actor, valid_days: float | None = None
) -> CreatedToken:
    """Create a bearer token acting with ``role``; audited as ``token.create``.

    Raises:
        AccountError: bad name, unknown role or validity.
    """
    if not _NAME.match(name):
        raise AccountError(f"token name {name!r} must be 1-64 letters, digits, '.', '_' or '-'", field="name")
    try:
        role = Role(role)
    except ValueError as exc:
        raise AccountError(f"unknown role {role!r}", field="role") from exc
    if valid_days is not None and valid_days <= 0:
        raise AccountError("a token's validity must be positive", field="valid_days")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    with store.write() as session:
        row = ApiToken(
            name=name,
            prefix=secret[: len(TOKEN_PREFIX) + 6],
            token_hash=secret_digest(secret),
            role=role,
            created_by=actor.name,
            created_at=now,
            expires_at=None if valid_days is None else now + timedelta(days=valid_days),
        )
        session.add(row)
        session.flush()
        record(session, actor, "token.create", f"token:{row.id}", {"name": name, "role": role.value})
        return CreatedToken(TokenInfo.of(row), secret)


def revoke_token(store: Store, token_id: int, *, actor: Actor) -> TokenInfo:
    """Revoke a token at once; audited as ``token.revoke``.

    Raises:
        NotFoundError: no such token.
    """
    with store.write() as session:
        row = session.get(ApiToken, token_id, with_for_update=True)
        if row is None:
            raise NotFoundError(f"no API token {token_id}")
        if row.revoked_at is None:
            row.revoked_at = datetime.now(UTC)
            record(session, actor, "token.revoke", f"token:{row.id}", {"name": row.name})
        return TokenInfo.of(row)


def list_tokens(store: Store) -> list[TokenInfo]:
    """Every token, newest first."""
    with store.session() as session:
        return [TokenInfo.of(row) for row in session.scalars(select(ApiToken).order_by(ApiToken.id.desc()))]


def resolve_token(store: Store, secret: str, client_ip: str | None) -> Principal | None:
    """The principal of a bearer token, or ``None`` when it is unknown, revoked or expired."""
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
        return None
    now = datetime.now(UTC)
    with store.session() as session:
        row = session.scalar(select(ApiToken).where(ApiToken.token_hash == secret_digest(secret)))
    if row is None or not TokenInfo.of(row).active(now):
        return None
    if row.last_used_at is None or now - row.last_used_at > _TOUCH_EVERY:
        with store.write() as session:
            session.execute(update(ApiToken).where(ApiToken.id == row.id).values(last_used_at=now))
    return Principal("token", f"token:{row.name}", row.role, token_id=row.id, client_ip=client_ip)
