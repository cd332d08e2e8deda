"""Packages and over-the-air rollouts (dashboard/packages.py, dashboard/rollouts.py) with the real ingest.

A real Mosquitto carries the ``update`` commands to paho clients playing the
appliances, and their answers and ``ota`` events back through the ingest,
which moves each rollout in the transaction that stores them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from dashboard.store import AuditEntry, Role
from firmware_integration.broker import AuthMode, write_broker_config
from firmware_integration.broker.registrar import FolderRegistrar
from sdk.fleet_contracts import (
    OTA_EVENT,
    EnrollmentResponse,
    KeyRotation,
    OtaReport,
    OtaStep,
    UpdateRequest,
    endorse_keys,
)
from sdk.messages import Command, CommandResult, Event, PackageRef, Status, parse_message
from sdk.package import MANIFEST_NAME, SIGNATURE_NAME, open_package, write_package
from sdk.signing import public_key_pem
from sdk.testing.mosquitto import MosquittoBroker, free_port
from sdk.topics import TopicKind, topic
from tests.conftest import ReferencePackages
from tests.dashboard.conftest import wait_for
from tests.dashboard.enrollment_support import Dashboard, dashboard_config, device_csr

SITE = "st-marys"


def with_version(source: Path, out: Path, version: str, key: Ed25519PrivateKey) -> Path:
    """The same package with another version, signed by ``key``."""
    package = open_package(source)
    manifest = package.manifest.model_copy(
        update={"model": package.manifest.model.model_copy(update={"version": version})}
    )
    files = {name: data for name, data in package.members.items() if name not in (MANIFEST_NAME, SIGNATURE_NAME)}
    write_package(out, manifest, files, key)
    return out


@pytest.fixture(scope="module")
def versions(reference_packages: ReferencePackages, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Signed packages of the reference model at versions 1.0.0 (as built), 1.1.0 and 0.9.0."""
    folder = tmp_path_factory.mktemp("versions")
    built = reference_packages.build(folder / "v1.0.0.medge")
    key = reference_packages.key
    return {
        "1.0.0": built,
        "1.1.0": with_version(built, folder / "v1.1.0.medge", "1.1.0", key),
        "0.9.0": with_version(built, folder / "v0.9.0.medge", "0.9.0", key),
    }


