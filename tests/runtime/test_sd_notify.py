"""systemd's notify protocol and the watchdog, against a real socket standing in for systemd (runtime/sd_notify.py).

The listener here is what systemd is to the service: an ``AF_UNIX`` datagram
socket, bound to a path or an abstract name, that reads ``KEY=value`` lines.
The watchdog tests run real threads (a real :class:`Appliance`'s, and a
worker loop that really blocks) and check what arrives on that socket.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.appliance import Appliance
from runtime.sd_notify import Notifier, ProgressMonitor, Watchdog, watchdog_interval
from sdk.appliance_config import ApplianceConfig
from sdk.testing.mosquitto import free_port

INTERVAL_S = 0.6  # the watchdog interval the tests ask for: pings every 0.3 s


class NotifyListener:
    """A notify socket, as systemd holds it: one datagram = one message of ``KEY=value`` lines."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)

    def receive(self, timeout: float) -> dict[str, str] | None:
        """The next message, or None if none arrives within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        return dict(line.split("=", 1) for line in data.decode().split("\n"))

    def collect(self, seconds: float) -> list[dict[str, str]]:
        """Every message arriving within ``seconds``."""
        deadline = time.monotonic() + seconds
        messages = []
        while (left := deadline - time.monotonic()) > 0:
            message = self.receive(left)
            if message is not None:
                messages.append(message)
        return messages

    def wait_for(self, key: str, timeout: float) -> dict[str, str]:
        """The first message holding ``key`` (others are skipped); fails the test after ``timeout``."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = self.receive(left)
            if message is not None and key in message:
                return message
        raise AssertionError(f"no {key} within {timeout} s")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def path_listener() -> Iterator[NotifyListener]:
    folder = tempfile.mkdtemp(prefix="notify-")  # AF_UNIX paths are limited to 107 bytes: keep it short
    listener = NotifyListener(os.path.join(folder, "notify"))
    yield listener
    listener.close()
    shutil.rmtree(folder)


@pytest.fixture
def abstract_listener() -> Iterator[NotifyListener]:
    listener = NotifyListener(f"@medge-test-{secrets.token_hex(6)}")
    yield listener
    listener.close()


def pings(messages: list[dict[str, str]]) -> int:
    return sum(1 for message in messages if message.get("WATCHDOG") == "1")


