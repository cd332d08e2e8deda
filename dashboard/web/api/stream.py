"""``GET /api/v1/stream``: the live feed as server-sent events (see :mod:`dashboard.web.live`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from dashboard.auth.roles import Permission
from dashboard.web.deps import ContextDep, PrincipalDep

router = APIRouter(prefix="/api/v1", tags=["live"])

_AFTER = Query(description="replay findings with a larger id first (the page's newest)")
_KINDS = Query(description="comma-separated: finding, finding-state, device (default: all)")

KEEPALIVE_S = 15.0
"""A comment line this often keeps proxies from closing an idle stream."""
MAX_STREAM_S = 300.0
"""A stream ends after this long and the browser reconnects (re-checking the session), replaying what it missed."""


@router.get(
    "/stream",
    summary="Server-sent events: finding, finding-state, device",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def stream(
    principal: PrincipalDep,
    context: ContextDep,
    after: Annotated[
        int | None, Query(description="replay findings with a larger id first (the page's newest)")
    ] = None,
    devices: Annotated[bool, Query(description="start with every device's current state")] = False,
    kinds: Annotated[
        str | None, Query(description="comma-separated: finding, finding-state, device (default all)")
    ] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    live = context.live
    wanted = frozenset(kind.strip() for kind in kinds.split(",") if kind.strip()) if kinds else None
    subscription = live.subscribe(principal, wanted)
    if last_event_id is not None and last_event_id.isdigit():
        after = int(last_event_id)

    async def events() -> AsyncIterator[str]:
        try:
            yield "retry: 2000\n\n"
            await live.wait_primed()
            if after is not None and principal.can(Permission.VIEW_FINDINGS):
                for event in await asyncio.to_thread(live.findings_after, after):
                    if subscription.wants(event):
                        yield event.encode()
            if devices and principal.can(Permission.VIEW_FLEET):
                for event in await asyncio.to_thread(live.device_snapshot):
                    if subscription.wants(event):
                        yield event.encode()
            loop = asyncio.get_running_loop()
            ends = loop.time() + MAX_STREAM_S
            while loop.time() < ends:
                try:
                    encoded = await asyncio.wait_for(subscription.queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if encoded is None:
                    return
                yield encoded
        finally:
            live.unsubscribe(subscription)

    headers = {"cache-control": "no-store", "x-accel-buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
