"""``/api/v1/devices`` and ``/api/v1/events``: the fleet for scripts and for the device page's charts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query

from dashboard.errors import NotFoundError
from dashboard.fleet import device_health, device_metrics, fleet_health, last_errors, sequence_gaps
from dashboard.store.models import Device
from dashboard.web.deps import ContextDep, FleetViewer
from dashboard.web.queries import EventQuery, events_page
from dashboard.web.schemas import DeviceMetricsPublic, DevicePublic, EventPublic, EventsPage

router = APIRouter(prefix="/api/v1", tags=["fleet"])


@router.get("/devices", response_model=list[DevicePublic], summary="Every appliance and its health")
def list_devices(_principal: FleetViewer, context: ContextDep) -> list[DevicePublic]:
    with context.store.session() as session:
        fleet = fleet_health(session, silent_after_s=context.config.fleet.silent_after_s)
    return [DevicePublic(**health.summary()) for health in fleet]


@router.get("/devices/{device_id}", response_model=DevicePublic, summary="One appliance's health")
def get_device(device_id: int, _principal: FleetViewer, context: ContextDep) -> DevicePublic:
    with context.store.session() as session:
        device = session.get(Device, device_id)
        if device is None:
            raise NotFoundError(f"no device {device_id}")
        error = last_errors(session, [device_id]).get(device_id)
        health = device_health(
            device, now=datetime.now(UTC), silent_after_s=context.config.fleet.silent_after_s, last_error=error
        )
    return DevicePublic(**health.summary())


@router.get(
    "/devices/{device_id}/metrics",
    response_model=DeviceMetricsPublic,
    summary="Findings per hour, latency and queue depth over time, sequence gaps",
)
def get_device_metrics(
    device_id: int,
    _principal: FleetViewer,
    context: ContextDep,
    hours: Annotated[int, Query(ge=1, le=24 * 14)] = 24,
) -> DeviceMetricsPublic:
    with context.store.session() as session:
        device = session.get(Device, device_id)
        if device is None:
            raise NotFoundError(f"no device {device_id}")
        metrics = device_metrics(session, device, hours=hours)
        gaps = sequence_gaps(session, device_id)
    return DeviceMetricsPublic(
        hours=metrics.hours,
        findings_per_hour=metrics.findings_per_hour,
        latency=metrics.latency,
        queue_depth=metrics.queue_depth,
        gaps=gaps,
    )


@router.get("/events", response_model=EventsPage, summary="Appliance events, newest first, paged")
def list_events(
    _principal: FleetViewer,
    context: ContextDep,
    device_id: int | None = None,
    severity: str | None = None,
    before: Annotated[int | None, Query(description="next_before of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> EventsPage:
    rows, next_before = events_page(context.store, EventQuery(device_id, severity, before, limit))
    return EventsPage(items=[EventPublic.of(row) for row in rows], next_before=next_before)
