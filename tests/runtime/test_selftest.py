"""The self-test against real peers: a running appliance, a real Mosquitto with TLS and passwords (runtime/selftest.py).

The broker is the production configuration (firmware_integration.broker) on a
free loopback port; the appliance is a real :class:`Appliance` serving a
signed reference package. Each failure case breaks one thing the way it
breaks in the field and checks the verdict and that a fix is given.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from firmware_integration.broker import BrokerFolder, add_dashboard, add_device, write_broker_config
from runtime.appliance import Appliance
from runtime.selftest import (
    CHECKS,
    CheckStatus,
    ClockState,
    SelfTest,
    judge_clock,
    read_clock,
    run_selftest,
)
from sdk.appliance_config import ApplianceConfig
from sdk.signing import generate_keypair
from sdk.testing.mosquitto import MosquittoBroker, free_port
from sdk.topics import TopicKind, topic

SITE, DEVICE = "st-marys", "ct-1"
OTHER = "ct-9"  # a second registered device no running appliance uses: tests that connect as a device use it
ALL_BUT = {name: [other for other in CHECKS if other != name] for name in CHECKS}


@dataclass(frozen=True)
class Site:
    """A production-configured broker with TLS and passwords, two devices' bundles and a dashboard identity."""

    broker: MosquittoBroker
    folder: Path
    bundle: Path
    other_bundle: Path
    dashboard_password: str


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("broker")
    folder = base / "broker"
    write_broker_config(
        folder, tls="generate", port=free_port(), bind_address="127.0.0.1", hostnames=["127.0.0.1"], run_as=None
    )
    add_device(folder, SITE, DEVICE).write(base / "bundle")
    add_device(folder, SITE, OTHER).write(base / "bundle-other")
    dashboard = add_dashboard(folder)
    assert dashboard.password is not None
    config = BrokerFolder(folder).medge_config.read_text()
    port = int(next(line.split()[1] for line in config.splitlines() if line.startswith("listener ")))
    broker = MosquittoBroker(base / "run", port=port, extra_config=config).start()
    yield Site(broker, folder, base / "bundle", base / "bundle-other", dashboard.password)
    broker.stop()


@pytest.fixture(scope="module")
def installed(reference_packages, tmp_path_factory: pytest.TempPathFactory) -> Path:
    packages = tmp_path_factory.mktemp("packages")
    reference_packages.build(packages / "chest-ct-nodule.medge")
    return packages


def make_config(root: Path, site: Site, packages: Path, keys: Path, **sections: dict[str, object]) -> ApplianceConfig:
    """A production (non-demo) config: listed scanners, the device's credential bundle, TLS."""
    values: dict[str, dict[str, object]] = {
        "appliance": {"site": SITE, "device": DEVICE, "profile": "generic-x86_64-cpu", "data_dir": root / "data"},
        "dicom": {
            "host": "127.0.0.1",
            "port": free_port(),
            "allowed_calling_aes": ["SCANNER1"],
            "spool_quota_mb": 64,
        },
        "mqtt": {
            "host": "127.0.0.1",
            "port": site.broker.port,
            "username": f"{SITE}/{DEVICE}",
            "password_file": site.bundle / "password",
            "ca_file": site.bundle / "ca.crt",
        },
        "packages": {"dir": packages, "trusted_keys_dir": keys},
    }
    for section, changes in sections.items():
        values[section] = {**values[section], **changes}
    return ApplianceConfig(**values)


@pytest.fixture(scope="module")
def running(reference_packages, installed: Path, site: Site, tmp_path_factory: pytest.TempPathFactory):
    """A ready appliance: package live, SCP listening on the config's port."""
    root = tmp_path_factory.mktemp("appliance")
    config = make_config(root, site, installed, reference_packages.pair.public_path.parent)
    with Appliance(config) as appliance:
        assert appliance.packages.live and appliance.scp is not None and appliance.scp.running
        yield config


