"""The appliance end to end: storescu → SCP → spool → queue → analysis → outbox (runtime/appliance.py)."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from runtime.appliance import Appliance
from runtime.ingest.sockets import nodelay_evt_handlers
from sdk.appliance_config import ApplianceConfig
from sdk.messages import parse_message
from sdk.testing import PhantomSpec, generate_studies

STORESCU = "/usr/bin/storescu"


@pytest.fixture(scope="module")
def installed(reference_packages, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("appliance")
    packages = root / "packages"
    reference_packages.build(packages / "chest-ct-nodule.medge")
    studies = root / "studies"
    truths = generate_studies(studies, 2, PhantomSpec(slices=6), seed=77)
    files = [studies / str(t.folder) / str(s.file) for t in truths for s in t.series[0].slices]
    return packages, reference_packages.trusted, files


def _config(tmp_path: Path, packages: Path) -> ApplianceConfig:
    return ApplianceConfig(
        appliance={
            "site": "st-marys",
            "device": "ct-1",
            "demo": True,
            "data_dir": tmp_path / "data",
            "profile": "generic-x86_64-cpu",
        },
        dicom={"ae_title": "MEDGE", "host": "127.0.0.1", "quiet_time_s": 0.5},
        mqtt={"port": 1883},
        packages={"dir": packages},
    )


def _wait(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the appliance")


def _storescu(port: int, files: list[Path]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TCP_NODELAY": "1"}
    return subprocess.run(
        [STORESCU, "-aec", "MEDGE", "-aet", "SCANNER1", "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def _done(appliance: Appliance) -> int:
    counts = appliance.queue.counts()
    return counts.get("analysed", 0) + counts.get("reported", 0)


def test_instances_sent_with_storescu_get_one_finding_each(installed, tmp_path: Path) -> None:
    packages, trusted, files = installed
    with Appliance(_config(tmp_path, packages), trusted=trusted, dicom_port=0) as appliance:
        assert appliance.scp is not None
        result = _storescu(appliance.scp.port, files)
        assert result.returncode == 0, result.stderr
        _wait(lambda: _done(appliance) == len(files))
        entries = appliance.queue.findings()
        assert len(entries) == len(files)
        assert sorted(entry.seq for entry in entries) == list(range(entries[0].seq, entries[0].seq + len(files)))
        findings = [parse_message(entry.payload) for entry in entries]
        assert all(f.device == "ct-1" and f.package.name == "chest-ct-nodule" for f in findings)
        # Health: ready, metrics counting.
        assert appliance.health is not None
        with urllib.request.urlopen(f"http://127.0.0.1:{appliance.health.port}/readyz", timeout=5) as response:
            assert json.loads(response.read())["ok"] is True
        beat = appliance.heartbeat()
        assert beat.engines[0].device == "CPUExecutionProvider"
        assert beat.latency_ms_p50 is not None
        # Sending the same instances again creates no second finding.
        assert _storescu(appliance.scp.port, files[:3]).returncode == 0
        time.sleep(1.0)
        assert len(appliance.queue.findings()) == len(files)


def test_a_truncated_instance_is_quarantined_and_service_keeps_serving(installed, tmp_path: Path) -> None:
    packages, trusted, files = installed
    events: list[str] = []
    config = _config(tmp_path, packages)
    with Appliance(config, trusted=trusted, dicom_port=0, on_event=lambda k, s, m, d: events.append(k)) as appliance:
        assert appliance.scp is not None
        broken = pydicom.dcmread(files[0])
        broken.PixelData = broken.PixelData[:1000]
        good = pydicom.dcmread(files[1])
        ae = AE(ae_title="SCANNER1")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", appliance.scp.port, ae_title="MEDGE", evt_handlers=nodelay_evt_handlers())
        assert assoc.is_established
        assert assoc.send_c_store(broken).Status == 0x0000  # accepted into the spool; refused at decoding
        assert assoc.send_c_store(good).Status == 0x0000
        assoc.release()
        _wait(lambda: appliance.queue.counts().get("quarantined", 0) == 1 and _done(appliance) == 1)
        record = appliance.queue.get(str(broken.SOPInstanceUID))
        assert record is not None and "truncated" in str(record.reason)
        assert "quarantined" in events
        assert list((config.appliance.data_dir / "spool" / "quarantine").glob("*.reason.txt"))


def test_no_package_means_not_ready(installed, tmp_path: Path) -> None:
    _, trusted, _ = installed
    empty = tmp_path / "none"
    empty.mkdir()
    with Appliance(_config(tmp_path, empty), trusted=trusted, dicom_port=0) as appliance:
        assert "no package is live" in appliance._readiness()
