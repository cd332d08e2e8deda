"""What ingest reports besides stored instances: refusals, quarantines, failures.

These are notifications: ``on_event`` handlers are called from the ingest
threads, and an exception they raise is logged and contained, never allowed
to change what the sender is told.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from runtime.spool import IngestSource

__all__ = ["IngestEvent", "IngestEventHandler", "IngestEventKind"]

logger = logging.getLogger(__name__)


class IngestEventKind(enum.StrEnum):
    """Why an ingest event was raised."""

    ASSOCIATION_REJECTED = "association_rejected"
    """A peer was refused at association (calling or called AE title, too many associations)."""
    ASSOCIATION_ABORTED = "association_aborted"
    """An accepted association ended without a release (A-ABORT or a dropped connection)."""
    OUT_OF_RESOURCES = "out_of_resources"
    """The spool quota had no room: the instance was refused with 0xA700."""
    QUARANTINED = "quarantined"
    """An instance or file could not be used and was moved to quarantine with a reason."""
    STORE_FAILED = "store_failed"
    """Writing to the spool failed (disk error): the instance was refused."""
    HOOK_FAILED = "hook_failed"
    """``on_stored`` raised: the instance is spooled but the sender was told it failed."""


@dataclass(frozen=True, slots=True)
class IngestEvent:
    """One ingest notification.

    Attributes:
        kind: what happened.
        message: a sentence naming the thing and the reason.
        source: the SCP or the watched folder.
        calling_ae: the sender's AE title (SCP).
        association_id: the association concerned (SCP).
        sop_instance_uid: the instance concerned, as the sender declared it (untrusted).
        path: the quarantined file or the source file concerned.
        at: when it happened (UTC).
    """

    kind: IngestEventKind
    message: str
    source: IngestSource
    calling_ae: str | None = None
    association_id: str | None = None
    sop_instance_uid: str | None = None
    path: Path | None = None
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


IngestEventHandler = Callable[[IngestEvent], None]


def emit(handler: IngestEventHandler | None, event: IngestEvent) -> None:
    """Log an event and hand it to ``handler``; a failing handler is logged, never propagated."""
    level = logging.INFO if event.kind is IngestEventKind.ASSOCIATION_ABORTED else logging.WARNING
    logger.log(level, "%s: %s", event.kind.value, event.message)
    if handler is None:
        return
    try:
        handler(event)
    except Exception:
        logger.exception("on_event handler failed for %s", event.kind.value)
