"""A ``medge`` command (``serve``, ``dashboard``) as a child process, for tests, benchmarks and chaos runs.

Started as systemd would start it (its own interpreter, output appended to a
log file), waited for through its HTTP health endpoint, stopped with a signal
(SIGTERM for a clean stop, SIGKILL for a power cut) and started again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["MedgeProcess"]


class MedgeProcess:
    """``python -m sdk.cli.main ARGS`` in a child process; restartable.

    Args:
        args: the ``medge`` arguments, e.g. ``["serve", "--config", "appliance.toml"]``.
        log: the file its stdout and stderr are appended to (kept across restarts).
        cwd: its working folder.
        env: extra environment variables.
    """

    def __init__(
        self, args: Sequence[str], log: Path, *, cwd: Path | None = None, env: Mapping[str, str] | None = None
    ) -> None:
        self.args = [str(arg) for arg in args]
        self.log = log
        self.cwd = cwd
        self.env = {**os.environ, "COLUMNS": "200", **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(self) -> MedgeProcess:
        """Start it (not waiting for it to be ready)."""
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "sdk.cli.main", *self.args],
                cwd=self.cwd,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        return self

    def wait_http(self, url: str, timeout: float = 60.0) -> None:
        """Until ``url`` answers 200 (e.g. ``/readyz``, ``/healthz``).

        Raises:
            RuntimeError: it ended or did not answer in time (with the end of its log).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.running:
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        state = "ended" if not self.running else f"did not answer {url} within {timeout:g} s"
        raise RuntimeError(f"medge {self.args[0]} {state}:\n{self.log_tail()}")

    def signal(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 60.0) -> int | None:
        """Send ``sig`` and wait for the end (SIGKILL after ``timeout``); return its exit code."""
        process, self.process = self.process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def log_tail(self, characters: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-characters:] if self.log.exists() else ""
