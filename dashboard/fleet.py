"""Appliance health as the fleet page shows it: online or not, and why; what runs; how it is doing.

A device is **offline** when its retained status says so (the broker publishes
its will message when the connection drops: within 1.5x its keep-alive), or
when nothing at all has been heard from it for 1.5x the longer of its
keep-alive and heartbeat period (``fleet.silent_after_s``): that covers a
broker that itself lost sight of the device, or a dashboard cut off from the
broker. Everything else comes from the last status (packages, version) and
the last heartbeat (engines and providers, degraded, queues, latency, alarms).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dashboard.store.models import Device, DeviceState, Event, Finding, Heartbeat, SequenceGap

__all__ = [
    "ERROR_SEVERITIES",
    "DeviceHealth",
    "DeviceMetrics",
    "Liveness",
    "device_health",
    "device_metrics",
    "fleet_health",
    "last_errors",
    "liveness",
    "sequence_gaps",
]

ERROR_SEVERITIES = ("error", "critical")

ConnectionLabel = Literal["online", "offline", "unknown"]


@dataclass(frozen=True)
class Liveness:
    """Whether a device is online, and why it is not.

    Attributes:
        state: ``online``, ``offline``, or ``unknown`` (never heard a status and nothing recent).
        reason: why offline (``will message``, ``status``, ``silent for 52 s``), else ``None``.
        silent_s: seconds since anything was heard from it.
    """

    state: ConnectionLabel
    reason: str | None
    silent_s: float


def liveness(state: DeviceState, last_seen: datetime, now: datetime, silent_after_s: float) -> Liveness:
    """Combine the retained status (and will) with the age of the last message."""
    silent = max(0.0, (now - last_seen).total_seconds())
    if state == DeviceState.OFFLINE:
        return Liveness("offline", "disconnected (will message or offline status)", silent)
    if silent > silent_after_s:
        return Liveness("offline", f"silent for {silent:.0f} s", silent)
    return Liveness("online", None, silent)


@dataclass(frozen=True)
class DeviceHealth:
    """One appliance on the fleet page (see the module docstring for what each part comes from)."""

    id: int
    site: str
    device: str
    liveness: Liveness
    last_seen: datetime
    first_seen: datetime
    state_changed_at: datetime | None
    version: str | None
    packages: list[dict[str, Any]]
    engines: list[dict[str, Any]]
    degraded: bool
    degraded_reasons: list[str]
    queue_depth: int | None
    queues: dict[str, int]
    outbox_depth: int | None
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    alarms: list[str]
    last_heartbeat_at: datetime | None
    findings_count: int
    max_seq: int | None
    missing_count: int
    last_error: dict[str, Any] | None

    @property
    def online(self) -> bool:
        return self.liveness.state == "online"

    def summary(self) -> dict[str, Any]:
        """The JSON the live feed and the devices API send."""
        return {
            "id": self.id,
            "site": self.site,
            "device": self.device,
            "online": self.online,
            "state": self.liveness.state,
            "offline_reason": self.liveness.reason,
            "silent_s": round(self.liveness.silent_s, 1),
            "last_seen": self.last_seen.isoformat(),
            "version": self.version,
            "packages": self.packages,
            "engines": self.engines,
            "degraded": self.degraded,
            "degraded_reasons": self.degraded_reasons,
            "queue_depth": self.queue_depth,
            "outbox_depth": self.outbox_depth,
            "latency_ms_p50": self.latency_ms_p50,
            "latency_ms_p95": self.latency_ms_p95,
            "alarms": self.alarms,
            "last_heartbeat_at": None if self.last_heartbeat_at is None else self.last_heartbeat_at.isoformat(),
            "findings_count": self.findings_count,
            "max_seq": self.max_seq,
            "missing_count": self.missing_count,
            "last_error": self.last_error,
        }


def _error_summary(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "kind": event.kind,
        "severity": event.severity,
        "message": event.message,
        "created": event.created.isoformat(),
    }


def device_health(
    device: Device, *, now: datetime, silent_after_s: float, last_error: Event | None = None
) -> DeviceHealth:
    """The health of one device from its row (and its last error event, if any)."""
    status = device.status or {}
    beat = device.last_heartbeat or {}
    engines = [dict(engine) for engine in beat.get("engines", [])]
    queues = {str(name): int(depth) for name, depth in (beat.get("queues") or {}).items()}
    return DeviceHealth(
        id=device.id,
        site=device.site,
        device=device.device,
        liveness=liveness(device.state, device.last_seen, now, silent_after_s),
        last_seen=device.last_seen,
        first_seen=device.first_seen,
        state_changed_at=device.state_changed_at,
        version=status.get("version") or None,
        packages=[dict(package) for package in status.get("packages", [])],
        engines=engines,
        degraded=any(engine.get("degraded") for engine in engines),
        degraded_reasons=[
            f"{engine.get('package')}: {engine.get('reason') or 'degraded'}"
            for engine in engines
            if engine.get("degraded")
        ],
        queue_depth=sum(queues.values()) if beat else None,
        queues=queues,
        outbox_depth=beat.get("outbox_depth"),
        latency_ms_p50=beat.get("latency_ms_p50"),
        latency_ms_p95=beat.get("latency_ms_p95"),
        alarms=[str(alarm) for alarm in beat.get("alarms", [])],
        last_heartbeat_at=device.last_heartbeat_at,
        findings_count=device.findings_count,
        max_seq=device.max_seq,
        missing_count=device.missing_count,
        last_error=None if last_error is None else _error_summary(last_error),
    )


def last_errors(session: Session, device_ids: list[int] | None = None) -> dict[int, Event]:
    """The newest error or critical event of each device (of ``device_ids``, or all)."""
    newest = select(Event.device_id, func.max(Event.id).label("id")).where(Event.severity.in_(ERROR_SEVERITIES))
    if device_ids is not None:
        newest = newest.where(Event.device_id.in_(device_ids))
    ids = newest.group_by(Event.device_id).subquery()
    return {event.device_id: event for event in session.scalars(select(Event).join(ids, Event.id == ids.c.id))}


def fleet_health(session: Session, *, now: datetime | None = None, silent_after_s: float) -> list[DeviceHealth]:
    """Every device's health, by site and device name."""
    now = now or datetime.now(UTC)
    errors = last_errors(session)
    devices = session.scalars(select(Device).order_by(Device.site, Device.device))
    return [
        device_health(device, now=now, silent_after_s=silent_after_s, last_error=errors.get(device.id))
        for device in devices
    ]


