"""``/api/v1/feedback.csv`` and ``.json``: the reviewers' verdicts, for model validation (export audited)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from dashboard.audit import record
from dashboard.web.deps import ContextDep, FeedbackExporter, actor_of
from dashboard.workflow import FEEDBACK_FIELDS, FeedbackFilter, feedback_rows

router = APIRouter(prefix="/api/v1", tags=["feedback"])

_SINCE = Query(description="reviewed at or after (ISO 8601)")
_UNTIL = Query(description="reviewed before")


def _filter(since: datetime | None, until: datetime | None, site: str | None, package: str | None) -> FeedbackFilter:
    def aware(value: datetime | None) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value

    return FeedbackFilter(aware(since), aware(until), site or None, package or None)


def _audit_export(context: ContextDep, principal: FeedbackExporter, form: str, which: FeedbackFilter) -> None:
    detail: dict[str, Any] = {"format": form, "site": which.site, "package": which.package_name}
    detail.update(since=None if which.since is None else which.since.isoformat())
    detail.update(until=None if which.until is None else which.until.isoformat())
    with context.store.write() as session:
        record(session, actor_of(principal), "feedback.export", None, detail)


def _filename(extension: str) -> str:
    return f"medge-feedback-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.{extension}"


@router.get(
    "/feedback.csv",
    summary="Reviewed findings with their verdicts, as CSV",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}}},
)
def export_csv(
    principal: FeedbackExporter,
    context: ContextDep,
    since: Annotated[datetime | None, _SINCE] = None,
    until: Annotated[datetime | None, _UNTIL] = None,
    site: str | None = None,
    package: str | None = None,
) -> StreamingResponse:
    which = _filter(since, until, site, package)
    _audit_export(context, principal, "csv", which)

    def lines() -> Iterator[str]:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=FEEDBACK_FIELDS, lineterminator="\r\n")
        writer.writeheader()
        for row in feedback_rows(context.store, which):
            writer.writerow(row)
            if buffer.tell() > 64 * 1024:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()

    disposition = f'attachment; filename="{_filename("csv")}"'
    return StreamingResponse(
        lines(), media_type="text/csv; charset=utf-8", headers={"content-disposition": disposition}
    )


@router.get(
    "/feedback.json",
    summary="Reviewed findings with their verdicts, as a JSON array",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/json": {}}}},
)
def export_json(
    principal: FeedbackExporter,
    context: ContextDep,
    since: Annotated[datetime | None, _SINCE] = None,
    until: Annotated[datetime | None, _UNTIL] = None,
    site: str | None = None,
    package: str | None = None,
) -> StreamingResponse:
    which = _filter(since, until, site, package)
    _audit_export(context, principal, "json", which)

    def chunks() -> Iterator[str]:
        yield "["
        for index, row in enumerate(feedback_rows(context.store, which)):
            yield ("," if index else "") + "\n" + json.dumps(row, ensure_ascii=False)
        yield "\n]\n"

    disposition = f'attachment; filename="{_filename("json")}"'
    return StreamingResponse(chunks(), media_type="application/json", headers={"content-disposition": disposition})
