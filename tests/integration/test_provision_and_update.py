"""A field tech's day, end to end: enroll a boxed appliance with one token, see its findings, update its model.

Real parts only: Mosquitto running the shipped broker config (TLS, passwords,
ACLs), the dashboard over HTTPS with its MQTT ingest and broker registrar,
``medge provision`` and ``medge serve`` as the CLI runs them, dcmtk's
storescu as the scanner. The appliance is then updated over the air from the
dashboard: it downloads the new package from the dashboard, verifies it,
installs it in the other slot, switches and passes probation, and its next
findings come from the new version.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from dashboard.store import Role
from firmware_integration.broker import AuthMode, add_dashboard, read_broker_settings
from firmware_integration.broker.registrar import FolderRegistrar
from firmware_integration.layout import Layout
from sdk.cli.main import app
from sdk.testing import PhantomSpec, generate_studies
from sdk.testing.dicom_peers import storescu
from sdk.testing.medge_process import MedgeProcess
from sdk.testing.mosquitto import MosquittoBroker, free_port
from tests.conftest import ReferencePackages
from tests.dashboard.conftest import wait_for
from tests.dashboard.enrollment_support import Dashboard, dashboard_config
from tests.dashboard.test_rollouts import with_version
from tests.firmware_integration.test_broker import make_broker_folder, make_test_pki, start_broker

pytestmark = pytest.mark.slow

SITE, DEVICE, SCANNER = "st-marys", "ct-1", "SCANNER1"


def _storescu(port: int, files: list[Path]) -> None:
    result = storescu(port, files)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def site(tmp_path: Path, reference_packages: ReferencePackages) -> Iterator[tuple[Dashboard, Path]]:
    """The site's broker (shipped config, TLS + passwords) and the dashboard enrolling into it."""
    pki = make_test_pki(tmp_path / "pki")
    folder = make_broker_folder(tmp_path / "broker", pki, AuthMode.PASSWORD)
    dashboard_identity = add_dashboard(folder, "dashboard-1")
    dashboard_identity.write(tmp_path / "dashboard-mqtt")
    broker: MosquittoBroker = start_broker(folder, tmp_path / "broker-run")
    assert broker.process is not None
    mqtt = {
        "host": "127.0.0.1",
        "port": read_broker_settings(folder).port,
        "client_id": "dashboard-1",
        "username": "dashboard-1",
        "password_file": tmp_path / "dashboard-mqtt" / "password",
        "ca_file": tmp_path / "dashboard-mqtt" / "ca.crt",
    }
    config = dashboard_config(tmp_path / "dashboard", reference_packages.pair.public_path, mqtt=mqtt)
    dashboard = Dashboard.start(
        config, ingest=True, registrar=FolderRegistrar(folder, reload_target=broker.process.pid)
    )
    try:
        yield dashboard, dashboard.ca
    finally:
        dashboard.close()
        broker.stop()


def _findings(client: httpx.Client) -> list[dict[str, Any]]:
    response = client.get("/api/v1/findings", params={"limit": 500})
    assert response.status_code == 200, response.text
    body = response.json()
    return body["items"] if isinstance(body, dict) else body


