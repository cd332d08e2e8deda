"""The update in progress, on disk: what a restarted appliance needs to finish or undo it.

One JSON file, rewritten atomically at every step (temp file, fsync, rename,
fsync the folder), so a kill at any moment leaves the previous step's record
or the new one. It is removed once the update's last report has been handed
to the event outbox.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sdk.durable_files import fsync_dir, write_atomic
from sdk.fleet_contracts import OtaStep, PackageOffer

__all__ = ["FINAL_STEPS", "Journal", "JournalEntry"]

log = logging.getLogger(__name__)

FINAL_STEPS = frozenset({OtaStep.DONE, OtaStep.ROLLED_BACK, OtaStep.REFUSED})


def _now() -> datetime:
    return datetime.now(UTC)


class JournalEntry(BaseModel):
    """One update, as far as it got."""

    model_config = ConfigDict(extra="forbid")

    update_id: str
    offer: PackageOffer
    force: bool = False
    probation_s: float = 0.0
    step: OtaStep = OtaStep.ACCEPTED
    previous_slot: str = Field(description="the slot live when the update began (the rollback target)")
    target_slot: str = Field(description="the slot the new package is installed into")
    started: datetime = Field(default_factory=_now)
    probation_deadline: datetime | None = None
    live_before: list[str] = Field(default=[], description="the models live when the update began")
    baseline: dict[str, int] = Field(default={}, description="analysed/failed of the model before the switch")
    ok: bool = True
    reason: str | None = None

    @property
    def package(self) -> str:
        return f"{self.offer.name} {self.offer.version}"


class Journal:
    """The journal file of the update in progress (none when no update runs).

    Args:
        path: ``{state}/ota/journal.json``.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def read(self) -> JournalEntry | None:
        """The update in progress, or None. An unreadable journal is set aside and treated as none."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return JournalEntry.model_validate(json.loads(data))
        except (ValueError, ValidationError) as exc:
            broken = self.path.with_name(f"{self.path.name}.broken")
            self.path.replace(broken)
            log.error("OTA journal %s is unreadable (%s); set aside as %s", self.path, exc, broken.name)
            return None

    def write(self, entry: JournalEntry) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, entry.model_dump_json(indent=2).encode())

    def clear(self) -> None:
        if self.path.exists():
            self.path.unlink()
            fsync_dir(self.path.parent)
