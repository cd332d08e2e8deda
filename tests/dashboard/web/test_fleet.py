"""Appliance health (dashboard/fleet.py) and the fleet pages: online, offline by will, offline by silence."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from dashboard.fleet import liveness
from dashboard.store import Device, DeviceState, Role
from dashboard.web.live import LiveFeed
from sdk.messages import Event, Heartbeat, PackageRef, Status
from tests.dashboard.web.conftest import Site

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def test_liveness_combines_the_retained_status_and_the_silence() -> None:
    recent = NOW - timedelta(seconds=10)
    assert liveness(DeviceState.ONLINE, recent, NOW, 45).state == "online"
    assert liveness(DeviceState.UNKNOWN, recent, NOW, 45).state == "online", "heard from, status not yet seen"
    will = liveness(DeviceState.OFFLINE, recent, NOW, 45)
    assert will.state == "offline" and "will" in (will.reason or "")
    silent = liveness(DeviceState.ONLINE, NOW - timedelta(seconds=46), NOW, 45)
    assert silent.state == "offline" and silent.reason == "silent for 46 s" and silent.silent_s == 46


def test_offline_by_silence_is_pushed_without_any_new_message(site: Site) -> None:
    """Nothing arrives from a silent device, so nothing changes in its row: the feed's clock notices."""
    site.publish(Status(site="st-marys", device="ct-9", state="online"))
    feed = LiveFeed(site.store, silent_after_s=site.config.fleet.silent_after_s, device_poll_s=0)
    feed.poll()  # primes: learns the fleet as it is
    assert [event.data["state"] for event in feed.poll() if event.kind == "device"] == []
    with site.store.write() as session:
        session.execute(update(Device).values(last_seen=datetime.now(UTC) - timedelta(seconds=120)))
    events = [event for event in feed.poll() if event.kind == "device"]
    assert [(e.data["device"], e.data["state"]) for e in events] == [("ct-9", "offline")]
    assert events[0].data["offline_reason"].startswith("silent for 12")


def test_a_will_message_keeps_what_the_device_last_said_it_runs(site: Site) -> None:
    package = PackageRef(name="chest-ct", version="1.2.0", precision="int8", profile="x", sha256="a" * 64)
    site.publish(Status(site="st-marys", device="ct-1", state="online", version="0.4.1", packages=[package]))
    site.publish(Status(site="st-marys", device="ct-1", state="offline"))  # the will names nothing
    (device,) = site.as_role(Role.TECHNICIAN).get("/api/v1/devices").json()
    assert device["state"] == "offline" and device["version"] == "0.4.1"
    assert [p["version"] for p in device["packages"]] == ["1.2.0"]


def test_the_fleet_page_shows_what_runs_and_how_it_does(site: Site) -> None:
    site.publish(
        Status(site="st-marys", device="ct-1", state="online", version="0.4.1"),
        Status(site="st-marys", device="mr-2", state="offline"),
    )
    site.publish(
        Heartbeat(site="st-marys", device="ct-1", uptime_s=5, queues={"infer": 4}, latency_ms_p50=21.0),
        Event(site="st-marys", device="mr-2", kind="engine-error", severity="critical", message="GPU lost"),
    )
    page = site.as_role(Role.TECHNICIAN).get("/fleet").text
    assert '<span id="fleet-online">1</span> of <span id="fleet-total">2</span>' in page
    ct1 = page[page.index("st-marys/ct-1") :]
    assert "0.4.1" in ct1 and ">online<" in ct1[:600]
    mr2 = page[page.index("st-marys/mr-2") :]
    assert ">offline<" in mr2[:600] and "GPU lost" in mr2
    assert "21.0 ms" in page and ">4<" in page


def test_a_device_page_draws_its_charts_from_shipped_scripts(sqlite_site: Site) -> None:
    sqlite_site.publish(Status(site="st-marys", device="ct-1", state="online"))
    page = sqlite_site.as_role(Role.TECHNICIAN).get("/devices/1").text
    for chart in ("chart-findings", "chart-latency", "chart-queue"):
        assert f'id="{chart}"' in page
    assert "/static/js/charts.js?v=" in page and "/static/js/device.js?v=" in page
