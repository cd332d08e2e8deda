"""The Enrollment and Packages pages (dashboard/web/pages/enrollment.py, packages.py): forms, CSRF, roles."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from dashboard.store import Role
from tests.conftest import ReferencePackages
from tests.dashboard.web.conftest import Site


@pytest.fixture(scope="module")
def package_file(reference_packages: ReferencePackages, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return reference_packages.build(tmp_path_factory.mktemp("package") / "reference.medge")


def test_a_technician_creates_a_token_sees_the_command_once_and_revokes_it(sqlite_site: Site) -> None:
    technician = sqlite_site.as_role(Role.TECHNICIAN)
    page = technician.get("/enrollment")
    assert page.status_code == 200 and 'href="/enrollment"' in page.text and 'href="/packages"' in page.text
    assert "Enrollment is not set up" in page.text  # this app has no broker registrar
    assert technician.post("/enrollment/tokens", data={"site": "st-marys"}).status_code == 403, "CSRF"

    created = technician.post_form("/enrollment/tokens", {"site": "st-marys", "device": "ct-1", "valid_hours": "2"})
    assert created.status_code == 200
    command = re.search(r'id="provision-command">([^<]+)<', created.text)
    assert command is not None
    token = re.search(r"--token (medge_enroll_\S+)", command.group(1))
    assert token is not None
    assert command.group(1) == (
        f"medge provision --dashboard {sqlite_site.url} --token {token.group(1)} --site st-marys --device ct-1"
    )
    listed = technician.get("/enrollment").text
    assert token.group(1) not in listed, "the token is shown once"
    assert "active until" in listed

    bad = technician.post_form("/enrollment/tokens", {"site": "st marys"})
    assert bad.status_code == 400 and "must be 1-64 letters" in bad.text
    token_id = re.search(r'action="/enrollment/tokens/(\d+)/revoke"', listed)
    assert token_id is not None
    assert technician.post_form(f"/enrollment/tokens/{token_id.group(1)}/revoke").status_code == 303
    assert "revoked" in technician.get("/enrollment").text

    clinician = sqlite_site.as_role(Role.CLINICIAN)
    assert clinician.get("/enrollment").status_code == 403
    assert clinician.get("/packages").status_code == 403
    assert 'href="/enrollment"' not in clinician.get("/fleet").text


def test_packages_are_uploaded_from_the_page_and_only_admins_see_force(
    sqlite_site: Site, package_file: Path, reference_packages: ReferencePackages
) -> None:
    trusted = sqlite_site.config.trusted_keys_dir
    trusted.mkdir(parents=True, exist_ok=True)
    shutil.copy(reference_packages.pair.public_path, trusted / reference_packages.pair.public_path.name)
    technician = sqlite_site.as_role(Role.TECHNICIAN)
    page = technician.get("/packages")
    assert page.status_code == 200 and 'name="force"' not in page.text and "Rotate signing keys" not in page.text
    action = re.search(r'<form method="post" action="(/packages\?csrf_token=[^"]+)" enctype', page.text)
    assert action is not None
    with package_file.open("rb") as handle:
        assert technician.post("/packages", files={"file": ("p.medge", handle)}).status_code == 403, "CSRF"
    with package_file.open("rb") as handle:
        uploaded = technician.post(action.group(1).replace("&amp;", "&"), files={"file": ("p.medge", handle)})
    assert uploaded.status_code == 200 and "verified and kept" in uploaded.text
    assert "chest-ct-nodule" in uploaded.text and reference_packages.pair.key_id in uploaded.text
    # This app runs without the MQTT ingest: a rollout says so instead of pretending.
    sha = re.search(r'<option value="([0-9a-f]{64})">chest-ct-nodule', uploaded.text)
    assert sha is not None
    sent = technician.post_form("/packages/rollout", {"package": sha.group(1), "sites": "st-marys"})
    assert sent.status_code == 400 and "no MQTT connection" in sent.text

    admin_page = sqlite_site.as_role(Role.ADMIN).get("/packages").text
    assert 'name="force"' in admin_page and "Rotate signing keys" in admin_page
