"""A real Mosquitto broker on loopback: a free port, its own config and persistence, stop/kill/restart.

Tests, benchmarks and ``make demo`` start one of these (``/usr/sbin/mosquitto``,
installed by the make targets) instead of mocking the broker: the broker's
persistence, session and retained-message behaviour are part of what is tested.
Production brokers are configured by :mod:`firmware_integration.broker`.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

__all__ = ["MOSQUITTO", "MosquittoBroker", "free_port"]

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MosquittoBroker:
    """One Mosquitto process listening on ``127.0.0.1:port``.

    Args:
        work_dir: holds the config, the log and the persistence file.
        extra_config: lines appended to the config (listeners, auth, ACLs).
            Without them the broker allows anonymous clients on one plain
            listener, which is what most tests need.
        port: the listener's port (default: a free one, kept across restarts).
        persistence: keep sessions and queued messages in ``work_dir`` across restarts.
    """

    def __init__(
        self,
        work_dir: Path,
        *,
        extra_config: str = "",
        port: int | None = None,
        persistence: bool = True,
    ) -> None:
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.log_file = self.work_dir / "mosquitto.log"
        self.config_file = self.work_dir / "mosquitto.conf"
        lines = [
            # As root Mosquitto drops to the "mosquitto" user, which cannot write into the test's private
            # folders: it would then silently run without its log and its persistence file.
            f"user {getpass.getuser()}",
            "per_listener_settings false",
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {self.work_dir}/",
            f"log_dest file {self.log_file}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "max_queued_messages 0",
            "max_inflight_messages 100",  # as the shipped config (firmware_integration.broker): the Receive Maximum
        ]
        if "listener" not in extra_config:
            lines += [f"listener {self.port} 127.0.0.1", "allow_anonymous true"]
        self.config_file.write_text("\n".join(lines) + "\n" + extra_config + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> MosquittoBroker:
        """Start the broker and wait until its port takes connections."""
        if not os.path.exists(MOSQUITTO):
            raise RuntimeError(f"{MOSQUITTO} is missing: run `make test` (it installs mosquitto)")
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config_file)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                log = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
                code = self.process.returncode
                self._end(signal.SIGKILL)  # closes the pipe
                raise RuntimeError(f"mosquitto exited with {code}: {err}{log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within {timeout} s")

    def stop(self) -> None:
        """Stop gracefully (SIGTERM: the broker writes its persistence file)."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """Stop like a power cut (SIGKILL: whatever was only in memory is gone)."""
        self._end(signal.SIGKILL)

    def restart(self, *, hard: bool = False) -> None:
        """Stop (killed if ``hard``) and start again on the same port with the same persistence."""
        self.kill() if hard else self.stop()
        self.start()

    def _end(self, sig: signal.Signals) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
