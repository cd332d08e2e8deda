"""The live feed (dashboard/web/live.py, GET /api/v1/stream): several listeners, replay, permissions; both databases."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from dashboard.audit import Actor
from dashboard.store import Role
from dashboard.workflow import acknowledge
from sdk.messages import Status
from tests.dashboard.conftest import wait_for
from tests.dashboard.web.conftest import Browserless, Site


class Listener:
    """Reads a server-sent event stream in a thread, as EventSource does."""

    def __init__(self, client: Browserless, path: str, headers: dict[str, str] | None = None) -> None:
        self.events: list[tuple[str, dict[str, Any], str | None]] = []
        self.opened = threading.Event()
        self._client = client
        self._response: httpx.Response | None = None
        self._thread = threading.Thread(target=self._read, args=(path, headers or {}), daemon=True)
        self._thread.start()
        assert self.opened.wait(10), "the stream did not open"

    def _read(self, path: str, headers: dict[str, str]) -> None:
        kind, data, event_id = "message", "", None
        try:
            with self._client.stream("GET", path, headers=headers, timeout=30) as response:
                self._response = response
                assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
                self.opened.set()
                for line in response.iter_lines():
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: "):
                        data = line[6:]
                    elif line.startswith("id: "):
                        event_id = line[4:]
                    elif line == "" and data:
                        self.events.append((kind, json.loads(data), event_id))
                        kind, data, event_id = "message", "", None
        except (httpx.HTTPError, RuntimeError):
            pass  # closed by the test

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [data for event_kind, data, _ in list(self.events) if event_kind == kind]

    def close(self) -> None:
        """Drop the connection, as a closed browser tab does (a blocked read only ends when its socket does)."""
        if self._response is not None:
            stream = self._response.extensions.get("network_stream")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)
        assert not self._thread.is_alive()
        self._client.close()


def test_several_listeners_each_get_each_new_finding_once(site: Site) -> None:
    listeners = [Listener(site.as_role(Role.CLINICIAN), "/api/v1/stream?kinds=finding") for _ in range(3)]
    try:
        time.sleep(0.5)  # the poller has primed itself
        started = time.monotonic()
        first = site.publish_one(positive=True, label="nodule")
        assert wait_for(lambda: all(listener.of("finding") for listener in listeners), timeout=5)
        latency = time.monotonic() - started
        second = site.publish_one()
        assert wait_for(lambda: all(len(listener.of("finding")) == 2 for listener in listeners), timeout=5)
        for listener in listeners:
            assert [event["id"] for event in listener.of("finding")] == [first, second]
            event = listener.of("finding")[0]
            assert event["positive"] is True and event["label"] == "nodule" and event["url"] == f"/findings/{first}"
            assert "study_ref" not in event, "the stream carries no study reference"
        assert latency < 2.0
    finally:
        for listener in listeners:
            listener.close()
    assert wait_for(lambda: site.app.state.medge.live.subscribers == 0, timeout=5), "closed streams are forgotten"


def test_a_reconnecting_browser_replays_what_it_missed(site: Site) -> None:
    seen = site.publish_one()
    missed = [site.publish_one(), site.publish_one()]
    listener = Listener(site.as_role(Role.CLINICIAN), "/api/v1/stream?kinds=finding", {"last-event-id": str(seen)})
    try:
        assert wait_for(lambda: len(listener.of("finding")) == 2, timeout=5)
        assert [event["id"] for event in listener.of("finding")] == missed
        assert [event_id for _, _, event_id in listener.events] == [str(missed[0]), str(missed[1])]
    finally:
        listener.close()


def test_state_changes_and_device_changes_reach_those_allowed_to_see_them(
    site_factory: Callable[..., Site], sqlite_store: object
) -> None:
    site = site_factory(sqlite_store)
    finding = site.publish_one()
    site.publish(Status(site="st-marys", device="ct-1", state="online"))
    clinician = Listener(site.as_role(Role.CLINICIAN), "/api/v1/stream?kinds=finding,finding-state")
    technician = Listener(site.as_role(Role.TECHNICIAN), "/api/v1/stream?devices=1")
    try:
        assert wait_for(lambda: technician.of("device"), timeout=5), "a fleet page starts from a snapshot"
        assert technician.of("device")[0]["state"] == "online"
        time.sleep(0.5)
        acknowledge(site.store, finding, actor=Actor("someone-else"))
        assert wait_for(lambda: clinician.of("finding-state"), timeout=5)
        assert clinician.of("finding-state") == [{"id": finding, "state": "acknowledged"}]
        site.publish(Status(site="st-marys", device="ct-1", state="offline"))
        assert wait_for(lambda: technician.of("device")[-1]["state"] == "offline", timeout=5)
        assert technician.of("device")[-1]["offline_reason"].startswith("disconnected")
        site.publish_one()
        time.sleep(0.6)
        assert technician.of("finding") == [] and technician.of("finding-state") == [], "a technician sees no findings"
        assert clinician.of("device") == [], "not asked for"
    finally:
        clinician.close()
        technician.close()
