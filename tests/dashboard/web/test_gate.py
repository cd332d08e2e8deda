"""Who may reach what (dashboard/web/gate.py and the routes' role checks): the sweeps over every route."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest
from fastapi.routing import iter_route_contexts

from dashboard.auth.roles import ROLE_PERMISSIONS, Permission
from dashboard.store import Role
from dashboard.web.gate import PUBLIC_PATHS, is_device_path
from tests.dashboard.web.conftest import Site

logger = logging.getLogger(__name__)

UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}


def _routes(site: Site) -> list[tuple[str, str]]:
    """Every (method, concrete path) the app serves, path parameters filled with 1."""
    found = []
    for route in iter_route_contexts(site.app.routes):  # FastAPI keeps included routers nested
        if route.methods is None:  # the /static mount
            assert route.path == "/static", route
            continue
        assert route.path is not None
        path = re.sub(r"\{[^}]+\}", "1", route.path)
        for method in sorted(route.methods - {"HEAD"}):
            found.append((method, path))
    return found


def _private(site: Site) -> list[tuple[str, str]]:
    """Routes for people; the device API authenticates appliances itself (see test_device_api_*)."""
    return [(method, path) for method, path in _routes(site) if path not in PUBLIC_PATHS and not is_device_path(path)]


def test_the_device_api_is_only_enroll_and_device_paths_and_refuses_strangers(sqlite_site: Site) -> None:
    device_routes = {(m, p) for m, p in _routes(sqlite_site) if is_device_path(p)}
    assert device_routes == {("POST", "/api/v1/enroll"), ("GET", "/api/v1/device/packages/1")}
    anonymous = sqlite_site.client()
    url = f"/api/v1/device/packages/{'0' * 64}"
    assert anonymous.get(url).status_code == 401
    assert anonymous.get(url, headers={"authorization": "Bearer medge_x"}).status_code == 401
    # A user's session or API token is no device credential.
    admin = sqlite_site.as_role(Role.ADMIN)
    assert admin.get(url).status_code == 401
    assert anonymous.post("/api/v1/enroll", json={}).status_code == 422


def test_the_sweep_covers_pages_api_and_forms(sqlite_site: Site) -> None:
    routes = _private(sqlite_site)
    paths = {path for _, path in routes}
    assert {"/", "/findings/1", "/fleet", "/admin/users", "/api/v1/findings", "/api/v1/stream"} <= paths
    assert {"/api/v1/feedback.csv", "/api/v1/openapi.json", "/api/v1/docs"} <= paths
    assert sum(1 for method, _ in routes if method in UNSAFE) >= 10
    assert len(routes) >= 30


def test_every_route_without_a_session_is_refused(sqlite_site: Site) -> None:
    anonymous = sqlite_site.client()
    for method, path in _private(sqlite_site):
        response = anonymous.request(method, path, data={} if method in UNSAFE else None)
        if path.startswith("/api/"):
            assert response.status_code == 401, (method, path, response.status_code)
            assert response.headers["www-authenticate"].startswith("Bearer")
        else:
            assert response.status_code == 303, (method, path, response.status_code)
            assert response.headers["location"].startswith("/login"), (method, path)


def test_every_route_with_a_forged_session_or_token_is_refused(sqlite_site: Site) -> None:
    forged = sqlite_site.client()
    forged.cookies.set("medge_session", "not-a-session")
    bearer = sqlite_site.client(headers={"authorization": "Bearer medge_not-a-token"})
    for method, path in _private(sqlite_site):
        page = forged.request(method, path)
        assert page.status_code in (401, 303), (method, path, page.status_code)
        assert bearer.request(method, path).status_code == 401, (method, path)


def test_unknown_paths_do_not_reveal_themselves_to_strangers(sqlite_site: Site) -> None:
    anonymous = sqlite_site.client()
    assert anonymous.get("/no/such/page").status_code == 303
    assert anonymous.get("/api/v1/no-such-thing").status_code == 401
    admin = sqlite_site.as_role(Role.ADMIN)
    assert admin.get("/no/such/page").status_code == 404
    assert admin.get("/api/v1/no-such-thing").json() == {"detail": "Not Found"}


def test_login_health_and_static_assets_are_public(sqlite_site: Site) -> None:
    anonymous = sqlite_site.client()
    assert anonymous.get("/login").status_code == 200
    assert anonymous.get("/healthz").json()["status"] == "ok"
    assert anonymous.get("/static/css/app.css").status_code == 200
    assert anonymous.get("/static/js/worklist.js").headers["content-type"].startswith("text/javascript")


def test_a_redirect_to_login_returns_to_the_page_asked_for(sqlite_site: Site) -> None:
    response = sqlite_site.client().get("/fleet?x=1")
    assert response.headers["location"] == "/login?next=%2Ffleet%3Fx%3D1"


@pytest.mark.parametrize("role", [Role.CLINICIAN, Role.TECHNICIAN])
def test_only_admins_reach_admin_pages_and_the_audit_api(sqlite_site: Site, role: Role) -> None:
    client = sqlite_site.as_role(role)
    admin_routes = [(m, p) for m, p in _private(sqlite_site) if p.startswith("/admin") or p == "/api/v1/audit"]
    assert len(admin_routes) >= 8
    for method, path in admin_routes:
        if method in UNSAFE:  # a valid CSRF token, so that the refusal is the role's
            response = client.post_form(path, {"username": "x", "role": "admin", "password": "p" * 12, "name": "x"})
        else:
            response = client.request(method, path)
        assert response.status_code == 403, (role, method, path, response.status_code)
    admin = sqlite_site.as_role(Role.ADMIN)
    assert admin.get("/admin/users").status_code == 200
    assert admin.get("/api/v1/audit").status_code == 200


def test_a_technician_sees_the_fleet_not_the_findings(sqlite_site: Site) -> None:
    finding = sqlite_site.publish_one()
    technician = sqlite_site.as_role(Role.TECHNICIAN)
    assert technician.get("/").headers["location"] == "/fleet"
    assert technician.get("/fleet").status_code == 200
    assert technician.get(f"/findings/{finding}").status_code == 403
    assert technician.get("/api/v1/findings").status_code == 403
    assert technician.get(f"/api/v1/findings/{finding}").status_code == 403
    assert technician.get("/api/v1/feedback.csv").status_code == 403
    assert technician.post_form(f"/findings/{finding}/acknowledge").status_code == 403
    assert technician.get("/api/v1/devices").status_code == 200
    page = technician.get("/fleet").text
    assert 'href="/admin/users"' not in page and ">Worklist<" not in page, (
        "the navigation shows only what the role may use"
    )


def test_every_form_post_without_its_csrf_token_is_refused(sqlite_site: Site) -> None:
    admin = sqlite_site.as_role(Role.ADMIN)
    finding = sqlite_site.publish_one()
    unsafe = [(m, p.replace("/1/", f"/{finding}/")) for m, p in _private(sqlite_site) if m in UNSAFE]
    for method, path in unsafe:
        bare = admin.request(method, path, data={"verdict": "agree", "username": "x", "name": "x", "role": "admin"})
        assert bare.status_code == 403, (method, path, bare.status_code)
        wrong = admin.request(method, path, data={"csrf_token": "wrong"})
        assert wrong.status_code == 403, (method, path)
        json_body = admin.request(method, path, json={"verdict": "agree"})
        assert json_body.status_code == 403, (method, path)
    # Nothing happened.
    assert admin.get(f"/api/v1/findings/{finding}").json()["state"] == "new"
    # The same form with the token goes through.
    assert admin.post_form(f"/findings/{finding}/acknowledge").status_code == 303
    assert admin.get(f"/api/v1/findings/{finding}").json()["state"] == "acknowledged"


def test_the_api_takes_the_csrf_token_as_a_header_from_a_browser_session(sqlite_site: Site) -> None:
    clinician = sqlite_site.as_role(Role.CLINICIAN)
    finding = sqlite_site.publish_one()
    assert clinician.post(f"/api/v1/findings/{finding}/acknowledge").status_code == 403
    response = clinician.post(f"/api/v1/findings/{finding}/acknowledge", headers={"x-csrf-token": clinician.csrf})
    assert response.status_code == 200 and response.json()["state"] == "acknowledged"


def test_a_cross_site_origin_is_refused_even_with_the_token(sqlite_site: Site) -> None:
    clinician = sqlite_site.as_role(Role.CLINICIAN)
    finding = sqlite_site.publish_one()
    response = clinician.post_form(f"/findings/{finding}/acknowledge", headers={"origin": "https://evil.example"})
    assert response.status_code == 403
    same = clinician.post_form(f"/findings/{finding}/acknowledge", headers={"origin": sqlite_site.url})
    assert same.status_code == 303


def test_the_login_form_needs_its_double_submit_token(sqlite_site: Site) -> None:
    user = sqlite_site.add_user(Role.CLINICIAN)
    client = sqlite_site.client()
    response = client.post("/login", data={"username": user.username, "password": "x" * 12})
    assert response.status_code == 403
    client.get("/login")  # sets the cookie; the field must match it
    response = client.post("/login", data={"username": user.username, "password": "x" * 12, "csrf_token": "other"})
    assert response.status_code == 403


def test_security_headers_allow_nothing_from_elsewhere(sqlite_site: Site) -> None:
    client = sqlite_site.as_role(Role.ADMIN)
    page = client.get("/")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["cache-control"] == "no-store", "pages with patient data are never cached"
    assert "max-age" in client.get("/static/css/app.css").headers["cache-control"]
    assert "server" not in page.headers


# The role sweep: every private route's permission, read from its dependencies, refused to every role without it.

# Routes open to every logged-in role, by design: home (a technician is sent to the fleet), account, logout, the
# live stream (filtered per permission inside), the API's own description.
_ANY_ROLE = {"/", "/logout", "/account", "/api/v1/stream", "/api/v1/openapi.json", "/api/v1/docs", "/api/v1/me"}
# Checks made inside the handler on top of its dependency (sending a key rotation needs ROTATE_KEYS).
_INLINE = {"/api/v1/packages/key-rotations": Permission.ROTATE_KEYS, "/packages/key-rotations": Permission.ROTATE_KEYS}


def _permissions(dependant: Any) -> set[Permission]:
    """The permissions a route's dependency tree requires (deps.require names its checks ``require_<name>``)."""
    found = set()
    for dependency in dependant.dependencies:
        name = getattr(dependency.call, "__name__", "")
        if name.startswith("require_"):
            found.add(Permission[name.removeprefix("require_").upper()])
        found |= _permissions(dependency)
    return found