class Appliance:
    """A paho client subscribed to one device's commands, answering as the OTA agent would."""

    def __init__(self, port: int, device: str) -> None:
        self.device = device
        self.commands: list[Command] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{SITE}.{device}", protocol=mqtt.MQTTv5)
        self.client.on_subscribe = lambda *_args: subscribed.set()
        self.client.on_connect = lambda client, *_args: client.subscribe(
            topic(SITE, device, TopicKind.CMD) + "/#", qos=1
        )
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        assert subscribed.wait(10), "could not subscribe to the cmd topic"

    def _on_message(self, _client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        command = parse_message(message.payload)
        if isinstance(command, Command) and command.command != "resend":
            with self._lock:
                self.commands.append(command)

    def command(self, name: str = "update", timeout: float = 10.0) -> Command:
        """The newest command of ``name`` received (waits for one)."""
        found: list[Command] = []
        assert wait_for(lambda: found.extend(c for c in self.commands if c.command == name) or found, timeout), name
        return found[-1]

    def publish(self, message: Any, kind: TopicKind) -> None:
        self.client.publish(topic(SITE, self.device, kind), message.to_json(), qos=1).wait_for_publish(10)

    def answer(self, command: Command, ok: bool = True, error: str | None = None) -> None:
        result = CommandResult(site=SITE, device=self.device, correlation_id=command.id, ok=ok, error=error)
        self.publish(result, TopicKind.CMD_RESULT)

    def step(self, request: UpdateRequest, step: OtaStep, **fields: Any) -> None:
        package = f"{request.package.name} {request.package.version}"
        report = OtaReport(update_id=request.update_id, step=step, package=package, **fields)
        event = Event(
            site=SITE,
            device=self.device,
            kind=OTA_EVENT,
            message=f"{step.value}",
            detail=report.model_dump(mode="json"),
        )
        self.publish(event, TopicKind.EVENT)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def fleet(
    tmp_path: Path, broker: MosquittoBroker, reference_packages: ReferencePackages
) -> Iterator[tuple[Dashboard, Callable[[str], Appliance]]]:
    """The dashboard with its ingest on the test broker, and appliances enrolled in group "chest"."""
    folder = tmp_path / "site-broker"  # the registrar's folder (its own broker is not needed here)
    write_broker_config(
        folder, tls=None, auth=AuthMode.PASSWORD, port=free_port(), bind_address="127.0.0.1", run_as=None
    )
    config = dashboard_config(tmp_path, reference_packages.pair.public_path, mqtt_port=broker.port)
    dashboard = Dashboard.start(config, ingest=True, registrar=FolderRegistrar(folder))
    assert dashboard.service.ingest is not None and dashboard.service.ingest.wait_ready(10)
    appliances: list[Appliance] = []

    def appliance(device: str) -> Appliance:
        created = dashboard.api(Role.TECHNICIAN).post(
            "/api/v1/enrollment-tokens", json={"site": SITE, "device": device, "group": "chest"}
        )
        _, csr = device_csr(SITE, device)
        body = {"token": created.json()["token"], "site": SITE, "device": device, "csr_pem": csr}
        EnrollmentResponse.model_validate(dashboard.client().post("/api/v1/enroll", json=body).json())
        made = Appliance(broker.port, device)
        appliances.append(made)
        return made

    yield dashboard, appliance
    for made in appliances:
        made.close()
    dashboard.close()


def upload(client: httpx.Client, path: Path) -> httpx.Response:
    with path.open("rb") as handle:
        return client.post("/api/v1/packages", files={"file": (path.name, handle)})


def rollout_of(client: httpx.Client, update_id: str, state: str, timeout: float = 10.0) -> dict[str, Any]:
    """The rollout once it reached ``state``."""
    seen: dict[str, Any] = {}

    def reached() -> bool:
        seen.update(client.get(f"/api/v1/rollouts/{update_id}").json())
        return seen.get("state") == state

    assert wait_for(reached, timeout), seen
    return seen


def test_a_rollout_to_a_group_follows_each_devices_steps(
    fleet: tuple[Dashboard, Callable[[str], Appliance]], versions: dict[str, Path]
) -> None:
    dashboard, appliance = fleet
    ct1, ct2 = appliance("ct-1"), appliance("ct-2")
    technician = dashboard.api(Role.TECHNICIAN)
    package = upload(technician, versions["1.1.0"]).json()
    started = technician.post(f"/api/v1/packages/{package['sha256']}/rollouts", json={"groups": ["chest"]})
    assert started.status_code == 200, started.text
    assert sorted((r["device"], r["state"]) for r in started.json()) == [("ct-1", "sent"), ("ct-2", "sent")]

    command = ct1.command()
    request = UpdateRequest.model_validate(command.args)
    assert request.package.sha256 == package["sha256"] and request.package.version == "1.1.0"
    assert request.package.url == f"/api/v1/device/packages/{package['sha256']}"
    assert not request.force and request.probation_s == 5
    ct1.answer(command)
    ct1.step(request, OtaStep.ACCEPTED)
    rollout_of(technician, request.update_id, "running")
    ct1.step(request, OtaStep.DOWNLOAD, progress=0.5)
    for step in (OtaStep.VERIFY, OtaStep.INSTALL, OtaStep.GOLDEN, OtaStep.SWITCH, OtaStep.PROBATION, OtaStep.DONE):
        ct1.step(request, step)
    done = rollout_of(technician, request.update_id, "done")
    steps = [step["step"] for step in done["steps"]]
    assert steps == ["accepted", "accepted", "download", "verify", "install", "golden", "switch", "probation", "done"]
    assert done["steps"][2]["progress"] == 0.5 and done["package"] == "chest-ct-nodule 1.1.0"
    # A re-sent event changes nothing; a late step after the end is recorded but does not reopen it.
    ct1.step(request, OtaStep.PROBATION)
    time.sleep(0.3)
    late = technician.get(f"/api/v1/rollouts/{request.update_id}").json()
    assert late["state"] == "done" and len(late["steps"]) == len(steps) + 1

    refused = ct2.command()
    ct2.answer(refused, ok=False, error="not enough disk space")
    ended = rollout_of(technician, UpdateRequest.model_validate(refused.args).update_id, "refused")
    assert ended["reason"] == "not enough disk space"

    page = technician.get("/rollouts")
    assert page.status_code == 200 and "not enough disk space" in page.text and "probation" in page.text

    # A device the dashboard only heard over MQTT has no device token to download with.
    status = Status(site=SITE, device="ct-9", state="online")
    ct1.client.publish(topic(SITE, "ct-9", TopicKind.STATUS), status.to_json(), qos=1).wait_for_publish(10)
    stranger: list[int] = []
    assert wait_for(
        lambda: (
            stranger.extend(d["id"] for d in technician.get("/api/v1/devices").json() if d["device"] == "ct-9")
            or stranger
        )
    )
    response = technician.post(f"/api/v1/packages/{package['sha256']}/rollouts", json={"devices": stranger})
    assert response.status_code == 400 and "not enrolled" in response.json()["detail"]


def test_a_version_that_does_not_go_up_needs_an_admins_force(
    fleet: tuple[Dashboard, Callable[[str], Appliance]], versions: dict[str, Path]
) -> None:
    dashboard, appliance = fleet
    ct1, ct2 = appliance("ct-1"), appliance("ct-2")
    technician, admin = dashboard.api(Role.TECHNICIAN), dashboard.api(Role.ADMIN)
    shas = {version: upload(technician, path).json()["sha256"] for version, path in versions.items()}
    device_ids = {
        r["device"]: r["device_id"]
        for r in technician.post(f"/api/v1/packages/{shas['1.1.0']}/rollouts", json={"groups": ["chest"]}).json()
    }
    # ct-2 says it runs 1.1.0 (its status), whatever became of the rollout.
    ref = PackageRef(
        name="chest-ct-nodule", version="1.1.0", precision="fp32", profile="generic-x86_64-cpu", sha256=shas["1.1.0"]
    )
    ct2.publish(Status(site=SITE, device="ct-2", state="online", packages=[ref]), TopicKind.STATUS)
    refusal = ct2.command()
    ct2.answer(refusal, ok=False, error="busy")
    rollout_of(technician, UpdateRequest.model_validate(refusal.args).update_id, "refused")
    assert wait_for(lambda: technician.get(f"/api/v1/devices/{device_ids['ct-2']}").json()["packages"])
    ct1.command()

    # ct-1 was last sent 1.1.0 (still running); ct-2 refused it but reports 1.1.0 live.
    for device in ("ct-1", "ct-2"):
        for version in ("1.0.0", "1.1.0"):
            response = technician.post(
                f"/api/v1/packages/{shas[version]}/rollouts", json={"devices": [device_ids[device]]}
            )
            assert response.status_code == 409, (device, version, response.text)
            assert f"{device} has 1.1.0" in response.json()["detail"]
    refused = technician.post(f"/api/v1/packages/{shas['0.9.0']}/rollouts", json={"devices": [device_ids["ct-1"]]})
    assert refused.status_code == 409 and "ct-1 has 1.1.0" in refused.json()["detail"]
    forced_by_technician = technician.post(
        f"/api/v1/packages/{shas['0.9.0']}/rollouts", json={"devices": [device_ids["ct-1"]], "force": True}
    )
    assert forced_by_technician.status_code == 403

    forced = admin.post(
        f"/api/v1/packages/{shas['0.9.0']}/rollouts", json={"devices": [device_ids["ct-1"]], "force": True}
    )
    assert forced.status_code == 200, forced.text
    command = ct1.command()
    while UpdateRequest.model_validate(command.args).package.version != "0.9.0":
        time.sleep(0.05)
        command = ct1.command()
    assert UpdateRequest.model_validate(command.args).force
    with dashboard.service.store.session() as session:
        entry = session.scalars(select(AuditEntry).where(AuditEntry.action == "package.rollout-forced")).one()
    assert '"force":true' in entry.detail and "ct-1 has 1.1.0" in entry.detail and entry.role == "admin"


def test_only_packages_that_verify_against_the_trusted_keys_are_kept(
    fleet: tuple[Dashboard, Callable[[str], Appliance]], versions: dict[str, Path], tmp_path: Path
) -> None:
    dashboard, _ = fleet
    technician = dashboard.api(Role.TECHNICIAN)
    good = versions["1.0.0"].read_bytes()
    tampered = tmp_path / "tampered.medge"
    tampered.write_bytes(good[:-200] + bytes(b ^ 0xFF for b in good[-200:-150]) + good[-150:])
    unsigned = with_version(versions["1.0.0"], tmp_path / "stranger.medge", "2.0.0", Ed25519PrivateKey.generate())
    garbage = tmp_path / "garbage.medge"
    garbage.write_bytes(b"not a package at all")
    for path, reason in ((tampered, "does not verify"), (unsigned, "key"), (garbage, "does not verify")):
        response = upload(technician, path)
        assert response.status_code == 400, (path.name, response.text)
        assert reason in response.json()["detail"], response.text
    assert technician.get("/api/v1/packages").json() == []
    assert list(dashboard.config.packages_dir.glob("*")) == [], "nothing refused is kept"
    kept = upload(technician, versions["1.0.0"])
    assert kept.status_code == 200 and kept.json()["signer_key_id"] and kept.json()["version"] == "1.0.0"
    clinician = dashboard.api(Role.CLINICIAN)
    assert upload(clinician, versions["1.1.0"]).status_code == 403


def test_an_admin_sends_an_endorsed_key_rotation(
    fleet: tuple[Dashboard, Callable[[str], Appliance]], reference_packages: ReferencePackages
) -> None:
    dashboard, appliance = fleet
    ct1 = appliance("ct-1")
    new_key = public_key_pem(Ed25519PrivateKey.generate().public_key()).decode()
    rotation = endorse_keys(reference_packages.key, add=[new_key], retire=[])
    body = {"rotation": rotation.model_dump(mode="json"), "groups": ["chest"]}
    assert dashboard.api(Role.TECHNICIAN).post("/api/v1/key-rotations", json=body).status_code == 403
    sent = dashboard.api(Role.ADMIN).post("/api/v1/key-rotations", json=body)
    assert sent.status_code == 200, sent.text
    command = ct1.command("rotate-keys")
    assert command.id == sent.json()[0]["command_id"]
    assert KeyRotation.model_validate(command.args) == rotation
    stranger = endorse_keys(Ed25519PrivateKey.generate(), add=[new_key], retire=[])
    refused = dashboard.api(Role.ADMIN).post(
        "/api/v1/key-rotations", json={"rotation": stranger.model_dump(mode="json"), "groups": ["chest"]}
    )
    assert refused.status_code == 400 and "not endorsed by a trusted key" in refused.json()["detail"]
