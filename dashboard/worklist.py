"""The worklist query: findings filtered, newest (or highest-scoring) first, one page at a time.

Pages are keyset-paginated: the cursor is the last row's sort key and id, so
page 200 costs what page 1 costs and a finding arriving meanwhile does not
shift the rows (offset paging would show one twice). The worklist page and
``GET /api/v1/findings`` run exactly :func:`findings_query`; the benchmark
times it bare, beside them.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Select, and_, or_, select
from sqlalchemy.orm import Session

from dashboard.store.models import Finding, FindingState

__all__ = ["FindingFilter", "FindingsPage", "InvalidCursor", "decode_cursor", "findings_page", "findings_query"]

SortKey = Literal["time", "score"]


class InvalidCursor(ValueError):
    """A page cursor that this module did not make."""


class FindingFilter(BaseModel):
    """What the worklist shows: every field narrows it; ``None`` means any."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    site: str | None = Field(default=None, max_length=64)
    device: str | None = Field(default=None, max_length=64)
    modality: str | None = Field(default=None, max_length=16)
    label: str | None = Field(default=None, max_length=128)
    state: FindingState | None = None
    positive: bool | None = None
    since: datetime | None = Field(default=None, description="created at or after (aware)")
    until: datetime | None = Field(default=None, description="created before (aware)")
    sort: SortKey = "time"


@dataclass(frozen=True)
class FindingsPage:
    """One page of findings and the cursor of the next (``None`` on the last page)."""

    items: list[Finding]
    next_cursor: str | None


def _encode_cursor(sort: SortKey, row: Finding) -> str:
    key: object = row.created.isoformat() if sort == "time" else row.score
    raw = json.dumps([sort, key, row.id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, sort: SortKey) -> tuple[datetime | float, int]:
    """The sort key and id a cursor holds.

    Raises:
        InvalidCursor: it is malformed or was made for the other sort order.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        kind, key, row_id = json.loads(raw)
        if kind != sort or not isinstance(row_id, int):
            raise ValueError("another sort order")
        value: datetime | float = datetime.fromisoformat(key) if sort == "time" else float(key)
        if isinstance(value, datetime) and value.tzinfo is None:
            raise ValueError("naive time")
    except (ValueError, TypeError, json.JSONDecodeError) as exc:
        raise InvalidCursor(f"not a page cursor for sort={sort}: {cursor!r}") from exc
    return value, row_id


def findings_query(which: FindingFilter, *, limit: int, cursor: str | None = None) -> Select[Finding]:
    """The SELECT behind a worklist page (``limit`` rows; ask ``limit + 1`` to learn whether more follow)."""
    query = select(Finding)
    if which.site:
        query = query.where(Finding.site == which.site)
    if which.device:
        query = query.where(Finding.device == which.device)
    if which.modality:
        query = query.where(Finding.modality == which.modality)
    if which.label:
        query = query.where(Finding.label == which.label)
    if which.state is not None:
        query = query.where(Finding.state == which.state)
    if which.positive is not None:
        query = query.where(Finding.positive.is_(which.positive))
    if which.since is not None:
        query = query.where(Finding.created >= which.since)
    if which.until is not None:
        query = query.where(Finding.created < which.until)
    column = Finding.created if which.sort == "time" else Finding.score
    if cursor is not None:
        key, row_id = decode_cursor(cursor, which.sort)
        query = query.where(or_(column < key, and_(column == key, Finding.id < row_id)))
    return query.order_by(column.desc(), Finding.id.desc()).limit(limit)


def findings_page(session: Session, which: FindingFilter, *, limit: int, cursor: str | None = None) -> FindingsPage:
    """One page of the worklist.

    Raises:
        InvalidCursor: ``cursor`` is not one this module made for this sort order.
    """
    rows = list(session.scalars(findings_query(which, limit=limit + 1, cursor=cursor)))
    more = len(rows) > limit
    rows = rows[:limit]
    return FindingsPage(rows, _encode_cursor(which.sort, rows[-1]) if more and rows else None)
