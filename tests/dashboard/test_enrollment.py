"""Enrolling appliances (dashboard/enrollment.py, the device API) against a real broker, over HTTPS.

The dashboard serves HTTPS with a certificate from firmware_integration's PKI
and httpx talks to it as ``medge provision`` does; the registrar adds the
device to a real Mosquitto's folder, and the device then connects with what
it was granted.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from dashboard.store import AuditEntry, Device, DeviceCredential, EnrollmentToken, Role
from firmware_integration.broker import AuthMode, write_broker_config
from firmware_integration.broker.registrar import FolderRegistrar
from sdk.fleet_contracts import EnrollmentResponse
from sdk.signing import public_key_pem
from sdk.testing.mosquitto import MosquittoBroker, free_port
from sdk.topics import TopicKind, topic
from tests.conftest import ReferencePackages
from tests.dashboard.enrollment_support import Dashboard, dashboard_config, device_csr
from tests.firmware_integration.test_broker import ACCEPTED, Identity, Peer, Reason, start_broker

SITE = "st-marys"


@pytest.fixture(scope="module")
def package_file(reference_packages: ReferencePackages, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return reference_packages.build(tmp_path_factory.mktemp("package") / "reference.medge")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[tuple[Path, MosquittoBroker]]:
    """A site broker with password auth on loopback (no TLS: the registrar tests cover certificates)."""
    folder = tmp_path / "broker"
    write_broker_config(
        folder, tls=None, auth=AuthMode.PASSWORD, port=free_port(), bind_address="127.0.0.1", run_as=None
    )
    running = start_broker(folder, tmp_path / "run")
    yield folder, running
    running.stop()


@pytest.fixture
def dashboard(
    tmp_path: Path, broker: tuple[Path, MosquittoBroker], reference_packages: ReferencePackages
) -> Iterator[Dashboard]:
    folder, running = broker
    assert running.process is not None
    config = dashboard_config(tmp_path, reference_packages.pair.public_path, web={"login_max_failures": 6})
    registrar = FolderRegistrar(folder, reload_target=running.process.pid)
    started = Dashboard.start(config, registrar=registrar)
    yield started
    started.close()


def new_token(dashboard: Dashboard, **body: Any) -> dict[str, Any]:
    response = dashboard.api(Role.TECHNICIAN).post("/api/v1/enrollment-tokens", json={"site": SITE, **body})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def enroll(
    dashboard: Dashboard, token: str, device: str, site: str = SITE, csr_for: str | None = None
) -> httpx.Response:
    _, csr = device_csr(site, csr_for or device)
    body = {"token": token, "site": site, "device": device, "csr_pem": csr, "profile": "generic-x86_64-cpu"}
    return dashboard.client().post("/api/v1/enroll", json=body)


def upload(dashboard: Dashboard, path: Path) -> dict[str, Any]:
    with path.open("rb") as handle:
        response = dashboard.api(Role.TECHNICIAN).post("/api/v1/packages", files={"file": (path.name, handle)})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_an_enrolled_device_connects_to_the_broker_with_what_it_was_granted(
    dashboard: Dashboard,
    broker: tuple[Path, MosquittoBroker],
    reference_packages: ReferencePackages,
    package_file: Path,
) -> None:
    package = upload(dashboard, package_file)
    created = new_token(dashboard, device="ct-1", group="chest", package_sha256=package["sha256"])
    assert created["command"] == (
        f"medge provision --dashboard {dashboard.url} --token {created['token']} --site {SITE} --device ct-1"
    )
    assert created["info"]["state"] == "active" and created["token"] not in str(created["info"])

    response = enroll(dashboard, created["token"], "ct-1")
    assert response.status_code == 200, response.text
    answer = EnrollmentResponse.model_validate(response.json())
    assert (answer.site, answer.device) == (SITE, "ct-1")
    trusted = public_key_pem(reference_packages.trusted[reference_packages.pair.key_id]).decode()
    assert answer.trusted_keys == [trusted]
    assert answer.package is not None
    assert (answer.package.sha256, answer.package.size) == (package["sha256"], package_file.stat().st_size)
    assert answer.package.url == f"/api/v1/device/packages/{package['sha256']}"
    grant = answer.mqtt
    _, running = broker
    assert (grant.host, grant.port, grant.username) == ("127.0.0.1", running.port, f"{SITE}/ct-1")

    # The device reaches the broker with the password, on its own topics only.
    identity = Identity(grant.username, grant.password)
    own = Peer(running.port, identity, ca=None)
    assert own.connect() == Reason.SUCCESS
    assert own.publish(topic(SITE, "ct-1", TopicKind.FINDING)) in ACCEPTED
    own.close()
    other = Peer(running.port, identity, ca=None)
    assert other.connect() == Reason.SUCCESS
    assert other.publish(topic(SITE, "ct-2", TopicKind.FINDING)) in (Reason.NOT_AUTHORIZED, None)
    other.close()

    store = dashboard.service.store
    with store.session() as session:
        device = session.scalars(select(Device).where(Device.device == "ct-1")).one()
        credential = session.scalars(select(DeviceCredential)).one()
        assert credential.device_id == device.id and credential.device_group == "chest"
        assert credential.token_hash == hashlib.sha256(answer.device_token.encode()).hexdigest()
        assert answer.device_token not in str(session.scalars(select(EnrollmentToken.token_hash)).all())
        actions = [entry.action for entry in session.scalars(select(AuditEntry).order_by(AuditEntry.id))]
    assert "device.enroll" in actions and "enrollment-token.create" in actions

    # Single use.
    again = enroll(dashboard, created["token"], "ct-1")
    assert again.status_code == 401 and "used already" in again.json()["detail"]


def test_the_package_downloads_whole_and_resumes_with_a_range(dashboard: Dashboard, package_file: Path) -> None:
    package = upload(dashboard, package_file)
    token = new_token(dashboard, package_sha256=package["sha256"])["token"]
    answer = EnrollmentResponse.model_validate(enroll(dashboard, token, "ct-1").json())
    assert answer.package is not None
    url = answer.package.url
    expected = package_file.read_bytes()
    device = dashboard.client(answer.device_token)

    whole = device.get(url)
    assert whole.status_code == 200 and whole.content == expected
    assert hashlib.sha256(whole.content).hexdigest() == answer.package.sha256

    # A download cut off half-way ...
    half = len(expected) // 2
    received = bytearray()
    with device.stream("GET", url) as response:
        for chunk in response.iter_bytes(4096):
            received += chunk
            if len(received) >= half:
                break
    received = received[:half]
    # ... continues where it stopped.
    rest = device.get(url, headers={"range": f"bytes={half}-"})
    assert rest.status_code == 206
    assert rest.headers["content-range"] == f"bytes {half}-{len(expected) - 1}/{len(expected)}"
    assert bytes(received) + rest.content == expected


def test_downloads_need_the_device_token_and_an_assignment(
    dashboard: Dashboard, package_file: Path, reference_packages: ReferencePackages, tmp_path: Path
) -> None:
    assigned = upload(dashboard, package_file)
    token = new_token(dashboard, package_sha256=assigned["sha256"])["token"]
    answer = EnrollmentResponse.model_validate(enroll(dashboard, token, "ct-1").json())
    url = f"/api/v1/device/packages/{assigned['sha256']}"
    assert dashboard.client().get(url).status_code == 401
    assert dashboard.client("medge_device_" + "x" * 43).get(url).status_code == 401
    assert dashboard.client(answer.device_token[:-2] + "xx").get(url).status_code == 401
    admin = dashboard.api(Role.ADMIN)
    assert admin.get(url).status_code == 401, "a user's API token is no device credential"
    # Another device, enrolled without the package, may not have it.
    other = new_token(dashboard)["token"]
    second = EnrollmentResponse.model_validate(enroll(dashboard, other, "ct-2").json())
    assert second.package is None
    assert dashboard.client(second.device_token).get(url).status_code == 404
    assert dashboard.client(answer.device_token).get(url).status_code == 200


def test_expired_revoked_unknown_and_foreign_tokens_are_refused(dashboard: Dashboard) -> None:
    store = dashboard.service.store
    expired = new_token(dashboard)
    with store.write() as session:
        session.execute(
            update(EnrollmentToken)
            .where(EnrollmentToken.id == expired["info"]["id"])
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    response = enroll(dashboard, expired["token"], "ct-1")
    assert response.status_code == 401 and "expired" in response.json()["detail"]

    restricted = new_token(dashboard, device="ct-1")
    wrong_site = enroll(dashboard, restricted["token"], "ct-1", site="general")
    assert wrong_site.status_code == 403 and "site 'st-marys'" in wrong_site.json()["detail"]
    wrong_device = enroll(dashboard, restricted["token"], "ct-9")
    assert wrong_device.status_code == 403 and "'ct-1' only" in wrong_device.json()["detail"]
    mismatched_csr = enroll(dashboard, restricted["token"], "ct-1", csr_for="ct-9")
    assert mismatched_csr.status_code == 400 and "CN must be" in mismatched_csr.json()["detail"]
    # None of these used the token up.
    assert enroll(dashboard, restricted["token"], "ct-1").status_code == 200
    # A site-wide token cannot take over a device that is enrolled already.
    takeover = enroll(dashboard, new_token(dashboard)["token"], "ct-1")
    assert takeover.status_code == 403 and "enrolled already" in takeover.json()["detail"]

    revoked = new_token(dashboard)
    technician = dashboard.api(Role.TECHNICIAN)
    assert technician.post(f"/api/v1/enrollment-tokens/{revoked['info']['id']}/revoke").json()["state"] == "revoked"
    assert enroll(dashboard, revoked["token"], "ct-3").status_code == 401
    states = {item["id"]: item["state"] for item in technician.get("/api/v1/enrollment-tokens").json()}
    assert states[revoked["info"]["id"]] == "revoked" and states[restricted["info"]["id"]] == "used"
    assert states[expired["info"]["id"]] == "expired"


def test_repeated_failures_are_throttled_like_logins(dashboard: Dashboard) -> None:
    for _ in range(6):
        assert enroll(dashboard, "medge_enroll_" + "n" * 40, "ct-1").status_code == 401
    throttled = enroll(dashboard, "medge_enroll_" + "n" * 40, "ct-1")
    assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) > 0
    # Even a good token waits out the lockout from this address.
    assert enroll(dashboard, new_token(dashboard)["token"], "ct-1").status_code == 429


def test_two_concurrent_uses_of_one_token_enroll_one_device(dashboard: Dashboard) -> None:
    token = new_token(dashboard)["token"]
    barrier = threading.Barrier(2)
    results: dict[str, int] = {}

    def use(device: str) -> None:
        barrier.wait()
        results[device] = enroll(dashboard, token, device).status_code

    threads = [threading.Thread(target=use, args=(name,)) for name in ("ct-1", "ct-2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(results.values()) == [200, 401], results
    with dashboard.service.store.session() as session:
        assert len(session.scalars(select(DeviceCredential)).all()) == 1


def test_without_a_broker_registrar_enrollment_says_it_is_not_set_up(
    tmp_path: Path, reference_packages: ReferencePackages
) -> None:
    config = dashboard_config(tmp_path, reference_packages.pair.public_path)
    dashboard = Dashboard.start(config)
    try:
        created = new_token(dashboard)
        response = enroll(dashboard, created["token"], "ct-1")
        assert response.status_code == 503 and "broker_dir" in response.json()["detail"]
        assert enroll(dashboard, created["token"], "ct-1").status_code == 503, "the token was not used up"
        page = dashboard.api(Role.ADMIN).get("/api/v1/enrollment-tokens")
        assert page.json()[0]["state"] == "active"
    finally:
        dashboard.close()