def sequence_gaps(session: Session, device_id: int, *, limit: int = 100) -> list[tuple[int, int]]:
    """The runs of finding numbers never received from a device, newest first."""
    rows = session.execute(
        select(SequenceGap.first_seq, SequenceGap.last_seq)
        .where(SequenceGap.device_id == device_id)
        .order_by(SequenceGap.first_seq.desc())
        .limit(limit)
    )
    return [(first, last) for first, last in rows]


@dataclass(frozen=True)
class DeviceMetrics:
    """The series the device page charts (times as ISO strings, oldest first).

    Attributes:
        hours: the window.
        findings_per_hour: ``[hour start, findings, positives]``.
        latency: ``[heartbeat time, p50 ms, p95 ms]``.
        queue_depth: ``[heartbeat time, queued instances, outbox depth]``.
    """

    hours: int
    findings_per_hour: list[tuple[str, int, int]]
    latency: list[tuple[str, float | None, float | None]]
    queue_depth: list[tuple[str, int, int]]


def device_metrics(session: Session, device: Device, *, hours: int = 24, now: datetime | None = None) -> DeviceMetrics:
    """Findings per hour, latency and queue depth of one device over the last ``hours``."""
    now = now or datetime.now(UTC)
    start = (now - timedelta(hours=hours - 1)).replace(minute=0, second=0, microsecond=0)
    created = session.execute(
        select(Finding.created, Finding.positive).where(
            Finding.site == device.site, Finding.device == device.device, Finding.created >= start
        )
    )
    counts: Counter[datetime] = Counter()
    positives: Counter[datetime] = Counter()
    for moment, positive in created:
        hour = moment.replace(minute=0, second=0, microsecond=0)
        counts[hour] += 1
        positives[hour] += bool(positive)
    per_hour = []
    for index in range(hours):
        hour = start + timedelta(hours=index)
        per_hour.append((hour.isoformat(), counts[hour], positives[hour]))
    beats = session.execute(
        select(
            Heartbeat.received_at,
            Heartbeat.latency_ms_p50,
            Heartbeat.latency_ms_p95,
            Heartbeat.queue_depth,
            Heartbeat.outbox_depth,
        )
        .where(Heartbeat.device_id == device.id, Heartbeat.received_at >= start)
        .order_by(Heartbeat.id)
    ).all()
    return DeviceMetrics(
        hours=hours,
        findings_per_hour=per_hour,
        latency=[(row[0].isoformat(), row[1], row[2]) for row in beats],
        queue_depth=[(row[0].isoformat(), row[3], row[4]) for row in beats],
    )