def test_a_provisioned_appliance_reports_findings_and_takes_an_update(
    site: tuple[Dashboard, Path], tmp_path: Path, reference_packages: ReferencePackages
) -> None:
    dashboard, dashboard_ca = site
    technician = dashboard.api(Role.TECHNICIAN)
    admin = dashboard.api(Role.ADMIN)
    v1 = reference_packages.build(tmp_path / "v1.medge")
    v2 = with_version(v1, tmp_path / "v2.medge", "1.1.0", reference_packages.key)
    with v1.open("rb") as handle:
        uploaded = technician.post("/api/v1/packages", files={"file": ("v1.medge", handle)})
    assert uploaded.status_code == 200, uploaded.text

    # The technician makes a token on the dashboard, offering the first package.
    made = technician.post(
        "/api/v1/enrollment-tokens", json={"site": SITE, "device": DEVICE, "package_sha256": uploaded.json()["sha256"]}
    )
    assert made.status_code == 200, made.text
    token = made.json()["token"]
    assert f"--token {token}" in made.json()["command"]

    # On the appliance: one command.
    layout = Layout(tmp_path / "appliance-root")
    dicom_port = free_port()
    arguments = [
        "provision",
        "--dashboard",
        dashboard.url,
        "--token",
        token,
        "--site",
        SITE,
        "--device",
        DEVICE,
        "--scanner-ae",
        SCANNER,
        "--dicom-port",
        str(dicom_port),
        "--dashboard-ca",
        str(dashboard_ca),
        "--profile",
        "generic-x86_64-cpu",
        "--prefix",
        str(layout.prefix),
        "--no-start",
    ]
    result = CliRunner().invoke(app, arguments)
    output = result.output
    assert "enroll" in output and "package" in output, (output, result.exception)
    assert "PASS MQTT broker" in output and "PASS package" in output, output
    assert result.exit_code in (0, 1), output
    if result.exit_code == 1:  # only the host's clock or disk may fail in a sandbox, never what provisioning did
        failed = [line for line in output.splitlines() if line.startswith("FAIL")]
        assert all(line.startswith(("FAIL clock", "FAIL disk")) for line in failed), output
    assert (layout.mqtt_dir / "device.key").stat().st_mode & 0o077 == 0o040  # root:medge 0640, never world
    # The token is spent.
    again = CliRunner().invoke(app, [*arguments, "--overwrite"])
    assert again.exit_code == 2 and "refused the enrollment (401)" in again.output, again.output

    served = MedgeProcess(
        ["serve", "--config", str(layout.appliance_config), "--health-port", "0"], tmp_path / "serve.log"
    ).start()
    try:
        assert wait_for(lambda: "packages live" in served.log_tail(), 60), served.log_tail()
        studies = generate_studies(tmp_path / "studies", 2, PhantomSpec(slices=4), seed=11)
        files = [tmp_path / "studies" / str(t.folder) / str(s.file) for t in studies for s in t.series[0].slices]
        _storescu(dicom_port, files[:4])
        assert wait_for(lambda: len(_findings(admin)) == 4, 60), served.log_tail()
        assert {f["package"]["version"] for f in _findings(admin)} == {"1.0.0"}

        # Over the air: the new version, to this device.
        with v2.open("rb") as handle:
            newer = technician.post("/api/v1/packages", files={"file": ("v2.medge", handle)}).json()
        devices = [d["id"] for d in technician.get("/api/v1/devices").json() if d["device"] == DEVICE]
        started = technician.post(f"/api/v1/packages/{newer['sha256']}/rollouts", json={"devices": devices})
        assert started.status_code == 200, started.text
        update_id = started.json()[0]["update_id"]

        def state() -> str:
            return str(technician.get(f"/api/v1/rollouts/{update_id}").json()["state"])

        assert wait_for(lambda: state() in ("done", "refused", "rolled-back", "failed"), 90), served.log_tail()
        rollout = technician.get(f"/api/v1/rollouts/{update_id}").json()
        assert rollout["state"] == "done", rollout
        steps = [step["step"] for step in rollout["steps"]]
        for step in ("download", "verify", "install", "golden", "switch", "probation", "done"):
            assert step in steps, steps
        assert (layout.packages_dir).is_symlink() and os.readlink(layout.packages_dir).endswith("B")

        _storescu(dicom_port, files[4:])
        assert wait_for(lambda: len(_findings(admin)) == 8, 60), served.log_tail()
        newest = [f for f in _findings(admin) if f["package"]["version"] == "1.1.0"]
        assert len(newest) == 4

        # Going back down needs an admin's decision.
        older = technician.post(f"/api/v1/packages/{uploaded.json()['sha256']}/rollouts", json={"devices": devices})
        assert older.status_code == 409, older.text
    finally:
        code = served.signal()
    assert code == 0, served.log_tail()
