"""``kill -9`` of ``medge serve`` mid-stream, many times: nothing acknowledged is lost, nothing is doubled."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pydicom
import pytest

from sdk.testing import PhantomSpec, generate_studies
from sdk.testing.mosquitto import free_port

ROUNDS = 6


@pytest.fixture(scope="module")
def site(reference_packages, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("kill9")
    trusted = root / "trusted"
    trusted.mkdir()
    (trusted / "k.pub").write_bytes(reference_packages.pair.public_path.read_bytes())
    reference_packages.build(root / "packages" / "chest-ct-nodule.medge")
    truths = generate_studies(root / "studies", 4, PhantomSpec(slices=10), seed=99)
    files = [root / "studies" / str(t.folder) / str(s.file) for t in truths for s in t.series[0].slices]
    dicom_port, health_port = free_port(), free_port()
    config = root / "appliance.toml"
    config.write_text(
        f"""
[appliance]
site = "st-marys"
device = "ct-1"
profile = "generic-x86_64-cpu"
demo = true
data_dir = "{root / "data"}"
[dicom]
ae_title = "MEDGE"
host = "127.0.0.1"
port = {dicom_port}
[mqtt]
port = 1883
[packages]
dir = "{root / "packages"}"
trusted_keys_dir = "{trusted}"
"""
    )
    return root, config, files, dicom_port, health_port


def _start(config: Path, health_port: int) -> subprocess.Popen[bytes]:
    log = (config.parent / "serve.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "sdk.cli.main", "serve", "--config", str(config), "--health-port", str(health_port)],
        stdout=log,
        stderr=log,
    )
    log.close()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/readyz", timeout=1) as response:
                if response.status == 200:
                    return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    tail = (config.parent / "serve.log").read_text(errors="replace")[-3000:]
    raise AssertionError(f"medge serve did not become ready:\n{tail}")


def _send(port: int, files: list[Path], acked: set[str], kill_after: float | None = None) -> None:
    """Run the scanner process; optionally SIGKILL ``service`` meanwhile (see the test)."""
    sender = subprocess.Popen(
        [sys.executable, "-m", "tests.runtime.dicom_sender", str(port), *map(str, files)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    out, _ = sender.communicate(timeout=300)
    acked.update(line.strip() for line in out.splitlines() if line.strip())


def _findings(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT finding_id, sop_instance_uid FROM outbox").fetchall()


@pytest.mark.slow
def test_sigkill_at_random_points_loses_and_doubles_nothing(site) -> None:
    root, config, files, dicom_port, health_port = site
    rng = random.Random(2026)
    acked: set[str] = set()
    for _ in range(ROUNDS):
        service = _start(config, health_port)
        sender = threading.Thread(target=_send, args=(dicom_port, files, acked))
        sender.start()
        time.sleep(rng.uniform(0.4, 1.6))  # the sender process needs ~0.5 s to start; 40 instances take ~0.5 s
        os.kill(service.pid, signal.SIGKILL)
        service.wait()
        sender.join(timeout=300)
    # Restart without resending: every instance that was acknowledged must come out with exactly one finding.
    service = _start(config, health_port)
    try:
        db = root / "data" / "queue.sqlite"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not acked <= {sop for _, sop in _findings(db)}:
            time.sleep(0.2)
        found = _findings(db)
        sops = [sop for _, sop in found]
        assert acked, "the sender never got an instance acknowledged"
        assert acked <= set(sops), f"lost {len(acked - set(sops))} acknowledged instance(s)"
        assert len(sops) == len(set(sops)), "an instance got two findings"
        # The scanner resends everything; still one finding each.
        _send(dicom_port, files, acked)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len({sop for _, sop in _findings(db)}) < len(files):
            time.sleep(0.2)
        final = [sop for _, sop in _findings(db)]
        assert sorted(final) == sorted({str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files})
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=60)
