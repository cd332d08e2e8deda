"""``kill -9`` of ``medge serve`` mid-stream, many times: nothing acknowledged is lost, nothing is doubled."""

from __future__ import annotations

import gc
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from device_profiles import get_profile
from quantization.compile import CompileOptions, compile_package
from runtime.ingest.sockets import nodelay_evt_handlers
from sdk.model_config import load_model_config
from sdk.reference_model import config_path, onnx_path
from sdk.signing import generate_keypair, load_private_key
from sdk.testing import PhantomSpec, generate_studies

ROUNDS = 6

# pynetdicom leaves the socket of an association whose peer was killed for the garbage collector.
pytestmark = [
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("kill9")
    generate_studies(root / "calib", 3, PhantomSpec(slices=12), seed=8)
    pair = generate_keypair(root / "keys")
    trusted = root / "trusted"
    trusted.mkdir()
    (trusted / "k.pub").write_bytes(pair.public_path.read_bytes())
    compile_package(
        onnx_path(),
        load_model_config(config_path()),
        get_profile("generic-x86_64-cpu"),
        root / "calib",
        load_private_key(pair.private_path),
        root / "packages" / "chest-ct-nodule.medge",
        CompileOptions(precision="fp32"),
    )
    truths = generate_studies(root / "studies", 4, PhantomSpec(slices=10), seed=99)
    files = [root / "studies" / str(t.folder) / str(s.file) for t in truths for s in t.series[0].slices]
    dicom_port, health_port = _free_port(), _free_port()
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


def _send(port: int, files: list[Path], acked: set[str], stop: threading.Event) -> None:
    ae = AE(ae_title="SCANNER1")
    ae.add_requested_context(CTImageStorage)
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="MEDGE", evt_handlers=nodelay_evt_handlers())
    except OSError:
        return
    if not assoc.is_established:
        return
    try:
        for path in files:
            if stop.is_set():
                break
            ds = pydicom.dcmread(path)
            status = assoc.send_c_store(ds)
            if status and status.Status == 0x0000:
                acked.add(str(ds.SOPInstanceUID))
        assoc.release()
    except Exception:  # the service died under us: that is the point of the test
        assoc.abort()


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
        stop = threading.Event()
        sender = threading.Thread(target=_send, args=(dicom_port, files, acked, stop))
        sender.start()
        time.sleep(rng.uniform(0.1, 1.2))
        os.kill(service.pid, signal.SIGKILL)
        service.wait()
        stop.set()
        sender.join(timeout=30)
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
        stop = threading.Event()
        _send(dicom_port, files, acked, stop)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len({sop for _, sop in _findings(db)}) < len(files):
            time.sleep(0.2)
        final = [sop for _, sop in _findings(db)]
        assert sorted(final) == sorted({str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files})
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=60)
        gc.collect()  # release the sockets pynetdicom left behind here, under this module's warning filter