def _role_matrix(site: Site) -> list[tuple[str, str, set[Permission]]]:
    out = []
    for route in iter_route_contexts(site.app.routes):
        if route.methods is None or route.path in PUBLIC_PATHS or is_device_path(route.path):
            continue
        path = re.sub(r"\{[^}]+\}", "1", route.path)
        needed = _permissions(route.dependant) if getattr(route, "dependant", None) is not None else set()
        if path in _INLINE:
            needed.add(_INLINE[path])
        for method in sorted(route.methods - {"HEAD"}):
            out.append((method, path, needed))
    return out


def test_every_private_route_names_its_permission_or_is_open_to_every_role(sqlite_site: Site) -> None:
    unclassified = [(m, p) for m, p, needed in _role_matrix(sqlite_site) if not needed and p not in _ANY_ROLE]
    assert not unclassified, f"routes with no permission check: add one, or list them in _ANY_ROLE: {unclassified}"


def test_every_route_refuses_every_role_without_its_permission(sqlite_site: Site) -> None:
    clients = {role: sqlite_site.as_role(role) for role in Role}
    checked = 0
    for method, path, needed in _role_matrix(sqlite_site):
        for role, client in clients.items():
            if needed <= ROLE_PERMISSIONS[role]:
                continue
            if method in UNSAFE:  # a valid CSRF token, so that the refusal is the role's
                response = client.request(
                    method, path, data={"csrf_token": client.csrf}, headers={"x-csrf-token": client.csrf}
                )
            else:
                response = client.request(method, path)
            assert response.status_code == 403, (role, method, path, sorted(needed), response.status_code)
            checked += 1
    logger.info("role sweep: %d (route, role) refusals checked", checked)
    assert checked >= 30
