"""Issue 5's fault tests: findings reach the dashboard exactly once through broker, dashboard, network and appliance
failures, and the shipped broker ACLs keep each appliance to its own topics.

Real parts only: dcmtk's storescu as the scanner, the appliance (in-process, or
``medge serve`` as a process that is SIGKILLed), a Mosquitto on a free loopback
port (stopped, SIGKILLed, restarted), a TCP proxy that cuts the network without
closing anything (:mod:`tests.integration.tcp_proxy`), and the dashboard's
ingest with its SQLite store.

"Exactly once" is checked on both ends: the store holds one row per instance
whose message ids are the appliance's finding ids (no more, no fewer), the
dashboard sees no sequence gap, and the appliance's outbox holds nothing
unacknowledged.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pydicom
import pytest
from sqlalchemy import select

from dashboard.fleet import fleet_health
from dashboard.ingest import IngestService
from dashboard.settings import DashboardConfig, FleetSection
from dashboard.store import DeadLetterReason, Device, DeviceState, Finding, create_store
from firmware_integration.broker import (
    AuthMode,
    BrokerFolder,
    add_dashboard,
    add_device,
    read_broker_settings,
    write_broker_config,
)
from runtime.appliance import Appliance
from sdk.appliance_config import ApplianceConfig
from sdk.messages import Finding as FindingMessage
from sdk.messages import PackageRef
from sdk.testing import PhantomSpec, generate_studies
from sdk.testing.dicom_peers import STORESCU, storescu
from sdk.testing.mosquitto import MOSQUITTO, MosquittoBroker, free_port
from sdk.topics import TopicKind, topic
from sdk.trust import TrustStore
from tests.integration.tcp_proxy import TcpProxy

log = logging.getLogger(__name__)

SITE, DEVICE = "st-marys", "ct-1"
STUDIES, SLICES = 4, 8  # one finding per instance: 32 findings
OUTAGE_S = 30.0
KEEPALIVE_S = 5
# Cut → "offline" in the store may take 1.5 x keep-alive (when the broker gives up on the silent client and publishes
# its will) plus: the broker counts in whole seconds, and the ingest's batch window, its commit and this test's 0.05 s
# polling add a few tens of milliseconds.
OFFLINE_ALLOWANCE_S = 1.0


class Reason(IntEnum):
    """The MQTT 5 reason codes these tests expect from the broker."""

    SUCCESS = 0x00
    NO_MATCHING_SUBSCRIBERS = 0x10
    NOT_AUTHORIZED = 0x87


# --- helpers ----------------------------------------------------------------------------------------------------


def _wait(predicate: Callable[[], object], timeout: float, what: str, poll: float = 0.05) -> float:
    """Wait until ``predicate()`` holds; return when it did (``time.monotonic()``)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


def _send(port: int, files: list[Path]) -> None:
    result = storescu(port, files)
    assert result.returncode == 0, result.stderr


class StoreView:
    """Reads the dashboard's store as the web UI would, beside a running ingest."""

    def __init__(self, config: DashboardConfig) -> None:
        self.store = create_store(config.store_url)

    def finding_ids(self) -> list[str]:
        with self.store.session() as session:
            return list(session.scalars(select(Finding.message_id)))

    def state(self, site: str = SITE, device: str = DEVICE) -> DeviceState | None:
        with self.store.session() as session:
            value = session.scalar(select(Device.state).where(Device.site == site, Device.device == device))
        return None if value is None else DeviceState(value)

    def gaps(self, site: str = SITE, device: str = DEVICE) -> list[tuple[int, int]]:
        return self.store.sequence_gaps(site, device)

    def close(self) -> None:
        self.store.close()


@dataclass(frozen=True)
class Scene:
    """A broker, an appliance config and a dashboard config pointing at it, and the studies to send."""

    broker: MosquittoBroker
    appliance: ApplianceConfig
    dashboard: DashboardConfig
    trusted: TrustStore
    studies: list[list[Path]]
    root: Path

    @property
    def files(self) -> list[Path]:
        return [path for study in self.studies for path in study]

    def with_mqtt(self, **mqtt_settings: object) -> ApplianceConfig:
        """The appliance config with some ``[mqtt]`` settings changed (validated again)."""
        data = self.appliance.model_dump()
        data["mqtt"].update(mqtt_settings)
        return ApplianceConfig(**data)


