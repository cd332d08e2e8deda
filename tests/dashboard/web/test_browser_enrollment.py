"""A technician's pages in a real browser (Playwright driving Debian's headless Chromium).

Upload a signed package, make an enrollment token offering it, read the
``medge provision`` command off the page, and see a tampered upload refused.
Every request the pages make is watched: none may leave the machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dashboard.store import Role
from tests.conftest import ReferencePackages
from tests.dashboard.enrollment_support import Dashboard, dashboard_config
from tests.dashboard.web.conftest import PASSWORD, insert_user
from tests.dashboard.web.test_browser import CHROMIUM, _offline_context

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")


def test_a_technician_uploads_a_package_and_makes_a_token(
    tmp_path: Path,
    reference_packages: ReferencePackages,
    browser: object,
) -> None:
    package = reference_packages.build(tmp_path / "chest.medge")
    tampered = tmp_path / "tampered.medge"
    data = bytearray(package.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    dashboard = Dashboard.start(dashboard_config(tmp_path / "dash", reference_packages.pair.public_path))
    try:
        insert_user(dashboard.service.store, Role.TECHNICIAN, "tech.tina")
        leaked: list[str] = []
        errors: list[str] = []
        context = _offline_context(browser, dashboard.url, leaked, errors, own_ca=True)
        context.set_default_timeout(10_000)  # type: ignore[attr-defined]
        page = context.new_page()  # type: ignore[attr-defined]
        page.goto(dashboard.url + "/packages")
        page.fill("input[name=username]", "tech.tina")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(dashboard.url + "/packages")

        page.set_input_files("input[name=file]", str(tampered))
        page.locator("form[enctype='multipart/form-data']").first.locator("button[type=submit]").click()
        page.wait_for_load_state()
        refusal = page.inner_text("[role=alert]")
        assert "tampered.medge" in refusal or "hash" in refusal or "signature" in refusal, refusal
        page.set_input_files("input[name=file]", str(package))
        page.locator("form[enctype='multipart/form-data']").first.locator("button[type=submit]").click()
        page.wait_for_load_state()
        assert "chest-ct-nodule" in page.inner_text("main")
        page.screenshot(path=str(tmp_path / "packages.png"), full_page=True)

        page.get_by_role("link", name="Enrollment").click()
        page.fill("input[name=site]", "st-marys")
        page.fill("input[name=device]", "ct-1")
        page.select_option("select[name=package]", index=1)
        page.get_by_role("button", name="Create token").click()
        command = page.inner_text("#provision-command")
        assert command.startswith("medge provision --dashboard https://127.0.0.1:")
        assert "--site st-marys" in command and "--device ct-1" in command and "--token " in command
        assert "active until" in page.inner_text("table.tokens")
        page.screenshot(path=str(tmp_path / "enrollment.png"), full_page=True)
        context.close()  # type: ignore[attr-defined]
        assert leaked == []
        # The refused upload is answered 400 (the browser logs it); nothing else may go wrong on the pages.
        assert [e for e in errors if "EventSource" not in e] == [
            "Failed to load resource: the server responded with a status of 400 (Bad Request)"
        ]
    finally:
        dashboard.close()
