"""Scanner → appliance → Mosquitto → dashboard store, each finding exactly once, through broker and dashboard outages.

Real parts only: dcmtk's storescu as the scanner, the appliance service with
its reporter, a Mosquitto on loopback (killed with SIGKILL: what it held only
in memory is lost), and the dashboard's ingest with its SQLite store.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from dashboard.ingest import IngestService
from dashboard.settings import DashboardConfig
from dashboard.store import Device, DeviceState, create_store
from dashboard.store import Finding as StoredFinding
from runtime.appliance import Appliance
from sdk.appliance_config import ApplianceConfig
from sdk.testing import PhantomSpec, generate_studies
from sdk.testing.dicom_peers import storescu
from sdk.testing.mosquitto import MosquittoBroker


def _wait(predicate: Callable[[], object], timeout: float = 60.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _storescu(port: int, files: list[Path]) -> None:
    result = storescu(port, files)
    assert result.returncode == 0, result.stderr


@pytest.fixture
def setup(reference_packages, tmp_path: Path):
    packages = tmp_path / "packages"
    reference_packages.build(packages / "chest-ct-nodule.medge")
    truths = generate_studies(tmp_path / "studies", 3, PhantomSpec(slices=8), seed=5)
    files = [tmp_path / "studies" / str(t.folder) / str(s.file) for t in truths for s in t.series[0].slices]
    broker = MosquittoBroker(tmp_path / "broker").start()
    appliance_config = ApplianceConfig(
        appliance={
            "site": "st-marys",
            "device": "ct-1",
            "demo": True,
            "data_dir": tmp_path / "appliance",
            "profile": "generic-x86_64-cpu",
        },
        dicom={"ae_title": "MEDGE", "host": "127.0.0.1"},
        mqtt={
            "host": "127.0.0.1",
            "port": broker.port,
            "reconnect_min_s": 0.2,
            "reconnect_max_s": 1.0,
            "resend_after_s": 2.0,  # a resend right after reconnect can precede the dashboard's return
        },
        packages={"dir": packages},
    )
    dashboard_config = DashboardConfig(
        data_dir=tmp_path / "dashboard",
        demo=True,
        mqtt={"host": "127.0.0.1", "port": broker.port, "client_id": "dashboard-1"},
    )
    yield broker, appliance_config, dashboard_config, reference_packages.trusted, files
    broker.stop()


def _stored(config: DashboardConfig) -> tuple[int, int]:
    store = create_store(config.store_url)
    try:
        with store.session() as session:
            rows = session.scalar(select(func.count()).select_from(StoredFinding)) or 0
            distinct = session.scalar(select(func.count(func.distinct(StoredFinding.message_id)))) or 0
        return rows, distinct
    finally:
        store.close()


def test_every_finding_reaches_the_store_once_through_broker_and_dashboard_restarts(setup) -> None:
    broker, appliance_config, dashboard_config, trusted, files = setup
    ingest = IngestService(dashboard_config)
    ingest.start()
    assert ingest.wait_ready(20)
    with Appliance(appliance_config, trusted=trusted, dicom_port=0) as appliance:
        assert appliance.scp is not None and appliance.reporter is not None
        assert appliance.reporter.wait_connected(20)
        first, second, third = files[:8], files[8:16], files[16:]
        _storescu(appliance.scp.port, first)
        _wait(lambda: appliance.queue.depth() == 0 and len(appliance.queue.findings()) == 8, what="first acks")

        # The broker dies like a power cut while the second study is analysed and reported.
        _storescu(appliance.scp.port, second)
        broker.kill()
        _wait(lambda: len(appliance.queue.findings()) == 16, what="second study's findings in the outbox")
        assert appliance.queue.depth() > 0 or ingest.stats().findings_stored == 16
        broker.start()
        _wait(lambda: appliance.queue.depth() == 0, timeout=90, what="acks after the broker came back")

        # The dashboard goes away; findings wait in the outbox and arrive when it is back.
        ingest.stop()
        _storescu(appliance.scp.port, third)
        _wait(lambda: len(appliance.queue.findings()) == len(files), what="third study's findings in the outbox")
        time.sleep(0.5)
        assert appliance.queue.depth() > 0, "nothing may leave the outbox without the dashboard's Ack"
        ingest = IngestService(dashboard_config)
        ingest.start()
        assert ingest.wait_ready(20)
        _wait(lambda: appliance.queue.depth() == 0, timeout=90, what="acks after the dashboard came back")

    rows, distinct = _stored(dashboard_config)
    assert rows == distinct == len(files)  # every instance: exactly one finding
    store = create_store(dashboard_config.store_url)
    try:
        assert store.sequence_gaps("st-marys", "ct-1") == []
    finally:
        store.close()
    # The appliance stopped: its retained status tells the dashboard it is offline.
    _wait(lambda: _device_state(dashboard_config) == DeviceState.OFFLINE, timeout=20, what="offline status")
    ingest.stop()


def _device_state(config: DashboardConfig) -> DeviceState:
    store = create_store(config.store_url)
    try:
        with store.session() as session:
            return DeviceState(session.scalars(select(Device.state)).one())
    finally:
        store.close()
