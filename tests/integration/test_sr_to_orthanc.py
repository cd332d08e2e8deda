"""Findings as DICOM SRs in the source study on a real PACS (Debian's Orthanc), each exactly once, through its outage.

Real parts only: dcmtk's storescu as the scanner (to the appliance, and to
Orthanc so that the study is there, as a modality would send it to both), the
appliance service with ``[pacs]`` pointing at Orthanc, and Orthanc itself on
loopback with a fresh storage directory, stopped and started again on the
same storage mid-test. Orthanc's REST API says what it stored.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.appliance import Appliance
from runtime.work_queue import PacsState
from sdk.appliance_config import ApplianceConfig
from sdk.testing import PhantomSpec, generate_studies
from sdk.testing.mosquitto import free_port

ORTHANC = "/usr/sbin/Orthanc"
STORESCU = "/usr/bin/storescu"
SR_CLASSES = {"1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.34"}


def _wait(predicate: Callable[[], object], timeout: float = 60.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Orthanc:
    """One Orthanc on loopback: DICOM and REST on free ports, storage and index under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.ae_title = "ORTHANC"
        self._process: subprocess.Popen[bytes] | None = None
        storage = root / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        self.config = root / "orthanc.json"
        self.config.write_text(
            json.dumps(
                {
                    "Name": "medge-test-pacs",
                    "StorageDirectory": str(storage),
                    "IndexDirectory": str(storage),
                    "DicomAet": self.ae_title,
                    "DicomPort": self.dicom_port,
                    "HttpPort": self.http_port,
                    "RemoteAccessAllowed": False,
                    "AuthenticationEnabled": False,
                    "DicomCheckCalledAet": True,
                    "Plugins": [],
                }
            ),
            encoding="utf-8",
        )

    def start(self) -> Orthanc:
        log = (self.root / "orthanc.log").open("ab")
        try:
            self._process = subprocess.Popen([ORTHANC, str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        _wait(self._up, timeout=30, what="Orthanc's REST API")
        return self

    def _up(self) -> bool:
        assert self._process is not None
        if self._process.poll() is not None:
            raise AssertionError(f"Orthanc exited with {self._process.returncode}: see {self.root / 'orthanc.log'}")
        try:
            return bool(self.get("/system"))
        except OSError:
            return False

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout=30)
        self._process = None

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as response:
            return json.loads(response.read())

    def instances(self) -> list[dict[str, Any]]:
        """Every stored instance: its tags and the Orthanc id of its study."""
        found = []
        for orthanc_id in self.get("/instances"):
            tags = self.get(f"/instances/{orthanc_id}/simplified-tags")
            tags["orthanc_study"] = self.get(f"/instances/{orthanc_id}/study")["ID"]
            found.append(tags)
        return found


def _storescu(port: int, called: str, files: list[Path]) -> None:
    result = subprocess.run(
        [STORESCU, "-aec", called, "-aet", "SCANNER1", "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        env={**os.environ, "TCP_NODELAY": "1"},
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path / "orthanc").start()
    yield server
    server.stop()


@pytest.fixture
def studies(tmp_path: Path) -> list[list[Path]]:
    truths = generate_studies(tmp_path / "studies", 2, PhantomSpec(slices=3, rows=128, columns=128), seed=8)
    return [[tmp_path / "studies" / str(t.folder) / str(s.file) for s in t.series[0].slices] for t in truths]


def _config(tmp_path: Path, packages_dir: Path, orthanc: Orthanc, **pacs: object) -> ApplianceConfig:
    return ApplianceConfig(
        appliance={
            "site": "st-marys",
            "device": "ct-1",
            "demo": True,
            "data_dir": tmp_path / "appliance",
            "profile": "generic-x86_64-cpu",
        },
        dicom={"ae_title": "MEDGE", "host": "127.0.0.1"},
        packages={"dir": packages_dir},
        pacs={
            "enabled": True,
            "host": "127.0.0.1",
            "port": orthanc.dicom_port,
            "ae_title": orthanc.ae_title,
            "retry_min_s": 0.2,
            "retry_max_s": 1.0,
            "timeout_s": 10.0,
            **pacs,
        },
    )


def test_each_finding_becomes_one_sr_in_the_source_study_through_a_pacs_outage(
    reference_packages, tmp_path: Path, orthanc: Orthanc, studies: list[list[Path]]
) -> None:
    packages = tmp_path / "packages"
    reference_packages.build(packages / "chest-ct-nodule.medge")
    config = _config(tmp_path, packages, orthanc, packages=["chest-ct-nodule"])
    first, second = studies
    events: list[str] = []
    with Appliance(
        config, trusted=reference_packages.trusted, dicom_port=0, report=False,
        on_event=lambda kind, severity, message, detail: events.append(kind),
    ) as appliance:  # fmt: skip
        assert appliance.scp is not None and appliance.pacs is not None
        # The scanner sends the study to the PACS and to the appliance.
        _storescu(orthanc.dicom_port, orthanc.ae_title, first)
        _storescu(appliance.scp.port, "MEDGE", first)
        _wait(lambda: len(appliance.queue.findings()) == len(first), what="the first study's findings")
        _wait(lambda: len(appliance.queue.pacs_entries(PacsState.SENT)) == len(first), what="the first SRs sent")

        # The PACS goes away; the next study's SRs wait in the outbox with the reason.
        orthanc.stop()
        _storescu(appliance.scp.port, "MEDGE", second)
        _wait(lambda: len(appliance.queue.findings()) == len(first) + len(second), what="the second study's findings")
        _wait(
            lambda: any(e.last_error for e in appliance.queue.pacs_entries(PacsState.PENDING)),
            what="a failed attempt",
        )
        assert appliance.queue.pacs_pending() == len(second)
        assert "pacs-send-failed" in events
        assert any("wait for the PACS" in alarm for alarm in appliance.heartbeat().alarms)

        # Back on the same storage: the waiting SRs arrive, each once.
        orthanc.start()
        _storescu(orthanc.dicom_port, orthanc.ae_title, second)
        _wait(lambda: appliance.queue.pacs_pending() == 0, timeout=60, what="the outbox to drain")
        assert "pacs-send-recovered" in events
        sent = appliance.metrics.registry.get_sample_value("medge_pacs_sent_total")
        findings = appliance.queue.findings()

    assert sent == len(findings)  # each SR was sent exactly once: none again after the PACS had it
    stored = orthanc.instances()
    srs = [tags for tags in stored if tags["SOPClassUID"] in SR_CLASSES]
    sources = {tags["SOPInstanceUID"]: tags for tags in stored if tags["SOPClassUID"] not in SR_CLASSES}
    assert len(srs) == len(findings) == len(first) + len(second)  # one SR per finding
    assert len({tags["SOPInstanceUID"] for tags in srs}) == len(srs)
    for sr in srs:
        assert sr["Modality"] == "SR"
        source_study = {t["StudyInstanceUID"] for t in sources.values() if t["orthanc_study"] == sr["orthanc_study"]}
        assert source_study == {sr["StudyInstanceUID"]}  # in the source study, next to its images
        assert sr["PatientID"] in {t["PatientID"] for t in sources.values()}
    per_study = {tags["orthanc_study"] for tags in srs}
    assert len(per_study) == 2
    for orthanc_study in per_study:
        study = orthanc.get(f"/studies/{orthanc_study}")
        assert len(study["Series"]) == 2  # the images and the SR series


def test_no_sr_for_a_package_the_pacs_section_does_not_name(
    reference_packages, tmp_path: Path, orthanc: Orthanc, studies: list[list[Path]]
) -> None:
    packages = tmp_path / "packages"
    reference_packages.build(packages / "chest-ct-nodule.medge")
    config = _config(tmp_path, packages, orthanc, packages=["another-model"])
    with Appliance(config, trusted=reference_packages.trusted, dicom_port=0, report=False) as appliance:
        for path in studies[0]:
            appliance.submit(path)
        _wait(lambda: len(appliance.queue.findings()) == len(studies[0]), what="the findings")
        time.sleep(0.3)
        assert appliance.queue.pacs_entries() == []
    assert [t for t in orthanc.instances() if t["SOPClassUID"] in SR_CLASSES] == []
