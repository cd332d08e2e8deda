"""``kill -9`` of the appliance at every step of an update: it comes back on a working package.

The appliance runs in a child process (this module run with ``python -m``,
see :func:`_drive`), which holds still once the journal shows the step under
test; the test SIGKILLs it there, then starts the service again on the same
folders: ``recover()`` must leave the previous package live, the journal
cleared and the update reported as interrupted, and a second try must work.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

from firmware_integration.layout import Layout
from firmware_integration.ota import Journal, OtaAgent, OtaPaths
from runtime.appliance import Appliance
from sdk.appliance_config import ApplianceConfig
from sdk.fleet_contracts import OTA_EVENT, OtaStep, PackageOffer, UpdateRequest
from sdk.messages import Command
from tests.firmware_integration.package_server import (
    MODEL,
    PackageServer,
    compile_version,
    live_versions,
    make_site,
    running,
    update_command,
)

TOKEN = "device-token-0123456789abcdef"
REPO = Path(__file__).resolve().parents[2]


def _drive(spec_file: str) -> None:
    """The child: the service on the test's folders, one update, and a halt at the step to be killed in."""
    spec = json.loads(Path(spec_file).read_text())
    pause = spec["pause"]
    config = ApplianceConfig.model_validate(spec["config"])
    paths = OtaPaths.from_layout(Layout(prefix=Path(spec["prefix"])))
    journal = Journal(paths.journal)

    def hold(where: str) -> None:
        print(f"PAUSED {where}", flush=True)
        time.sleep(3600)  # the parent kills the process now

    def emit(kind: str, severity: str, message: str, detail: Mapping[str, object]) -> None:
        if kind == OTA_EVENT and detail["step"] == pause != OtaStep.SWITCH:
            progress = detail.get("progress")
            if pause != OtaStep.DOWNLOAD or (isinstance(progress, float) and 0 < progress < 1):
                hold(pause)  # after the journal write of the step (mid-body for the download)
        elif kind == "package-live" and pause == OtaStep.SWITCH:
            entry = journal.read()
            if entry is not None and entry.step is OtaStep.SWITCH:
                hold(pause)  # the symlink was flipped, the packages are reloading

    agent = OtaAgent(config, paths=paths, poll_s=0.05)
    agent.recover()
    appliance = Appliance(config, dicom_port=0, report=False, on_event=emit, commands=agent.commands())
    appliance.start()
    agent.start(appliance, emit)
    site = config.appliance
    request = UpdateRequest(update_id="u-kill", package=PackageOffer.model_validate(spec["offer"]), probation_s=600)
    agent.handle_update(Command(site=site.site, device=site.device, command="update", args=request.model_dump()))
    threading.Event().wait(3600)


def _paused(process: subprocess.Popen[str], timeout: float = 120.0) -> str:
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if selector.select(timeout=0.5):
            return process.stdout.readline().strip()
        if process.poll() is not None:
            break
    return f"no pause (exit code {process.poll()})"


@pytest.fixture(scope="module")
def versions(reference_packages, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ota-kill-packages")
    key, calibration = reference_packages.key, reference_packages.calibration
    return (
        compile_version(calibration, key, root / "chest-ct-nodule-1.0.0.medge", "1.0.0"),
        compile_version(calibration, key, root / "chest-ct-nodule-1.1.0.medge", "1.1.0"),
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "step",
    [OtaStep.DOWNLOAD, OtaStep.VERIFY, OtaStep.INSTALL, OtaStep.GOLDEN, OtaStep.SWITCH, OtaStep.PROBATION],
)
def test_a_kill_at_any_step_comes_back_on_the_previous_package(
    step: OtaStep, reference_packages, versions: tuple[Path, Path], tmp_path: Path
) -> None:
    v1_0, v1_1 = versions
    with PackageServer(tmp_path / "tls", TOKEN) as server:
        server.chunk_delay_s = 0.01  # a download takes a few chunks' time: the child can stop inside it
        site = make_site(tmp_path / "root", server, reference_packages.pair.public_path, v1_0)
        offer = server.offer(v1_1, MODEL, "1.1.0")
        spec = tmp_path / "spec.json"
        spec.write_text(
            json.dumps(
                {
                    "pause": str(step),
                    "prefix": str(site.layout.prefix),
                    "config": site.config.model_dump(mode="json"),
                    "offer": offer.model_dump(mode="json"),
                }
            )
        )
        with open(tmp_path / "child.log", "w") as log:
            child = subprocess.Popen(
                [sys.executable, "-m", "tests.firmware_integration.test_ota_kill", str(spec)],
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
            try:
                paused = _paused(child)
                entry = Journal(site.paths.journal).read()
                assert paused == f"PAUSED {step}", (tmp_path / "child.log").read_text()[-3000:]
                assert entry is not None and entry.step is step
                if step is OtaStep.DOWNLOAD:
                    kept = site.paths.part(offer).stat().st_size
                    assert 0 < kept < offer.size
                flipped = step in (OtaStep.SWITCH, OtaStep.PROBATION)
                assert os.readlink(site.layout.packages_dir) == ("slots/B" if flipped else "slots/A")
            finally:
                child.send_signal(signal.SIGKILL)
                child.wait(30)
                assert child.stdout is not None
                child.stdout.close()
        assert child.returncode == -signal.SIGKILL

        report = OtaAgent(site.config, paths=site.paths).recover()  # what the next start does first
        assert report is not None and report.reason == f"interrupted at {step}"
        assert report.step is (OtaStep.ROLLED_BACK if flipped else OtaStep.REFUSED)
        assert os.readlink(site.layout.packages_dir) == "slots/A"
        with running(site) as (agent, appliance):
            assert live_versions(appliance) == {MODEL: "1.0.0"}
            assert not site.paths.journal.exists()
            assert [r.step for r in site.reports("u-kill")] == [report.step]  # reported once the service is up
            # The appliance takes the update again; a download cut by the kill continues where it stopped.
            agent.handle_update(update_command(site, offer, "u-again"))
            assert agent.wait(60)
            assert site.reports("u-again")[-1].step is OtaStep.DONE
            assert live_versions(appliance) == {MODEL: "1.1.0"}
        fetched = [served for served in server.requests if served.path == offer.url]
        if step is OtaStep.DOWNLOAD:
            assert [(r.range, r.status) for r in fetched[1:]] == [(f"bytes={kept}-", 206)]
        else:
            assert len(fetched) == 1  # the complete download was kept, checked again and not fetched again


if __name__ == "__main__":
    _drive(sys.argv[1])