class Dashboard:
    """A dashboard identity subscribed to every device's events, to see what the self-test published."""

    def __init__(self, site: Site) -> None:
        self.events: list[bytes] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.username_pw_set("dashboard", site.dashboard_password)
        self.client.tls_set(ca_certs=str(site.bundle / "ca.crt"))
        self.client.on_message = lambda _c, _u, message: self.events.append(bytes(message.payload))
        self.client.connect("127.0.0.1", site.broker.port)
        self.client.loop_start()
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.subscribe(topic(SITE, DEVICE, TopicKind.EVENT), qos=1)
        assert subscribed.wait(5)

    def selftest_events(self) -> list[dict[str, object]]:
        return [event for event in map(json.loads, list(self.events)) if event.get("kind") == "selftest"]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# --- a ready appliance passes -------------------------------------------------------------------------------


def test_a_ready_appliance_passes_every_check(running: ApplianceConfig, site: Site) -> None:
    dashboard = Dashboard(site)
    seen = []
    try:
        report = run_selftest(running, timeout_s=5.0, min_free_mb=64, on_check=seen.append)
        deadline = time.monotonic() + 5
        while not dashboard.selftest_events() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        dashboard.close()
    assert seen == report.checks
    by_key = {check.key: check for check in report.checks}
    assert set(by_key) == {"profile", "engine", "keys", "package:chest-ct-nodule.medge"} | {
        "dicom",
        "broker",
        "clock",
        "disk",
        "spool",
    }
    # The clock is this machine's: the verdict must be what the kernel says, whatever that is.
    assert by_key["clock"].status is judge_clock(read_clock()).status
    not_passed = [c for c in report.checks if c.status is not CheckStatus.PASS and c.key not in ("clock", "profile")]
    assert not not_passed, not_passed
    assert report.get("profile").status in (CheckStatus.PASS, CheckStatus.WARN)  # this host may look like another
    assert "golden samples" in by_key["package:chest-ct-nodule.medge"].detail
    assert "C-ECHO SCANNER1" in by_key["dicom"].detail
    assert "(TLS)" in by_key["broker"].detail and "PUBACK" in by_key["broker"].detail
    assert report.ok == (by_key["clock"].status is not CheckStatus.FAIL)
    assert all(check.seconds >= 0 for check in report.checks)
    # The test event really went out, as a medge event from this device (the running service may send others).
    [event] = dashboard.selftest_events()
    assert (event["schema"], event["site"], event["device"]) == ("medge.event/1", SITE, DEVICE)


def test_the_service_session_keeps_its_queued_messages(running: ApplianceConfig, site: Site) -> None:
    """The self-test connects as the device: what the broker queued for the service must still reach it after.

    The "service" here is a paho client of device ct-9 (no appliance of the test runs as ct-9), so the
    test alone decides when it is connected.
    """
    password = (site.other_bundle / "password").read_text().strip()
    cmd_topic = topic(SITE, OTHER, TopicKind.CMD)
    config = running.model_copy(
        update={
            "appliance": running.appliance.model_copy(update={"device": OTHER}),
            "mqtt": running.mqtt.model_copy(
                update={"username": f"{SITE}/{OTHER}", "password_file": site.other_bundle / "password"}
            ),
        }
    )

    def device_client() -> tuple[mqtt.Client, list[bytes], threading.Event]:
        received: list[bytes] = []
        connected = threading.Event()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"medge-{SITE}-{OTHER}", protocol=mqtt.MQTTv5)
        client.username_pw_set(f"{SITE}/{OTHER}", password)
        client.tls_set(ca_certs=str(site.bundle / "ca.crt"))
        client.on_message = lambda _c, _u, message: received.append(bytes(message.payload))
        client.on_connect = lambda *_: connected.set()
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = running.mqtt.session_expiry_s
        client.connect("127.0.0.1", site.broker.port, clean_start=False, properties=properties)
        client.loop_start()
        assert connected.wait(5)
        return client, received, connected

    # The service subscribes to its commands in its persistent session, then goes away.
    service, _, _ = device_client()
    done = threading.Event()
    service.on_subscribe = lambda *_: done.set()
    service.subscribe(cmd_topic + "/#", qos=1)
    assert done.wait(5)
    service.disconnect()
    service.loop_stop()
    # A command arrives while it is away; the broker queues it in the session.
    dashboard = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    dashboard.username_pw_set("dashboard", site.dashboard_password)
    dashboard.tls_set(ca_certs=str(site.bundle / "ca.crt"))
    dashboard.connect("127.0.0.1", site.broker.port)
    dashboard.loop_start()
    acks: list[int] = []
    dashboard.on_publish = lambda _c, _u, _mid, reason, _p: acks.append(reason.value)
    dashboard.publish(cmd_topic, b'{"probe": 1}', qos=1).wait_for_publish(5)
    assert acks == [0], "the broker did not queue the command"
    dashboard.disconnect()
    dashboard.loop_stop()

    report = SelfTest(config, timeout_s=5.0).run(skip=ALL_BUT["broker"])
    assert report.get("broker").status is CheckStatus.PASS, report.get("broker")

    service, received, _ = device_client()
    try:
        deadline = time.monotonic() + 5
        while b'{"probe": 1}' not in received and time.monotonic() < deadline:
            time.sleep(0.05)
        assert b'{"probe": 1}' in received, "the self-test consumed the service's queued command"
    finally:
        service.disconnect()
        service.loop_stop()


