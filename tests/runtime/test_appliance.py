"""The appliance end to end: storescu → SCP → spool → queue → analysis → outbox (runtime/appliance.py)."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from runtime import appliance as appliance_module
from runtime.appliance import Appliance
from runtime.ingest.sockets import nodelay_evt_handlers
from sdk.appliance_config import ApplianceConfig
from sdk.errors import DicomInputError
from sdk.messages import Command, finding_id, parse_message
from sdk.routing import RoutingRule, RoutingSection
from sdk.testing import PhantomSpec, generate_studies
from sdk.testing.dicom_peers import storescu


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


def _done(appliance: Appliance) -> int:
    counts = appliance.queue.counts()
    return counts.get("analysed", 0) + counts.get("reported", 0)


def test_instances_sent_with_storescu_get_one_finding_each(installed, tmp_path: Path) -> None:
    packages, trusted, files = installed
    with Appliance(_config(tmp_path, packages), trusted=trusted, dicom_port=0) as appliance:
        assert appliance.scp is not None
        result = storescu(appliance.scp.port, files)
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
        assert storescu(appliance.scp.port, files[:3]).returncode == 0
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


def _series_config(tmp_path: Path, packages: Path, *, quiet_time_s: float) -> ApplianceConfig:
    config = _config(tmp_path, packages)
    return config.model_copy(
        update={
            "dicom": config.dicom.model_copy(update={"quiet_time_s": quiet_time_s}),
            "routing": RoutingSection(
                rules=[
                    RoutingRule(package="chest-ct-nodule", unit="instance", modality=["CT"]),
                    RoutingRule(package="chest-ct-nodule", unit="series", modality=["CT"], min_slices=3),
                ]
            ),
        }
    )


def test_a_series_over_two_associations_gets_one_series_finding(installed, tmp_path: Path) -> None:
    packages, trusted, files = installed
    series_files = files[:6]  # the first study's series
    series_uid = str(pydicom.dcmread(series_files[0], stop_before_pixels=True).SeriesInstanceUID)
    config = _series_config(tmp_path, packages, quiet_time_s=1.5)
    with Appliance(config, trusted=trusted, dicom_port=0) as appliance:
        assert appliance.scp is not None and appliance.series is not None
        assert storescu(appliance.scp.port, series_files[:3]).returncode == 0
        assert storescu(appliance.scp.port, series_files[3:]).returncode == 0
        _wait(lambda: len(appliance.queue.findings()) == len(series_files) + 1)
        time.sleep(2.0)  # nothing more comes: the series completed once
        entries = appliance.queue.findings()
        assert len(entries) == len(series_files) + 1
        by_series = [e for e in entries if e.sop_instance_uid is None]
        assert [e.series_instance_uid for e in by_series] == [series_uid]
        whole = parse_message(by_series[0].payload)
        slices = [parse_message(e.payload) for e in entries if e.sop_instance_uid is not None]
        live = appliance.packages.live["chest-ct-nodule"]
        assert whole.id == finding_id(series_uid, live.sha256, origin="st-marys/ct-1")
        # The series takes the deciding slice's decision and location; each score is the series maximum.
        strongest = max(slices, key=lambda f: (f.positive, f.score - f.threshold))
        assert whole.instance_ref == strongest.instance_ref
        assert whole.positive == any(f.positive for f in slices)
        assert whole.score == pytest.approx(max(f.score for f in slices), abs=1e-6)
        assert set(whole.latency_ms) >= {"decode", "preprocess", "infer", "postprocess", "total"}
        info = appliance.series.get(series_uid)
        assert info is not None and info.instance_count == 6 and len(info.associations) == 2
        # Its images left the spool once the series was analysed.
        assert not list(appliance.spool.instances())


def test_a_series_rule_that_does_not_match_gives_no_series_finding(installed, tmp_path: Path) -> None:
    packages, trusted, files = installed
    config = _series_config(tmp_path, packages, quiet_time_s=0.3)
    with Appliance(config, trusted=trusted, dicom_port=0) as appliance:
        assert appliance.scp is not None and appliance.series is not None
        assert storescu(appliance.scp.port, files[:2]).returncode == 0  # 2 slices < min_slices 3
        _wait(lambda: bool(appliance.series.series("analysed")))
        assert len(appliance.queue.findings()) == 2
        assert all(e.sop_instance_uid is not None for e in appliance.queue.findings())
        assert not list(appliance.spool.instances())


def test_a_hung_decode_is_timed_out_and_the_service_keeps_serving(
    installed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    packages, trusted, files = installed
    hung_sop = str(pydicom.dcmread(files[0], stop_before_pixels=True).SOPInstanceUID)
    release = threading.Event()
    real_read = appliance_module.read_instance

    def read_or_hang(path: Path, limits):  # fault injection: one instance never finishes decoding
        if path.stem == hung_sop:
            release.wait(30)
        return real_read(path, limits)

    monkeypatch.setattr(appliance_module, "read_instance", read_or_hang)
    config = _config(tmp_path, packages)
    config = config.model_copy(update={"dicom": config.dicom.model_copy(update={"instance_timeout_s": 0.5})})
    events: list[str] = []
    try:
        with Appliance(config, trusted=trusted, on_event=lambda k, s, m, d: events.append(k)) as appliance:
            appliance.submit(files[0])
            time.sleep(0.1)
            for path in files[1:4]:
                appliance.submit(path)
            _wait(lambda: _done(appliance) == 3, timeout=30)
            record = appliance.queue.get(hung_sop)
            assert record is not None and record.state == "quarantined" and "timed out" in str(record.reason)
            assert "instance-timeout" in events
            assert appliance._liveness() == []
            release.set()  # the abandoned worker finishes late: its result must not resurrect the instance
            time.sleep(0.5)
            assert appliance.queue.get(hung_sop).state == "quarantined"
            assert len(appliance.queue.findings()) == 3
    finally:
        release.set()


def test_submit_refuses_what_is_not_dicom(installed, tmp_path: Path) -> None:
    packages, trusted, _ = installed
    with Appliance(_config(tmp_path, packages), trusted=trusted) as appliance:
        with pytest.raises(DicomInputError):
            appliance.submit(b"not a dicom file at all" * 10)
        assert appliance._liveness() == []


def test_a_burst_gets_one_finding_each_and_files_go_only_after_their_findings_are_durable(
    installed, tmp_path: Path
) -> None:
    packages, trusted, files = installed
    removed_without_finding: list[str] = []
    with Appliance(_config(tmp_path, packages), trusted=trusted) as appliance:
        real_remove = appliance.spool.remove

        def checked_remove(path) -> None:  # a spy on the real spool: the finding must be committed first
            if not appliance.queue.findings(Path(path).stem):
                removed_without_finding.append(Path(path).stem)
            real_remove(path)

        appliance.spool.remove = checked_remove  # type: ignore[method-assign]
        for path in files:  # all at once: the pipeline (and the group commit) fills up
            appliance.submit(path)
        _wait(lambda: _done(appliance) == len(files) and not list(appliance.spool.instances()))
        entries = appliance.queue.findings()
        assert sorted(e.sop_instance_uid for e in entries) == sorted(
            r.sop_instance_uid for r in appliance.queue.instances()
        )
        assert len({e.sop_instance_uid for e in entries}) == len(entries) == len(files)
        assert sorted(e.seq for e in entries) == list(range(len(files)))
    assert removed_without_finding == []


def test_receive_latency_ends_at_the_claim_not_after_decoding(
    installed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    packages, trusted, files = installed
    real_read = appliance_module.read_instance

    def slow_read(path: Path, limits):  # decoding takes 0.3 s: it counts as decode, not as waiting to be received
        time.sleep(0.3)
        return real_read(path, limits)

    monkeypatch.setattr(appliance_module, "read_instance", slow_read)
    with Appliance(_config(tmp_path, packages), trusted=trusted) as appliance:
        uid = appliance.submit(files[0])
        _wait(lambda: bool(appliance.queue.findings(uid)))
        latency = parse_message(appliance.queue.findings(uid)[0].payload).latency_ms
    assert latency["decode"] >= 300
    assert latency["receive"] < 250, latency
    assert latency["total"] == pytest.approx(sum(v for k, v in latency.items() if k != "total"), abs=0.01)


def test_a_file_left_behind_by_a_crash_after_the_commit_is_swept_at_start(installed, tmp_path: Path) -> None:
    packages, trusted, files = installed
    config = _config(tmp_path, packages)
    with Appliance(config, trusted=trusted) as appliance:
        uid = appliance.submit(files[0])
        _wait(lambda: _done(appliance) == 1 and not list(appliance.spool.instances()))
        spooled = appliance.queue.get(uid).spool_path
    # A kill -9 between the commit of its findings and the deletion leaves the spooled file (and its folders).
    spooled.parent.mkdir(parents=True, exist_ok=True)
    spooled.write_bytes(files[0].read_bytes())
    with Appliance(config, trusted=trusted) as appliance:
        assert not spooled.exists()
        assert appliance.spool.used_bytes() == 0
        time.sleep(0.5)
        assert len(appliance.queue.findings()) == 1
        assert appliance.queue.get(uid).state in ("analysed", "reported")


def test_start_up_events_go_into_the_durable_outbox(installed, tmp_path: Path) -> None:
    packages, trusted, _ = installed
    with Appliance(_config(tmp_path, packages), trusted=trusted) as appliance:
        kinds = [json.loads(entry.payload)["kind"] for entry in appliance.queue.pending_messages(limit=1000)]
    assert "package-live" in kinds  # emitted while the packages load, before the reporter connects


def test_the_selftest_command_runs_the_selftest_checklist_against_the_running_service(
    installed, tmp_path: Path
) -> None:
    packages, trusted, _ = installed
    config = _config(tmp_path, packages)
    config = config.model_copy(
        update={"dicom": config.dicom.model_copy(update={"allowed_calling_aes": ["MEDGE-SELFTEST"]})}
    )
    with Appliance(config, trusted=trusted, dicom_port=0) as appliance:
        answer = appliance._selftest(Command(site="st-marys", device="ct-1", command="selftest"))
    checks = {check["key"]: check["status"] for check in answer["checks"]}
    assert "broker" not in checks  # the command came over the broker
    assert checks["dicom"] == "pass"  # the C-ECHO reached the port the service listens on
    assert [status for key, status in checks.items() if key.startswith("package")] == ["pass"]