# --- the protocol ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("listener_name", ["path_listener", "abstract_listener"])
def test_notifications_arrive_as_key_value_datagrams(listener_name: str, request: pytest.FixtureRequest) -> None:
    listener: NotifyListener = request.getfixturevalue(listener_name)
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": listener.address})
    assert notifier.enabled
    try:
        assert notifier.ready("serving 1 package")
        assert listener.receive(2) == {"READY": "1", "STATUS": "serving 1 package"}
        assert notifier.status("loading packages")
        assert listener.receive(2) == {"STATUS": "loading packages"}
        assert notifier.watchdog()
        assert listener.receive(2) == {"WATCHDOG": "1"}
        assert notifier.extend_timeout(90)
        assert listener.receive(2) == {"EXTEND_TIMEOUT_USEC": "90000000"}
        assert notifier.mainpid(4242)
        assert listener.receive(2) == {"MAINPID": "4242"}
        assert notifier.reloading()
        reloading = listener.receive(2)
        assert reloading is not None and reloading["RELOADING"] == "1"
        assert abs(int(reloading["MONOTONIC_USEC"]) - time.monotonic_ns() // 1000) < 5_000_000
        assert notifier.stopping("draining")
        assert listener.receive(2) == {"STOPPING": "1", "STATUS": "draining"}
    finally:
        notifier.close()


def test_a_status_with_newlines_stays_one_assignment(path_listener: NotifyListener) -> None:
    notifier = Notifier(path_listener.address)
    notifier.status("package refused:\nREADY=1")  # text from an error message must not inject a field
    assert path_listener.receive(2) == {"STATUS": "package refused: READY=1"}
    with pytest.raises(ValueError, match="field name"):
        notifier.send({"ready\nX": 1})
    notifier.close()


def test_outside_systemd_the_notifier_does_nothing() -> None:
    notifier = Notifier.from_environment({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled
    assert notifier.ready() is False and notifier.watchdog() is False
    assert Watchdog.requested(notifier, lambda: []) is None
    # A vsock address (systemd 254+) is not spoken: disabled rather than failing.
    assert not Notifier("vsock:2:1234").enabled


def test_a_vanished_socket_is_reported_not_raised(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "gone"))
    assert notifier.enabled
    assert notifier.watchdog() is False
    notifier.close()


def test_unset_keeps_child_processes_from_notifying(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "@medge-unset-test")
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = Notifier.from_environment(unset=True)
    assert notifier.enabled and notifier.watchdog_s == 1.0  # read before the variables went
    assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} & set(os.environ)
    assert Watchdog.requested(notifier, lambda: []) is not None


def test_the_watchdog_interval_is_for_this_process_only() -> None:
    pid = os.getpid()
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(pid)}) == 0.5
    assert watchdog_interval({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(pid + 1)}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({}) is None


# --- the watchdog: pings only while alive ------------------------------------------------------------------


def test_watchdog_pings_at_half_the_interval_while_alive(path_listener: NotifyListener) -> None:
    notifier = Notifier.from_environment(
        {"NOTIFY_SOCKET": path_listener.address, "WATCHDOG_USEC": str(int(INTERVAL_S * 1e6))}
    )
    assert Watchdog.requested(Notifier(path_listener.address), lambda: []) is None  # no WatchdogSec: no watchdog
    watchdog = Watchdog.requested(notifier, lambda: [])
    assert watchdog is not None and watchdog.period_s == pytest.approx(INTERVAL_S / 2)
    with watchdog:
        messages = path_listener.collect(2.0)
    assert 4 <= pings(messages) <= 9  # one at start, then every 0.3 s (7 on an idle machine)
    assert watchdog.pings == pings(messages)
    notifier.close()


def test_a_worker_that_hangs_stops_the_pings_and_they_resume_when_it_recovers(path_listener: NotifyListener) -> None:
    """A loop blocked on a lock is still an alive thread: only its missing progress gives the hang away."""
    progress = ProgressMonitor()
    progress.expect("worker", within_s=0.5)
    lock = threading.Lock()
    done = threading.Event()

    def worker() -> None:
        while not done.is_set():
            with lock:  # the "job": blocks for as long as someone else holds the lock
                progress.beat("worker")
            time.sleep(0.05)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    notifier = Notifier(path_listener.address)
    watchdog = Watchdog(notifier, INTERVAL_S, progress.problems)
    try:
        with watchdog:
            assert pings(path_listener.collect(1.0)) >= 3
            with lock:  # the worker hangs
                status = path_listener.wait_for("STATUS", timeout=3.0)
                assert status["STATUS"].startswith("not alive: worker made no progress")
                assert thread.is_alive()
                assert pings(path_listener.collect(1.5)) == 0  # systemd's interval passes twice: it would restart us
                assert watchdog.problems
            # Released before systemd acted: alive again, pings resume.
            resumed = path_listener.collect(1.5)
            assert {"STATUS": "alive again"} in resumed
            assert pings(resumed) >= 3
    finally:
        done.set()
        thread.join(5)
        notifier.close()


def test_a_failing_or_hanging_health_check_means_no_ping(path_listener: NotifyListener) -> None:
    def broken() -> list[str]:
        raise RuntimeError("queue database is locked")

    notifier = Notifier(path_listener.address)
    watchdog = Watchdog(notifier, INTERVAL_S, broken)
    assert watchdog.check() is False
    assert path_listener.receive(2) == {"STATUS": "not alive: liveness check failed: queue database is locked"}

    stuck = threading.Event()

    def never_returns() -> list[str]:
        stuck.wait()
        return []

    hanging = Watchdog(notifier, INTERVAL_S, never_returns)
    hanging.start()
    assert pings(path_listener.collect(1.0)) == 0  # the check never returns, so nothing is sent
    stuck.set()
    hanging.stop()
    notifier.close()


def _appliance_config(tmp_path: Path) -> ApplianceConfig:
    (tmp_path / "packages").mkdir()
    return ApplianceConfig(
        appliance={
            "site": "st-marys",
            "device": "ct-1",
            "demo": True,
            "data_dir": tmp_path / "data",
            "profile": "generic-x86_64-cpu",
        },
        dicom={"host": "127.0.0.1", "instance_timeout_s": 2.0},
        mqtt={"port": 1883},
        packages={"dir": tmp_path / "packages"},
    )


def test_the_appliance_liveness_drives_the_watchdog(path_listener: NotifyListener, tmp_path: Path) -> None:
    """A real appliance's threads: pings while they run; none once they have ended."""
    notifier = Notifier(path_listener.address)
    with Appliance(_appliance_config(tmp_path), trusted={}, dicom_port=0) as appliance:
        watchdog = Watchdog(notifier, INTERVAL_S, appliance._liveness)
        with watchdog:
            assert pings(path_listener.collect(1.0)) >= 3
            appliance._stop.set()  # the worker threads end, as after a crash of each
            appliance._work.set()
            status = path_listener.wait_for("STATUS", timeout=3.0)
            assert "is not running" in status["STATUS"]
            assert pings(path_listener.collect(1.5)) == 0
    notifier.close()


# --- the service under a notify socket ---------------------------------------------------------------------


def _serve_speaks_sd_notify() -> bool:
    source = Path(__file__).parents[2] / "sdk" / "cli" / "serve.py"
    return "sd_notify" in source.read_text()


@pytest.mark.skipif(not _serve_speaks_sd_notify(), reason="medge serve does not use runtime.sd_notify yet")
def test_medge_serve_reports_ready_pings_and_goes_silent_when_hung(
    path_listener: NotifyListener, tmp_path: Path
) -> None:
    """``medge serve`` as systemd starts it: READY, pings, none while the process is frozen, STOPPING."""
    (tmp_path / "packages").mkdir()
    config = tmp_path / "appliance.toml"
    config.write_text(
        f"""
[appliance]
site = "st-marys"
device = "ct-1"
demo = true
profile = "generic-x86_64-cpu"
data_dir = "{tmp_path / "data"}"

[dicom]
host = "127.0.0.1"
port = {free_port()}

[mqtt]
port = 1883

[packages]
dir = "{tmp_path / "packages"}"
trusted_keys_dir = "{tmp_path / "keys"}"
"""
    )
    env = {**os.environ, "NOTIFY_SOCKET": path_listener.address, "WATCHDOG_USEC": str(int(INTERVAL_S * 1e6))}
    env.pop("WATCHDOG_PID", None)
    medge = Path(sys.executable).with_name("medge")
    process = subprocess.Popen(
        [str(medge), "serve", "--config", str(config), "--health-port", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        path_listener.wait_for("READY", timeout=40.0)
        assert pings(path_listener.collect(1.5)) >= 3
        process.send_signal(signal.SIGSTOP)  # hung as a whole: nothing may be sent
        try:
            assert pings(path_listener.collect(1.5)) == 0
        finally:
            process.send_signal(signal.SIGCONT)
        assert pings(path_listener.collect(1.0)) >= 2
        process.send_signal(signal.SIGTERM)
        path_listener.wait_for("STOPPING", timeout=10.0)
        assert process.wait(timeout=40) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.stderr is not None
        process.stderr.close()


def test_progress_monitor_names_only_silent_loops() -> None:
    progress = ProgressMonitor()
    progress.expect("supervisor", within_s=0.2)
    progress.expect("decoder", within_s=60)
    assert progress.problems() == []
    time.sleep(0.3)
    progress.beat("decoder")
    [problem] = progress.problems()
    assert problem.startswith("supervisor made no progress for")
    progress.beat("supervisor")
    assert progress.problems() == []
    progress.forget("supervisor")
    with pytest.raises(KeyError, match="expect"):
        progress.beat("supervisor")
    with pytest.raises(ValueError):
        progress.expect("x", within_s=0)