# --- failures, each with its fix ---------------------------------------------------------------------------


def _only(config: ApplianceConfig, name: str, **options: object):
    report = SelfTest(config, **options).run(skip=ALL_BUT[name])  # type: ignore[arg-type]
    assert not report.ok and report.exit_code == 1
    failed = report.failed
    assert failed and all(check.fix for check in failed)
    return failed


def test_broker_down(running: ApplianceConfig) -> None:
    config = running.model_copy(update={"mqtt": running.mqtt.model_copy(update={"port": free_port()})})
    [check] = _only(config, "broker", timeout_s=2.0)
    assert "nothing listens" in check.detail and "Start the broker" in str(check.fix)


def test_a_dead_broker_does_not_hang_the_selftest(running: ApplianceConfig) -> None:
    """A port that accepts TCP and then says nothing: the check ends at its time limit."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        config = running.model_copy(update={"mqtt": running.mqtt.model_copy(update={"port": port})})
        started = time.monotonic()
        [check] = _only(config, "broker", timeout_s=1.0)
        assert time.monotonic() - started < 4.0
    assert "did not answer within 1 s" in check.detail


def test_wrong_password(running: ApplianceConfig, tmp_path: Path) -> None:
    wrong = tmp_path / "password"
    wrong.write_text("not-the-password\n")
    config = running.model_copy(update={"mqtt": running.mqtt.model_copy(update={"password_file": wrong})})
    [check] = _only(config, "broker")
    assert "refused the username or password" in check.detail
    assert "CONNACK 0x86" in check.detail or "CONNACK 0x87" in check.detail  # Mosquitto 2.0 says 0x87
    assert "credential bundle" in str(check.fix)


def test_another_devices_credentials_may_not_publish_here(running: ApplianceConfig, site: Site) -> None:
    """Credentials of ct-9 in a config saying ct-1: connected, but PUBACK 0x87 on ct-1's event topic."""
    config = running.model_copy(
        update={
            "mqtt": running.mqtt.model_copy(
                update={"username": f"{SITE}/{OTHER}", "password_file": site.other_bundle / "password"}
            )
        }
    )
    [check] = _only(config, "broker")
    assert "0x87" in check.detail and "not authorised" in check.detail
    assert "site/device" in str(check.fix)


def test_a_broker_certificate_from_another_ca(running: ApplianceConfig, tmp_path: Path) -> None:
    other = tmp_path / "other"
    write_broker_config(other, tls="generate", port=free_port(), bind_address="127.0.0.1", hostnames=["127.0.0.1"])
    config = running.model_copy(
        update={"mqtt": running.mqtt.model_copy(update={"ca_file": BrokerFolder(other).ca_cert})}
    )
    [check] = _only(config, "broker")
    assert "does not verify" in check.detail and "mqtt.ca_file" in str(check.fix)


def test_scp_not_running(running: ApplianceConfig) -> None:
    config = running.model_copy(update={"dicom": running.dicom.model_copy(update={"port": free_port()})})
    [check] = _only(config, "dicom", timeout_s=2.0)
    assert "the medge service is not running" in check.detail
    assert "systemctl start medge-runtime" in str(check.fix)


