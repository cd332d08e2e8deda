"""The live feed behind ``GET /api/v1/stream`` (server-sent events): new findings, state changes, devices.

One poller per process reads the store, not the ingest: the finding may have
been committed by another dashboard process behind the same database, and
the store is what the pages show anyway. It runs only while someone
listens, every ``poll_s`` (200 ms by default) for findings and every second
for devices, and fans each event out to every subscriber's queue.

New findings are followed by id. On PostgreSQL ids are handed out at insert
and committed in any order, so an id skipped over is kept as *pending* and
looked for again for ``_PENDING_S`` seconds (on SQLite, writes are serialised
and ids arrive in order). State changes are found by ``state_changed_at`` with
an overlap, deduplicated. A device event is sent when anything its fleet row
shows changes, including going offline by silence (no new row needed).

Events:
    ``finding``: a new finding (its id is the SSE id, so a reconnecting
    browser's ``Last-Event-ID`` replays what it missed);
    ``finding-state``: a finding was acknowledged or reviewed;
    ``device``: a device's fleet row changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from dashboard.auth.roles import Permission, Principal
from dashboard.fleet import device_health, last_errors
from dashboard.store.engine import Store
from dashboard.store.models import Device, Finding, FindingState

__all__ = ["LiveEvent", "LiveFeed", "Subscription", "finding_event"]

logger = logging.getLogger(__name__)

_PENDING_S = 30.0
_STATE_OVERLAP = timedelta(seconds=10)
_DEVICE_POLL_S = 1.0
_BATCH = 500
_MAX_QUEUED = 2000


@dataclass(frozen=True)
class LiveEvent:
    """One server-sent event and who may receive it."""

    kind: str
    data: dict[str, Any]
    permission: Permission
    id: str | None = None

    def encode(self) -> str:
        """The event in the ``text/event-stream`` wire format."""
        head = f"id: {self.id}\n" if self.id is not None else ""
        return f"{head}event: {self.kind}\ndata: {json.dumps(self.data, separators=(',', ':'))}\n\n"


def finding_event(finding: Finding) -> LiveEvent:
    """The ``finding`` event of a stored finding (no study reference: that is seen, and audited, on its page)."""
    data = {
        "id": finding.id,
        "site": finding.site,
        "device": finding.device,
        "modality": finding.modality,
        "label": finding.label,
        "score": finding.score,
        "positive": finding.positive,
        "state": finding.state.value,
        "created": finding.created.isoformat(),
        "received_at": finding.received_at.isoformat(),
        "package": f"{finding.package_name} {finding.package_version}",
        "url": f"/findings/{finding.id}",
    }
    return LiveEvent("finding", data, Permission.VIEW_FINDINGS, str(finding.id))


@dataclass(eq=False)
class Subscription:
    """One listening browser or script: its queue of encoded events (``None`` ends the stream)."""

    principal: Principal
    kinds: frozenset[str] | None = None
    queue: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    closed: bool = False

    def wants(self, event: LiveEvent) -> bool:
        """May see it, and asked for its kind."""
        return self.principal.can(event.permission) and (self.kinds is None or event.kind in self.kinds)

    def offer(self, event: LiveEvent) -> None:
        if self.closed or not self.wants(event):
            return
        if self.queue.qsize() >= _MAX_QUEUED:
            # A client this far behind is stuck; it reconnects and replays from its Last-Event-ID.
            self.close()
            return
        self.queue.put_nowait(event.encode())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.queue.put_nowait(None)


class LiveFeed:
    """Polls the store while anyone listens and broadcasts what changed.

    Args:
        store: the open store.
        poll_s: how often to look for new findings and state changes.
        silent_after_s: the fleet's silence threshold (see :mod:`dashboard.fleet`).
        device_poll_s: how often to look at the devices (their silence grows without any new row).
    """

    def __init__(
        self, store: Store, *, poll_s: float = 0.2, silent_after_s: float = 45.0, device_poll_s: float = _DEVICE_POLL_S
    ) -> None:
        self.store = store
        self.poll_s = poll_s
        self.device_poll_s = device_poll_s
        self.silent_after_s = silent_after_s
        self._subscribers: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._primed: asyncio.Event | None = None
        self._max_id: int | None = None
        self._pending: dict[int, float] = {}
        self._state_since: datetime | None = None
        self._states: dict[int, tuple[str, float]] = {}
        self._devices: dict[int, str] = {}
        self._devices_primed = False
        self._devices_at = float("-inf")
        self.polls = 0

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    # Life cycle (on the event loop) ---------------------------------------------------------------

    def start(self) -> None:
        """Start the poller on the running event loop."""
        if self._task is None:
            self._wake = asyncio.Event()
            self._primed = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run(), name="medge-live-feed")

    def close_streams(self) -> None:
        """End every open stream (on the event loop; the server is shutting down)."""
        for subscription in list(self._subscribers):
            subscription.close()
        self._subscribers.clear()

    async def stop(self) -> None:
        """End every stream and the poller."""
        self.close_streams()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def subscribe(self, principal: Principal, kinds: frozenset[str] | None = None) -> Subscription:
        """Start receiving events the principal may see (of ``kinds`` only, if given)."""
        subscription = Subscription(principal, kinds)
        if not self._subscribers:
            self._reset()
        self._subscribers.add(subscription)
        if self._wake is not None:
            self._wake.set()
        return subscription

    async def wait_primed(self, timeout: float = 5.0) -> None:
        """Wait until the poller knows where the store stands, so a replay up to now leaves no hole."""
        if self._primed is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._primed.wait(), timeout)

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)

    def _reset(self) -> None:
        # Nobody listened meanwhile: start from now, not from where the last listener left.
        if self._primed is not None:
            self._primed.clear()
        self._max_id = None
        self._pending.clear()
        self._state_since = None
        self._states.clear()
        self._devices.clear()
        self._devices_primed = False
        self._devices_at = float("-inf")

    async def _run(self) -> None:
        assert self._wake is not None
        failures = 0
        while True:
            if not self._subscribers:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                events = await asyncio.to_thread(self.poll)
                failures = 0
            except Exception:
                failures += 1
                logger.exception("the live feed cannot read the store (attempt %d)", failures)
                await asyncio.sleep(min(5.0, self.poll_s * 2**failures))
                continue
            if self._max_id is not None and self._primed is not None:
                self._primed.set()
            for event in events:
                for subscription in list(self._subscribers):
                    subscription.offer(event)
            await asyncio.sleep(self.poll_s)

    # Polling (in a worker thread) ------------------------------------------------------------------

    def poll(self) -> list[LiveEvent]:
        """One look at the store: the events since the last look."""
        self.polls += 1
        now = time.monotonic()
        events = self._new_findings(now) + self._state_changes(now)
        if now - self._devices_at >= self.device_poll_s:
            self._devices_at = now
            events += self._device_changes()
        return events

    def _new_findings(self, now: float) -> list[LiveEvent]:
        events: list[LiveEvent] = []
        with self.store.session() as session:
            if self._max_id is None:
                self._max_id = session.scalar(select(Finding.id).order_by(Finding.id.desc()).limit(1)) or 0
                return events
            rows = list(
                session.scalars(select(Finding).where(Finding.id > self._max_id).order_by(Finding.id).limit(_BATCH))
            )
            if self._pending:
                rows += session.scalars(select(Finding).where(Finding.id.in_(list(self._pending)[:_BATCH])))
        for row in sorted(rows, key=lambda finding: finding.id):
            self._pending.pop(row.id, None)
            if row.id > self._max_id:
                self._pending.update(dict.fromkeys(range(self._max_id + 1, row.id), now))
                self._max_id = row.id
            events.append(finding_event(row))
        for finding_id, since in list(self._pending.items()):
            if now - since > _PENDING_S:
                del self._pending[finding_id]
        return events

    def _state_changes(self, now: float) -> list[LiveEvent]:
        wall = datetime.now(UTC)
        since = self._state_since
        self._state_since = wall
        if since is None:
            return []
        with self.store.session() as session:
            rows = session.execute(
                select(Finding.id, Finding.state, Finding.state_changed_at)
                .where(Finding.state_changed_at >= since - _STATE_OVERLAP)
                .order_by(Finding.state_changed_at)
                .limit(_BATCH)
            ).all()
        events = []
        for finding_id, state, _ in rows:
            value = FindingState(state).value
            if self._states.get(finding_id, ("", 0.0))[0] == value:
                continue
            self._states[finding_id] = (value, now)
            data = {"id": finding_id, "state": value}
            events.append(LiveEvent("finding-state", data, Permission.VIEW_FINDINGS))
        for finding_id, (_, at) in list(self._states.items()):
            if now - at > 3 * _STATE_OVERLAP.total_seconds():
                del self._states[finding_id]
        return events

    def _device_changes(self) -> list[LiveEvent]:
        wall = datetime.now(UTC)
        with self.store.session() as session:
            devices = list(session.scalars(select(Device)))
            errors = last_errors(session)
        events = []
        for device in devices:
            health = device_health(
                device, now=wall, silent_after_s=self.silent_after_s, last_error=errors.get(device.id)
            )
            summary = health.summary()
            # silent_s moves every second; the row changes when anything else does.
            signature = json.dumps({**summary, "silent_s": None}, sort_keys=True, default=str)
            if self._devices.get(device.id) != signature:
                self._devices[device.id] = signature
                if self._devices_primed:  # the first look only learns; subscribers got a snapshot
                    events.append(LiveEvent("device", summary, Permission.VIEW_FLEET))
        self._devices_primed = True
        return events

    # Catching up (in a worker thread, for one subscriber) -----------------------------------------

    def findings_after(self, finding_id: int, *, limit: int = 200) -> list[LiveEvent]:
        """The ``finding`` events of findings newer than ``finding_id`` (a reconnect's replay), oldest first."""
        with self.store.session() as session:
            rows = session.scalars(
                select(Finding).where(Finding.id > finding_id).order_by(Finding.id.desc()).limit(limit)
            ).all()
        return [finding_event(row) for row in reversed(rows)]

    def device_snapshot(self) -> list[LiveEvent]:
        """A ``device`` event for every device as it is now (what a fleet page starts from)."""
        wall = datetime.now(UTC)
        with self.store.session() as session:
            devices = list(session.scalars(select(Device).order_by(Device.site, Device.device)))
            errors = last_errors(session)
        return [
            LiveEvent(
                "device",
                device_health(
                    device, now=wall, silent_after_s=self.silent_after_s, last_error=errors.get(device.id)
                ).summary(),
                Permission.VIEW_FLEET,
            )
            for device in devices
        ]
