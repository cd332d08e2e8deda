"""The dashboard in a real browser (Playwright driving Debian's headless Chromium) over a real Mosquitto.

Log in; a finding published by an appliance over MQTT appears on two open
worklists without a reload; acknowledge it; an appliance process is killed
and the fleet page shows it offline when the broker fires its will. Every
request the pages make is watched: none may leave the machine. Screenshots
are saved in the test's tmp folder.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from dashboard.settings import DashboardConfig
from dashboard.store import Role
from dashboard.web import DashboardService
from sdk.testing.mosquitto import MosquittoBroker
from sdk.topics import TopicKind
from tests.dashboard.conftest import Appliance, make_finding
from tests.dashboard.web.conftest import PASSWORD, insert_user

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")

logger = logging.getLogger(__name__)

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture
def dashboard(dashboard_config: Callable[..., DashboardConfig]) -> Iterator[DashboardService]:
    """The whole dashboard as ``medge dashboard`` runs it: ingest + web app + uvicorn, in this process."""
    config = dashboard_config("dashboard-browser")
    config = config.model_copy(update={"web": config.web.model_copy(update={"port": 0})})
    with DashboardService(config) as running:
        assert running.ingest is not None and running.ingest.wait_ready(10), "the ingest did not subscribe"
        yield running


def _offline_context(
    browser: object, base: str, leaked: list[str], errors: list[str], *, own_ca: bool = False
) -> object:
    """A browser context that refuses, and records, any request to another host than the dashboard.

    Script errors and console errors (a Content-Security-Policy violation is one) are recorded in ``errors``.
    ``own_ca``: the dashboard's HTTPS certificate is signed by a test CA the browser does not know.
    """
    context = browser.new_context(  # type: ignore[attr-defined]
        viewport={"width": 1400, "height": 900}, ignore_https_errors=own_ca
    )
    own = urlsplit(base).netloc

    def on_page(page: object) -> None:
        page.on("pageerror", lambda error: errors.append(f"page error: {error}"))  # type: ignore[attr-defined]
        page.on(  # type: ignore[attr-defined]
            "console", lambda message: errors.append(message.text) if message.type == "error" else None
        )

    context.on("page", on_page)  # type: ignore[attr-defined]

    def guard(route: object) -> None:
        url = route.request.url  # type: ignore[attr-defined]
        if urlsplit(url).netloc != own and not url.startswith(("data:", "blob:")):
            leaked.append(url)
            route.abort()  # type: ignore[attr-defined]
        else:
            route.continue_()  # type: ignore[attr-defined]

    context.route("**/*", guard)
    return context


def test_worklist_live_acknowledge_and_an_appliance_going_offline(
    dashboard: DashboardService, broker: MosquittoBroker, browser: object, tmp_path: Path
) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    insert_user(dashboard.store, Role.CLINICIAN, "nurse.ratched")
    leaked: list[str] = []
    errors: list[str] = []

    # Two staff members have the worklist open.
    pages = []
    for _ in range(2):
        page = _offline_context(browser, dashboard.url, leaked, errors).new_page()  # type: ignore[attr-defined]
        page.goto(dashboard.url + "/")
        assert "/login" in page.url
        page.fill("input[name=username]", "nurse.ratched")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(dashboard.url + "/")
        page.wait_for_selector("#live-status.on", timeout=10_000)
        page.evaluate("window.medgeTestMarker = 'no reload'")
        pages.append(page)
    page = pages[0]
    page.screenshot(path=str(shots / "1-worklist-empty.png"), full_page=True)

    # An appliance reports a positive finding over MQTT.
    appliance = Appliance(broker.port, device="ct-7")
    try:
        finding = make_finding(device="ct-7", seq=0, label="nodule", score=0.93, positive=True)
        published = time.time()
        appliance.publish(TopicKind.FINDING, finding.to_json())
        latencies = []
        for each in pages:
            row = each.locator("tr.finding.arrived", has_text="st-marys/ct-7")
            row.wait_for(timeout=5_000)
            latencies.append(int(row.get_attribute("data-arrived-at")) / 1000 - published)
            assert each.evaluate("window.medgeTestMarker") == "no reload"
            assert "POSITIVE" in row.inner_text() and "0.93" in row.inner_text()
        logger.info("publish → visible: %s s", [round(latency, 3) for latency in latencies])
        assert max(latencies) < 1.0, latencies
        page.screenshot(path=str(shots / "2-finding-arrived.png"), full_page=True)

        # Acknowledge it; the other open worklist follows.
        page.locator("tr.finding", has_text="st-marys/ct-7").get_by_role("button", name="Acknowledge").click()
        page.wait_for_load_state()
        assert page.locator("tr.finding", has_text="st-marys/ct-7").locator(".state").inner_text() == "acknowledged"
        other = pages[1].locator("tr.finding", has_text="st-marys/ct-7")
        sync_api.expect(other.locator(".state")).to_have_text("acknowledged", timeout=5_000)
        assert other.get_by_role("button", name="Acknowledge").count() == 0
        page.screenshot(path=str(shots / "3-acknowledged.png"), full_page=True)
        page.locator("tr.finding", has_text="st-marys/ct-7").get_by_role("link", name="nodule").click()
        page.wait_for_selector("#feedback")
        assert "nurse.ratched" in page.inner_text("#feedback") and page.locator("#review").count() == 1
        page.screenshot(path=str(shots / "4-finding-page.png"), full_page=True)
    finally:
        appliance.close()

    # An appliance process with a will message, on the fleet page.
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.dashboard.web.appliance_process", str(broker.port), "st-marys", "us-3"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        page.goto(dashboard.url + "/fleet")
        row = page.locator("tr.device", has_text="st-marys/us-3")
        sync_api.expect(row.locator('[data-field="state"]')).to_have_text("online", timeout=10_000)
        page.wait_for_selector("#live-status.on", timeout=10_000)
        page.evaluate("window.medgeTestMarker = 'no reload'")
        page.screenshot(path=str(shots / "5-fleet-online.png"), full_page=True)
        killed = time.monotonic()
        process.send_signal(signal.SIGKILL)  # no DISCONNECT: the broker publishes the will
        process.wait(10)
        sync_api.expect(row.locator('[data-field="state"]')).to_have_text("offline", timeout=7_500)
        offline_after = time.monotonic() - killed
        logger.info("killed → shown offline: %.2f s", offline_after)
        assert page.evaluate("window.medgeTestMarker") == "no reload"
        assert "will" in row.locator('[data-field="offline_reason"]').inner_text()
        assert "chest-ct 1.2.0" in row.inner_text(), "what it ran is still shown"
        page.screenshot(path=str(shots / "6-fleet-offline.png"), full_page=True)

        # Its page draws its charts itself, from the metrics endpoint.
        row.get_by_role("link", name="st-marys/us-3").click()
        page.wait_for_selector("#chart-latency svg circle.line-p50", timeout=10_000)
        assert page.locator("#chart-findings svg rect.bar-all").count() == 24, "one bar per hour"
        assert page.locator("#chart-queue svg path.line-queue").count() == 1
        assert page.locator('#device [data-field="state"]').text_content() == "offline"
        page.screenshot(path=str(shots / "7-device-page.png"), full_page=True)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()

    assert leaked == [], f"the pages tried to reach other hosts: {leaked}"
    # A stream cut by the server at shutdown is not the page's fault; anything else is.
    assert [error for error in errors if "EventSource" not in error] == []
    assert sorted(path.name for path in shots.iterdir()) == [
        "1-worklist-empty.png",
        "2-finding-arrived.png",
        "3-acknowledged.png",
        "4-finding-page.png",
        "5-fleet-online.png",
        "6-fleet-offline.png",
        "7-device-page.png",
    ]