def test_a_calling_ae_the_scp_does_not_allow(running: ApplianceConfig) -> None:
    [check] = _only(running, "dicom", calling_ae="INTRUDER")
    assert "'INTRUDER'" in check.detail and "allowed_calling_aes" in check.detail


def test_tampered_and_untrusted_packages(running: ApplianceConfig, installed: Path, tmp_path: Path) -> None:
    packages = tmp_path / "packages"
    packages.mkdir()
    original = installed / "chest-ct-nodule.medge"
    tampered = packages / "tampered.medge"
    with zipfile.ZipFile(original) as source, zipfile.ZipFile(tampered, "w") as target:
        for info in source.infolist():  # the same members, re-written: one byte of the model changed
            data = source.read(info.filename)
            if info.filename == "model.onnx":
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            target.writestr(info, data)
    config = running.model_copy(update={"packages": running.packages.model_copy(update={"dir": packages})})
    failed = _only(config, "packages")
    [check] = [c for c in failed if c.key == "package:tampered.medge"]
    assert "refused" in check.detail and "altered" in str(check.fix)

    # A sound package signed with a key this appliance does not trust.
    tampered.unlink()
    shutil.copy(original, packages / "untrusted.medge")
    pair = generate_keypair(tmp_path / "other-keys")
    pair.private_path.unlink()  # only the public key sits in a trust store
    config = running.model_copy(
        update={
            "packages": running.packages.model_copy(
                update={"dir": packages, "trusted_keys_dir": pair.public_path.parent}
            )
        }
    )
    failed = _only(config, "packages")
    [check] = [c for c in failed if c.key == "package:untrusted.medge"]
    assert "(key)" in check.detail and str(pair.public_path.parent) in str(check.fix)


def test_no_package_and_no_keys(running: ApplianceConfig, tmp_path: Path) -> None:
    config = running.model_copy(
        update={"packages": running.packages.model_copy(update={"dir": tmp_path, "trusted_keys_dir": tmp_path})}
    )
    failed = _only(config, "packages")
    assert {check.key for check in failed} == {"keys", "packages"}


def test_a_package_check_that_hangs_is_cut_off(running: ApplianceConfig, tmp_path: Path) -> None:
    """A package file whose read never returns (a FIFO here; a dead network mount in the field)."""
    packages = tmp_path / "packages"
    packages.mkdir()
    stuck = packages / "stuck.medge"
    os.mkfifo(stuck)
    config = running.model_copy(update={"packages": running.packages.model_copy(update={"dir": packages})})
    try:
        started = time.monotonic()
        [check] = _only(config, "packages", package_timeout_s=1.0)
        assert time.monotonic() - started < 3.0
        assert "did not finish within 1 s" in check.detail
    finally:
        # Let the abandoned check thread read EOF and end.
        fd = os.open(stuck, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)


def test_spool_missing_or_not_the_service_users(running: ApplianceConfig, tmp_path: Path) -> None:
    config = running.model_copy(update={"appliance": running.appliance.model_copy(update={"data_dir": tmp_path})})
    [check] = _only(config, "spool")
    assert "does not exist" in check.detail
    spool = tmp_path / "spool"
    spool.mkdir()
    if os.geteuid() == 0:
        # Root can write anywhere: what matters is whether the service's user can.
        [check] = _only(config, "spool", service_user="daemon")
        assert "belongs to root" in check.detail and "chown -R daemon:daemon" in str(check.fix)
    else:
        spool.chmod(0o500)
        try:
            [check] = _only(config, "spool")
        finally:
            spool.chmod(0o750)
        assert "Permission denied" in check.detail and "chown" in str(check.fix)
    assert not list(spool.iterdir())  # the probe file never stays behind


def test_disk_space_below_the_threshold(running: ApplianceConfig) -> None:
    [check] = _only(running, "disk", min_free_mb=1 << 40)
    assert "MiB needed" in check.detail