@pytest.fixture(scope="module")
def corpus(reference_packages, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[list[Path]]]:
    """The package folder and the phantom studies, made once for the module (read only)."""
    root = tmp_path_factory.mktemp("mqtt-faults")
    reference_packages.build(root / "packages" / "chest-ct-nodule.medge")
    truths = generate_studies(root / "studies", STUDIES, PhantomSpec(slices=SLICES), seed=55)
    studies = [[root / "studies" / str(t.folder) / str(s.file) for s in t.series[0].slices] for t in truths]
    return root / "packages", studies


@pytest.fixture
def scene(reference_packages, corpus, tmp_path: Path) -> Iterator[Scene]:
    packages, studies = corpus
    broker = MosquittoBroker(tmp_path / "broker").start()
    appliance = ApplianceConfig(
        appliance={
            "site": SITE,
            "device": DEVICE,
            "demo": True,
            "data_dir": tmp_path / "appliance",
            "profile": "generic-x86_64-cpu",
        },
        dicom={"ae_title": "MEDGE", "host": "127.0.0.1"},
        mqtt={"host": "127.0.0.1", "port": broker.port, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
        packages={"dir": packages},
    )
    dashboard = DashboardConfig(
        data_dir=tmp_path / "dashboard",
        demo=True,
        mqtt={"host": "127.0.0.1", "port": broker.port, "client_id": "dashboard-1"},
    )
    try:
        yield Scene(broker, appliance, dashboard, reference_packages.trusted, studies, tmp_path)
    finally:
        broker.stop()


def _assert_exactly_once(view: StoreView, appliance_ids: list[str], instances: int) -> None:
    """One finding per instance on the appliance, each stored once, nothing missing in the sequence."""
    stored = view.finding_ids()
    assert len(appliance_ids) == len(set(appliance_ids)) == instances, "the appliance made one finding per instance"
    assert len(stored) == len(set(stored)) == instances, f"{len(stored)} rows stored for {instances} instances"
    assert set(stored) == set(appliance_ids)
    assert view.gaps() == []


# --- 1. the broker stopped for 30 s ----------------------------------------------------------------------------


@pytest.mark.slow
def test_broker_stopped_30_s_mid_stream_every_finding_arrives_once(scene: Scene) -> None:
    # The reporter's resend timer stays at its default (120 s), beyond the wait below. Mosquitto 2.0.11 does not
    # restore shared subscriptions from its persistence file, so what the reporter re-sends on reconnecting before the
    # ingest has subscribed again goes nowhere ("no matching subscribers"); the ingest's "resend" command, sent when it
    # has subscribed again, must bring it, not the timer.
    view = StoreView(scene.dashboard)
    first, during, after = scene.studies[0], scene.studies[1:3], scene.studies[3]
    try:
        with IngestService(scene.dashboard) as ingest:
            assert ingest.wait_ready(20)
            with Appliance(scene.appliance, trusted=scene.trusted, dicom_port=0) as appliance:
                assert appliance.scp is not None and appliance.reporter is not None
                assert appliance.reporter.wait_connected(20)
                _send(appliance.scp.port, first)

                # The broker goes down gracefully while the first study's findings are being made and sent.
                scene.broker.stop()
                stopped = time.monotonic()
                made_during = 0
                for study in during:  # the scanners go on sending while the broker is away
                    _send(appliance.scp.port, study)
                    made_during += len(study)
                    time.sleep(OUTAGE_S / 3)
                _wait(
                    lambda: len(appliance.queue.findings()) == len(first) + made_during,
                    60,
                    "the findings of the outage in the outbox",
                )
                assert appliance.queue.depth() >= made_during, "nothing made during the outage can be acknowledged"
                time.sleep(max(0.0, stopped + OUTAGE_S - time.monotonic()))
                assert not appliance.reporter.connected
                scene.broker.start()
                started = time.monotonic()

                _send(appliance.scp.port, after)  # while the backlog drains
                drained = _wait(
                    lambda: len(appliance.queue.findings()) == len(scene.files) and appliance.queue.depth() == 0,
                    90,  # the ingest's own reconnect back-off reaches 30 s
                    "every finding acknowledged after the broker came back",
                )
                log.info("all acknowledged %.2f s after the broker started again", drained - started)
                ids = [f.finding_id for f in appliance.queue.findings()]
        _assert_exactly_once(view, ids, len(scene.files))
    finally:
        view.close()


# --- 2. the dashboard away, the broker killed while holding its queue ------------------------------------------


def test_dashboard_down_broker_killed_the_reporters_resend_delivers_every_finding_once(scene: Scene) -> None:
    config = scene.with_mqtt(resend_after_s=2.0)
    files = scene.studies[0] + scene.studies[1]
    view = StoreView(scene.dashboard)
    try:
        # The dashboard's persistent session exists at the broker, then the dashboard goes away:
        # the broker queues the findings for it (in memory only).
        with IngestService(scene.dashboard) as ingest:
            assert ingest.wait_ready(20)
        with Appliance(config, trusted=scene.trusted, dicom_port=0) as appliance:
            reporter = appliance.reporter
            assert appliance.scp is not None and reporter is not None
            assert reporter.wait_connected(20)
            _send(appliance.scp.port, files)

            def all_pubacked() -> bool:
                depth = appliance.queue.outbox_depth()
                return depth.findings_sent == len(files) and depth.findings_pending == 0

            _wait(all_pubacked, 60, "every finding PUBACKed by the broker (state sent)")
            assert view.finding_ids() == []
            resent_before = reporter.stats().resent

            scene.broker.kill()  # the queue it held for the dashboard is gone
            scene.broker.start()
            _wait(lambda: reporter.stats().connects >= 2, 20, "the reporter's reconnect")
            assert appliance.queue.depth() == len(files), "a PUBACK must not take a finding out of the outbox"

            with IngestService(scene.dashboard) as ingest:
                assert ingest.wait_ready(20)
                _wait(lambda: appliance.queue.depth() == 0, 60, "every finding acknowledged by the dashboard")
            assert reporter.stats().resent - resent_before >= len(files)
            ids = [f.finding_id for f in appliance.queue.findings()]
        _assert_exactly_once(view, ids, len(files))
    finally:
        view.close()


# --- 3. the appliance's network cut: offline by the will, online on reconnect ----------------------------------


class OfflineTooLate(AssertionError):
    """The dashboard saw the appliance go offline later than 1.5 x its keep-alive after the cut."""


def _mosquitto_version() -> tuple[int, ...]:
    """The installed broker's version; ``(0,)`` if unknown (the test then fails on starting it)."""
    try:
        result = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return (0,)
    match = re.search(r"mosquitto version (\d+)\.(\d+)\.(\d+)", result.stdout + result.stderr)
    return tuple(int(part) for part in match.groups()) if match else (0,)


@pytest.mark.xfail(
    _mosquitto_version() < (2, 0, 21),
    reason=(
        "Mosquitto before 2.0.21 checks keep-alives only every ~6 s (src/keepalive.c: "
        "`if(last_keepalive_check + 5 < db.now_s)`, in whole seconds, against keepalive*3/2 rounded down), so the "
        "will of a silent client fires 8-14 s after its last packet for keepalive_s=5: the 1.5 x keep-alive "
        "budget of issue 5 cannot be met with this broker (eclipse-mosquitto issues #3138/#3286: 2.0.21 has a new "
        "keep-alive check)"
    ),
    raises=OfflineTooLate,
    strict=True,
)
def test_status_offline_within_1_5_keepalive_after_a_network_cut_and_online_on_reconnect(scene: Scene) -> None:
    """Cut = no byte passes either way and nothing is closed: only keep-alives can tell (see tcp_proxy)."""
    view = StoreView(scene.dashboard)
    try:
        with TcpProxy(scene.broker.port) as proxy, IngestService(scene.dashboard) as ingest:
            assert ingest.wait_ready(20)
            config = scene.with_mqtt(port=proxy.port, keepalive_s=KEEPALIVE_S, connect_timeout_s=2.0)
            with Appliance(config, trusted=scene.trusted, dicom_port=0) as appliance:
                assert appliance.reporter is not None and appliance.reporter.wait_connected(20)
                _wait(lambda: view.state() == DeviceState.ONLINE, 20, "the appliance online on the dashboard")

                proxy.cut()
                cut = time.monotonic()
                # The broker's will is the only way the dashboard can learn of it; 30 s is far beyond any keep-alive.
                offline_after = _wait(lambda: view.state() == DeviceState.OFFLINE, 30, "offline after the cut") - cut

                proxy.restore()
                restored = time.monotonic()
                _wait(lambda: view.state() == DeviceState.ONLINE, 30, "online again after the network came back")
                online_after = time.monotonic() - restored
                assert appliance.reporter.connected
        log.info("offline %.2f s after the cut, online %.2f s after the restore", offline_after, online_after)
        budget = 1.5 * KEEPALIVE_S + OFFLINE_ALLOWANCE_S
        if offline_after > budget:  # checked last, so that the reconnect above is checked in any case
            raise OfflineTooLate(f"offline {offline_after:.2f} s after the cut; the budget is {budget:.2f} s")
    finally:
        view.close()


def test_the_fleet_view_shows_offline_within_1_5_keepalive_after_a_network_cut(scene: Scene) -> None:
    """What staff see: the dashboard's own silence check, independent of when the broker fires the will.

    The appliance heartbeats more often than its keep-alive, so the dashboard
    (``[fleet]`` keep-alive and heartbeat period as the appliance's) shows it
    offline once it has been silent for 1.5x the keep-alive.
    """
    fleet = FleetSection(keepalive_s=KEEPALIVE_S, heartbeat_interval_s=2.0)
    view = StoreView(scene.dashboard)

    def shown() -> str | None:
        with view.store.session() as session:
            devices = fleet_health(session, silent_after_s=fleet.silent_after_s)
        return next((d.liveness.state for d in devices if (d.site, d.device) == (SITE, DEVICE)), None)

    try:
        with TcpProxy(scene.broker.port) as proxy, IngestService(scene.dashboard) as ingest:
            assert ingest.wait_ready(20)
            config = scene.with_mqtt(
                port=proxy.port, keepalive_s=KEEPALIVE_S, heartbeat_interval_s=2.0, connect_timeout_s=2.0
            )
            with Appliance(config, trusted=scene.trusted, dicom_port=0) as appliance:
                assert appliance.reporter is not None and appliance.reporter.wait_connected(20)
                _wait(lambda: shown() == "online", 20, "the appliance online on the fleet view")
                time.sleep(2.5)  # a heartbeat has arrived: the last message is recent
                proxy.cut()
                cut = time.monotonic()
                offline_after = _wait(lambda: shown() == "offline", 30, "offline on the fleet view") - cut
                proxy.restore()
                _wait(lambda: shown() == "online", 30, "online again on the fleet view")
        log.info("fleet view: offline %.2f s after the cut", offline_after)
        assert offline_after <= 1.5 * KEEPALIVE_S + OFFLINE_ALLOWANCE_S
    finally:
        view.close()


# --- 4. medge serve SIGKILLed mid-stream ---------------------------------------------------------------------


def _serve(config: Path, health_port: int) -> subprocess.Popen[bytes]:
    """Start ``medge serve`` and wait until it is ready (packages live, SCP listening)."""
    output = (config.parent / "serve.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "sdk.cli.main", "serve", "--config", str(config), "--health-port", str(health_port)],
        stdout=output,
        stderr=output,
    )
    output.close()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/readyz", timeout=1) as response:
                if response.status == 200:
                    return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    process.wait()
    tail = (config.parent / "serve.log").read_text(errors="replace")[-3000:]
    raise AssertionError(f"medge serve did not become ready:\n{tail}")


def _query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows from the appliance's queue database, read beside the running (or killed) service."""
    with sqlite3.connect(db, timeout=10) as conn:
        return conn.execute(sql).fetchall()


def _count(db: Path, sql: str) -> int:
    return int(_query(db, sql)[0][0])


def test_appliance_sigkilled_mid_stream_and_restarted_every_finding_arrives_once(
    scene: Scene, reference_packages
) -> None:
    trusted = scene.root / "trusted"
    trusted.mkdir()
    (trusted / "k.pub").write_bytes(reference_packages.pair.public_path.read_bytes())
    data_dir = scene.root / "serve"
    dicom_port, health_port = free_port(), free_port()
    config = scene.root / "appliance.toml"
    config.write_text(
        f"""
[appliance]
site = "{SITE}"
device = "{DEVICE}"
profile = "generic-x86_64-cpu"
demo = true
data_dir = "{data_dir}"
[dicom]
ae_title = "MEDGE"
host = "127.0.0.1"
port = {dicom_port}
[mqtt]
host = "127.0.0.1"
port = {scene.broker.port}
reconnect_min_s = 0.2
reconnect_max_s = 1.0
[packages]
dir = "{scene.appliance.packages.dir}"
trusted_keys_dir = "{trusted}"
"""
    )
    files = scene.files
    db = data_dir / "queue.sqlite"
    view = StoreView(scene.dashboard)
    try:
        with IngestService(scene.dashboard) as ingest:
            assert ingest.wait_ready(20)
            service = _serve(config, health_port)
            try:
                scanner = subprocess.Popen(
                    [STORESCU, "-aec", "MEDGE", "-aet", "SCANNER1", "127.0.0.1", str(dicom_port), *map(str, files)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env={**os.environ, "TCP_NODELAY": "1"},
                )
                # Killed while findings are being made and reported: some are acknowledged, some on their way,
                # some instances not analysed yet.
                _wait(
                    lambda: _count(db, "SELECT count(*) FROM outbox") >= len(files) // 4,
                    60,
                    "a quarter of the findings",
                    0.01,
                )
                os.kill(service.pid, signal.SIGKILL)
                service.wait()
                made_before_kill = _count(db, "SELECT count(*) FROM outbox")
                assert made_before_kill < len(files), "the kill came after every finding was made: not mid-stream"
                scanner.wait(timeout=120)  # it fails on the instances sent after the kill
                log.info(
                    "killed with %d of %d findings made, %d stored; the scanner exited with %d",
                    made_before_kill,
                    len(files),
                    len(view.finding_ids()),
                    scanner.returncode,
                )

                service = _serve(config, health_port)
                _send(dicom_port, files)  # the scanner sends everything again; duplicates make no second finding

                def settled() -> bool:
                    unfinished = _count(db, "SELECT count(*) FROM instances WHERE state != 'reported'")
                    findings, unacked = _query(db, "SELECT count(*), coalesce(sum(state != 'acked'), 0) FROM outbox")[0]
                    return unfinished == 0 and findings >= len(files) and unacked == 0

                _wait(settled, 120, "every instance reported and every finding acknowledged")
            finally:
                service.send_signal(signal.SIGTERM)
                service.wait(timeout=60)
        instances = _count(db, "SELECT count(*) FROM instances")
        assert instances == len(files)
        rows = _query(db, "SELECT finding_id, sop_instance_uid, state FROM outbox")
        assert {state for _, _, state in rows} == {"acked"}
        assert sorted(sop for _, sop, _ in rows) == sorted(_sop_uids(files)), "one finding per instance"
        _assert_exactly_once(view, [finding_id for finding_id, _, _ in rows], len(files))
    finally:
        view.close()


def _sop_uids(files: list[Path]) -> set[str]:
    return {str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in files}


# --- 5. the shipped ACLs -----------------------------------------------------------------------------------------


class Client:
    """A paho MQTT 5 client driven from the test's thread, so every wait is explicit and bounded."""

    def __init__(self, port: int, username: str | None = None, password: str | None = None) -> None:
        self.port = port
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.connack: int | None = None
        self.disconnected = False
        self.pubacks: dict[int, int] = {}
        self.client.on_connect = lambda _c, _u, _f, rc, _p: setattr(self, "connack", rc.value)
        self.client.on_disconnect = lambda *args: setattr(self, "disconnected", True)
        self.client.on_publish = lambda _c, _u, mid, rc, _p: self.pubacks.__setitem__(mid, rc.value)

    def connect(self) -> int | None:
        """The CONNACK reason code (None: the connection closed before one)."""
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        self._until(lambda: self.connack is not None or self.disconnected)
        return self.connack

    def publish(self, name: str, payload: bytes) -> int | None:
        """The PUBACK reason code of a QoS 1 publish (None: the connection closed before one)."""
        info = self.client.publish(name, payload, qos=1)
        self._until(lambda: info.mid in self.pubacks or self.disconnected)
        return self.pubacks.get(info.mid)

    def close(self) -> None:
        if not self.disconnected and self.connack == Reason.SUCCESS:
            self.client.disconnect()
            self._until(lambda: self.disconnected)
        elif self.client.socket() is not None:
            self.client.disconnect()

    def _until(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "timed out waiting for the broker"
            self.client.loop(timeout=0.02)


def _finding(site: str, device: str, seq: int) -> FindingMessage:
    return FindingMessage(
        site=site,
        device=device,
        seq=seq,
        package=PackageRef(
            name="chest-ct-nodule", version="1.0.0", precision="fp32", profile="generic-x86_64-cpu", sha256="0" * 64
        ),
        study_ref="study-ref",
        series_ref="series-ref",
        instance_ref=f"instance-ref-{seq}",
        modality="CT",
        label="nodule",
        score=0.97,
        scores={"nodule": 0.97},
        threshold=0.5,
        positive=True,
    )


def test_shipped_acls_refuse_a_device_publishing_as_another_and_anonymous_clients(tmp_path: Path) -> None:
    folder = tmp_path / "broker-folder"
    write_broker_config(folder, tls=None, auth=AuthMode.PASSWORD, port=free_port(), bind_address="127.0.0.1")
    device_a = add_device(folder, SITE, "ct-a")
    device_b = add_device(folder, SITE, "ct-b")
    dashboard_credentials = add_dashboard(folder)
    dashboard_credentials.write(tmp_path / "dashboard-bundle")
    settings = read_broker_settings(folder)
    broker = MosquittoBroker(
        tmp_path / "run", port=settings.port, extra_config=BrokerFolder(folder).medge_config.read_text()
    ).start()
    dashboard = DashboardConfig(
        data_dir=tmp_path / "dashboard",
        mqtt={
            "host": "127.0.0.1",
            "port": settings.port,
            "client_id": dashboard_credentials.username,
            "username": dashboard_credentials.username,
            "password_file": tmp_path / "dashboard-bundle" / "password",
        },
    )
    clients: list[Client] = []

    def client(username: str | None = None, password: str | None = None) -> Client:
        made = Client(settings.port, username, password)
        clients.append(made)
        return made

    view = StoreView(dashboard)
    try:
        with IngestService(dashboard) as ingest:
            assert ingest.wait_ready(20), "the dashboard identity must be able to subscribe"

            # A, on B's topic, with a finding naming B: the broker's ACL refuses it.
            forged = _finding(SITE, "ct-b", 0)
            a = client(device_a.username, device_a.password)
            assert a.connect() == Reason.SUCCESS
            assert a.publish(topic(SITE, "ct-b", TopicKind.FINDING), forged.to_json()) == Reason.NOT_AUTHORIZED

            # A, on its own topic, with a finding naming B: the broker lets it through, the dashboard refuses it.
            smuggled = _finding(SITE, "ct-b", 1)
            a_again = client(device_a.username, device_a.password)  # the broker closed A's first connection
            assert a_again.connect() == Reason.SUCCESS
            assert a_again.publish(topic(SITE, "ct-a", TopicKind.FINDING), smuggled.to_json()) in {
                Reason.SUCCESS,
                Reason.NO_MATCHING_SUBSCRIBERS,
            }

            # B's own finding, published last, is stored: the ingest was listening all along.
            genuine = _finding(SITE, "ct-b", 0)
            b = client(device_b.username, device_b.password)
            assert b.connect() == Reason.SUCCESS
            assert b.publish(topic(SITE, "ct-b", TopicKind.FINDING), genuine.to_json()) == Reason.SUCCESS
            _wait(lambda: ingest.stats().committed >= 2, 20, "the ingest to commit what it received")

            assert view.finding_ids() == [genuine.id]
            assert ingest.stats().received == 2  # the forged one never reached the dashboard
            assert ingest.stats().dead_letters_by_reason == {str(DeadLetterReason.IDENTITY): 1}

            anonymous = client()
            assert anonymous.connect() == Reason.NOT_AUTHORIZED
    finally:
        for made in clients:
            made.close()
        view.close()
        broker.stop()
