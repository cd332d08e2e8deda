"""The pages work with the network cut off: templates and static assets name nothing outside the dashboard."""

from __future__ import annotations

import re
from pathlib import Path

from dashboard.store import Role
from dashboard.web.rendering import STATIC_DIR, TEMPLATES_DIR
from sdk.messages import Status
from tests.dashboard.web.conftest import Site

# An XML namespace is a name, not an address: browsers never fetch it.
_NAMESPACES = {"http://www.w3.org/2000/svg"}
_EXTERNAL = re.compile(r"""(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}[^\s"'<>)]*""")


def _external_references(text: str) -> list[str]:
    return [match for match in _EXTERNAL.findall(text) if match not in _NAMESPACES]


def test_no_template_or_asset_refers_to_another_host() -> None:
    files = [*TEMPLATES_DIR.rglob("*.html"), *STATIC_DIR.rglob("*.*")]
    assert len(files) >= 15
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert _external_references(text) == [], path
        assert "@import" not in text and "fonts.googleapis" not in text, path


def test_every_asset_a_template_names_is_shipped() -> None:
    named = set()
    for template in TEMPLATES_DIR.rglob("*.html"):
        named |= set(re.findall(r"static\('([^']+)'\)", template.read_text(encoding="utf-8")))
    assert {"css/app.css", "js/app.js", "js/worklist.js", "js/fleet.js", "js/charts.js", "js/device.js"} <= named
    for name in named:
        assert (STATIC_DIR / name).is_file(), name


def test_no_page_refers_to_another_host(sqlite_site: Site) -> None:
    finding = sqlite_site.publish_one()
    sqlite_site.publish(Status(site="st-marys", device="ct-1", state="online"))
    admin = sqlite_site.as_role(Role.ADMIN)
    pages = ["/", f"/findings/{finding}", "/fleet", "/devices/1", "/events", "/admin/users", "/admin/audit"]
    pages += ["/admin/system", "/api/v1/docs"]
    for page in pages:
        response = admin.get(page)
        assert response.status_code == 200, page
        assert _external_references(response.text) == [], page
    assert _external_references(sqlite_site.client().get("/login").text) == []


def test_inline_scripts_and_styles_are_absent_so_the_policy_can_forbid_them() -> None:
    for template in TEMPLATES_DIR.rglob("*.html"):
        text = template.read_text(encoding="utf-8")
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), template
        assert " style=" not in text and "<style" not in text and "javascript:" not in text, template
        assert not re.search(r"\son[a-z]+=", text), f"{template}: inline event handler"


def test_static_files_are_package_data() -> None:
    """What the lead lists under [tool.setuptools.package-data] for dashboard.web."""
    shipped = {path.relative_to(Path(TEMPLATES_DIR).parent).as_posix() for path in TEMPLATES_DIR.rglob("*.html")}
    shipped |= {path.relative_to(Path(STATIC_DIR).parent).as_posix() for path in STATIC_DIR.rglob("*.*")}
    patterns = ["templates/*.html", "templates/admin/*.html", "static/*.svg", "static/css/*.css", "static/js/*.js"]
    covered = {name for name in shipped if any(Path(name).match(pattern) for pattern in patterns)}
    assert covered == shipped