def test_the_clock_verdicts() -> None:
    assert judge_clock(ClockState("adjtimex", True, 0.05, "ok")).status is CheckStatus.PASS
    assert judge_clock(ClockState("adjtimex", True, 5.0, "drifting")).status is CheckStatus.WARN
    unsynced = judge_clock(ClockState("adjtimex", False, 16.0, "STA_UNSYNC"))
    assert unsynced.status is CheckStatus.FAIL and "NTP" in str(unsynced.fix)
    assert judge_clock(ClockState("timedatectl", False, None, "no")).status is CheckStatus.FAIL
    unknown = judge_clock(ClockState("unknown", None, None, "no adjtimex"))
    assert unknown.status is CheckStatus.WARN and unknown.fix
    # This machine's clock reads as something coherent.
    state = read_clock()
    assert state.source in ("adjtimex", "timedatectl", "unknown")
    if state.source == "adjtimex":
        assert state.synchronized is not None and state.max_error_s is not None and state.max_error_s >= 0


def test_unknown_checks_are_refused(running: ApplianceConfig) -> None:
    with pytest.raises(ValueError, match="no such check: brokr"):
        SelfTest(running).run(skip=["brokr"])


def test_medge_selftest_prints_the_checklist_and_exits_non_zero_on_failure(
    running: ApplianceConfig, tmp_path: Path
) -> None:
    config = tmp_path / "appliance.toml"
    mqtt_section = running.mqtt
    config.write_text(
        f"""
[appliance]
site = "{SITE}"
device = "{DEVICE}"
profile = "generic-x86_64-cpu"
data_dir = "{running.appliance.data_dir}"

[dicom]
host = "127.0.0.1"
port = {running.dicom.port}
allowed_calling_aes = ["SCANNER1"]
spool_quota_mb = 64

[mqtt]
host = "127.0.0.1"
port = {free_port()}
username = "{mqtt_section.username}"
password_file = "{mqtt_section.password_file}"
ca_file = "{mqtt_section.ca_file}"
"""
    )
    medge = str(Path(sys.executable).with_name("medge"))
    skip = ["--skip", "packages", "--skip", "profile", "--skip", "engine", "--skip", "clock", "--min-free-mb", "64"]
    human = subprocess.run(
        [medge, "selftest", "--config", str(config), "--timeout", "2", *skip],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )
    assert human.returncode == 1, human.stderr
    assert "PASS DICOM C-ECHO" in human.stdout and "FAIL MQTT broker" in human.stdout
    assert "fix: Start the broker" in human.stdout and "not ready" in human.stdout
    as_json = subprocess.run(
        [medge, "selftest", "--config", str(config), "--timeout", "2", "--json", *skip],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert as_json.returncode == 1, as_json.stderr
    report = json.loads(as_json.stdout)
    assert {c["key"]: c["status"] for c in report["checks"]} == {
        "dicom": "pass",
        "broker": "fail",
        "disk": "pass",
        "spool": "pass",
    }
    bad = subprocess.run(
        [medge, "selftest", "--config", str(config), "--skip", "brokr"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "no such check" in bad.stderr


def test_a_profile_for_another_board(running: ApplianceConfig) -> None:
    unknown = running.model_copy(
        update={"appliance": running.appliance.model_copy(update={"profile": "no-such-board"})}
    )
    [check] = _only(unknown, "profile")
    assert "no-such-board" in check.detail and "medge profiles list" in str(check.fix)
    jetson = running.model_copy(
        update={"appliance": running.appliance.model_copy(update={"profile": "jetson-orin-nano-8gb"})}
    )
    if os.uname().machine == "x86_64":
        [check] = _only(jetson, "profile")
        assert "is for aarch64" in check.detail
    # Without CUDA and TensorRT, the engine check says inference would fall back, and what to install.
    import onnxruntime

    if "TensorrtExecutionProvider" in onnxruntime.get_available_providers():
        return
    report = SelfTest(jetson).run(skip=ALL_BUT["engine"])
    engine = report.get("engine")
    assert engine.status is CheckStatus.WARN and "lacks TensorrtExecutionProvider" in engine.detail
    assert "onnxruntime-gpu" in str(engine.fix) and report.ok
