"""What staff do with a finding: new → acknowledged → reviewed (agree/disagree, optional comment).

Each step is one conditional ``UPDATE ... WHERE state = <expected>`` in the
transaction that also writes the feedback row and the audit entry, so two
people acting at once cannot both win, an illegal step (reviewing a new
finding, acknowledging a reviewed one) changes nothing, and every step is
audited. The reviewers' verdicts are exported by :func:`feedback_rows` for
model validation (pseudonymous references only, never an accession number).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from dashboard.audit import Actor, record
from dashboard.errors import NotFoundError, TransitionError
from dashboard.store.engine import Store
from dashboard.store.models import Feedback, Finding, FindingState, Verdict

__all__ = [
    "FEEDBACK_FIELDS",
    "MAX_COMMENT_LENGTH",
    "TRANSITIONS",
    "FeedbackFilter",
    "acknowledge",
    "allowed_next",
    "feedback_rows",
    "review",
]

TRANSITIONS: dict[FindingState, frozenset[FindingState]] = {
    FindingState.NEW: frozenset({FindingState.ACKNOWLEDGED}),
    FindingState.ACKNOWLEDGED: frozenset({FindingState.REVIEWED}),
    FindingState.REVIEWED: frozenset(),
}
"""The only steps allowed."""

MAX_COMMENT_LENGTH = 2000


def allowed_next(state: FindingState) -> frozenset[FindingState]:
    """The states a finding in ``state`` may move to."""
    return TRANSITIONS[state]


def _step(session: Session, finding_id: int, target: FindingState, now: datetime) -> Finding:
    sources = [state for state, targets in TRANSITIONS.items() if target in targets]
    moved = session.execute(
        update(Finding)
        .where(Finding.id == finding_id, Finding.state.in_(sources))
        .values(state=target, state_changed_at=now)
    )
    finding = session.get(Finding, finding_id, populate_existing=True)
    if finding is None:
        raise NotFoundError(f"no finding {finding_id}")
    if moved.rowcount != 1:  # type: ignore[attr-defined]
        raise TransitionError(f"finding {finding_id} is {finding.state.value}: it cannot become {target.value}")
    return finding


def acknowledge(store: Store, finding_id: int, *, actor: Actor) -> None:
    """Mark a new finding as seen by ``actor``; audited as ``finding.acknowledge``.

    Raises:
        NotFoundError: no such finding.
        TransitionError: it is not new.
    """
    now = datetime.now(UTC)
    with store.write() as session:
        finding = _step(session, finding_id, FindingState.ACKNOWLEDGED, now)
        session.add(Feedback(finding_id=finding.id, acknowledged_by=actor.name, acknowledged_at=now))
        record(session, actor, "finding.acknowledge", f"finding:{finding.id}", {"message_id": finding.message_id})


def review(store: Store, finding_id: int, verdict: Verdict | str, comment: str | None, *, actor: Actor) -> None:
    """Record ``actor``'s verdict on an acknowledged finding; audited as ``finding.review``.

    Raises:
        NotFoundError: no such finding.
        TransitionError: it is not acknowledged (new, or already reviewed).
        ValueError: an unknown verdict or an over-long comment.
    """
    verdict = Verdict(verdict)
    comment = (comment or "").strip() or None
    if comment is not None and len(comment) > MAX_COMMENT_LENGTH:
        raise ValueError(f"the comment is longer than {MAX_COMMENT_LENGTH} characters")
    now = datetime.now(UTC)
    with store.write() as session:
        finding = _step(session, finding_id, FindingState.REVIEWED, now)
        feedback = session.scalar(select(Feedback).where(Feedback.finding_id == finding.id))
        assert feedback is not None, "an acknowledged finding has its feedback row"
        feedback.reviewed_by, feedback.reviewed_at = actor.name, now
        feedback.verdict, feedback.comment = verdict, comment
        detail = {"message_id": finding.message_id, "verdict": verdict.value, "comment": comment}
        record(session, actor, "finding.review", f"finding:{finding.id}", detail)


FEEDBACK_FIELDS = (
    "finding_id",
    "site",
    "device",
    "seq",
    "package_name",
    "package_version",
    "package_precision",
    "package_profile",
    "package_sha256",
    "modality",
    "label",
    "score",
    "threshold",
    "positive",
    "created",
    "study_ref",
    "series_ref",
    "instance_ref",
    "frame",
    "verdict",
    "comment",
    "reviewed_by",
    "reviewed_at",
    "acknowledged_by",
    "acknowledged_at",
)
"""The columns of the feedback export, in order (``finding_id`` is the message id appliances use)."""


@dataclass(frozen=True)
class FeedbackFilter:
    """Which reviews to export: reviewed within ``since``..``until``, of one site or package."""

    since: datetime | None = None
    until: datetime | None = None
    site: str | None = None
    package_name: str | None = None


def feedback_rows(store: Store, which: FeedbackFilter | None = None, *, chunk: int = 1000) -> Iterator[dict[str, Any]]:
    """Every reviewed finding with its verdict, oldest review first, as flat JSON-ready dicts."""
    which = which or FeedbackFilter()
    query = (
        select(Finding, Feedback)
        .join(Feedback, Feedback.finding_id == Finding.id)
        .where(Feedback.verdict.is_not(None))
        .order_by(Feedback.reviewed_at, Feedback.id)
    )
    if which.since is not None:
        query = query.where(Feedback.reviewed_at >= which.since)
    if which.until is not None:
        query = query.where(Feedback.reviewed_at < which.until)
    if which.site:
        query = query.where(Finding.site == which.site)
    if which.package_name:
        query = query.where(Finding.package_name == which.package_name)
    with store.session() as session:
        for finding, feedback in session.execute(query.execution_options(yield_per=chunk)):
            assert feedback.verdict is not None and feedback.reviewed_at is not None
            yield {
                "finding_id": finding.message_id,
                "site": finding.site,
                "device": finding.device,
                "seq": finding.seq,
                "package_name": finding.package_name,
                "package_version": finding.package_version,
                "package_precision": finding.package_precision,
                "package_profile": finding.package_profile,
                "package_sha256": finding.package_sha256,
                "modality": finding.modality,
                "label": finding.label,
                "score": finding.score,
                "threshold": finding.threshold,
                "positive": finding.positive,
                "created": finding.created.isoformat(),
                "study_ref": finding.study_ref,
                "series_ref": finding.series_ref,
                "instance_ref": finding.instance_ref,
                "frame": finding.frame,
                "verdict": feedback.verdict.value,
                "comment": feedback.comment,
                "reviewed_by": feedback.reviewed_by,
                "reviewed_at": feedback.reviewed_at.isoformat(),
                "acknowledged_by": feedback.acknowledged_by,
                "acknowledged_at": feedback.acknowledged_at.isoformat(),
            }
