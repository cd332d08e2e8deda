"""The fleet page, a device's page (its charts are drawn by ``static/js/device.js``), the events log."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select

from dashboard.errors import NotFoundError
from dashboard.fleet import device_health, fleet_health, last_errors, sequence_gaps
from dashboard.store.models import Device
from dashboard.web.deps import ContextDep, FleetViewer
from dashboard.web.queries import EventQuery, events_page

router = APIRouter(include_in_schema=False)

_SEVERITIES = ("info", "warning", "error", "critical")


@router.get("/fleet", response_class=HTMLResponse)
def fleet_page(request: Request, _principal: FleetViewer, context: ContextDep) -> Response:
    with context.store.session() as session:
        fleet = fleet_health(session, silent_after_s=context.config.fleet.silent_after_s)
    online = sum(1 for health in fleet if health.online)
    return context.renderer.page(
        request,
        "fleet.html",
        {
            "fleet": fleet,
            "online": online,
            "degraded": sum(1 for health in fleet if health.degraded),
            "silent_after_s": context.config.fleet.silent_after_s,
        },
    )


@router.get("/devices/{device_id}", response_class=HTMLResponse)
def device_page(device_id: int, request: Request, _principal: FleetViewer, context: ContextDep) -> Response:
    with context.store.session() as session:
        device = session.get(Device, device_id)
        if device is None:
            raise NotFoundError(f"no device {device_id}")
        health = device_health(
            device,
            now=datetime.now(UTC),
            silent_after_s=context.config.fleet.silent_after_s,
            last_error=last_errors(session, [device_id]).get(device_id),
        )
        gaps = sequence_gaps(session, device_id, limit=20)
    events, _ = events_page(context.store, EventQuery(device_id=device_id, limit=20))
    return context.renderer.page(
        request,
        "device.html",
        {"health": health, "gaps": gaps, "events": events, "silent_after_s": context.config.fleet.silent_after_s},
    )


@router.get("/events", response_class=HTMLResponse)
def events_log(request: Request, _principal: FleetViewer, context: ContextDep) -> Response:
    params = request.query_params
    device_id = int(params["device"]) if params.get("device", "").isdigit() else None
    severity = params.get("severity") if params.get("severity") in _SEVERITIES else None
    before = int(params["before"]) if params.get("before", "").isdigit() else None
    rows, next_before = events_page(context.store, EventQuery(device_id, severity, before, 100))
    with context.store.session() as session:
        devices = session.execute(select(Device.id, Device.site, Device.device).order_by(Device.site, Device.device))
        device_list = [(row.id, f"{row.site}/{row.device}") for row in devices]
    kept = {key: value for key, value in (("device", device_id), ("severity", severity)) if value is not None}
    next_url = "/events?" + urlencode({**kept, "before": next_before}) if next_before else None
    return context.renderer.page(
        request,
        "events.html",
        {
            "events": rows,
            "devices": device_list,
            "severities": _SEVERITIES,
            "device_id": device_id,
            "severity": severity,
            "next_url": next_url,
        },
    )
