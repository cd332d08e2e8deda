"""systemd's notify protocol, spoken by hand, and the watchdog that only pings while the service is alive.

Under ``Type=notify`` systemd passes a datagram socket in ``NOTIFY_SOCKET`` (a
path, or an abstract name written with a leading ``@``) and waits for
``READY=1`` before it calls the service started; with ``WatchdogSec=`` it
also passes ``WATCHDOG_USEC`` and restarts the service when no ``WATCHDOG=1``
arrives within that interval. The protocol is a few ``KEY=value`` lines per
datagram, so medge sends them itself instead of depending on systemd's
Python bindings (absent from most appliance images)::

    notifier = Notifier.from_environment(unset=True)   # a no-op outside systemd
    appliance.start()
    notifier.ready("serving")
    watchdog = Watchdog.requested(notifier, appliance_alive)   # None without WatchdogSec=
    if watchdog is not None:
        watchdog.start()
    ...
    notifier.stopping()
    if watchdog is not None:
        watchdog.stop()

A hung process must stop pinging, or systemd never learns it hung: the
:class:`Watchdog` pings only while its health callable reports no problems,
and :class:`ProgressMonitor` turns "this loop has not turned for too long"
into such a problem. Sending is best-effort, as in ``sd_notify(3)``: a lost
notification is logged, never raised into the service.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence

__all__ = ["HealthCheck", "Notifier", "ProgressMonitor", "Watchdog", "watchdog_interval"]

log = logging.getLogger(__name__)

HealthCheck = Callable[[], Sequence[str]]
"""Returns the problems found; an empty sequence means the service is alive (the shape of ``/healthz``)."""

_KEY = re.compile(r"^[A-Z][A-Z0-9_]*$")


def watchdog_interval(environ: Mapping[str, str] | None = None, *, pid: int | None = None) -> float | None:
    """The watchdog interval systemd asked for, in seconds, or None when there is none for this process.

    ``WATCHDOG_USEC`` is set by ``WatchdogSec=``; ``WATCHDOG_PID``, when set,
    names the process it is meant for (a child that inherited the
    environment must not think it is being watched).

    Args:
        environ: the environment to read (default: ``os.environ``).
        pid: this process's id (default: ``os.getpid()``).
    """
    env = os.environ if environ is None else environ
    raw = env.get("WATCHDOG_USEC", "").strip()
    if not raw:
        return None
    try:
        usec = int(raw)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not a number of microseconds", raw)
        return None
    if usec <= 0:
        return None
    owner = env.get("WATCHDOG_PID", "").strip()
    if owner:
        try:
            meant_for = int(owner)
        except ValueError:
            log.warning("ignoring the watchdog: WATCHDOG_PID=%r is not a process id", owner)
            return None
        if meant_for != (os.getpid() if pid is None else pid):
            return None
    return usec / 1e6


def _socket_address(value: str) -> str | None:
    """The ``AF_UNIX`` address of ``NOTIFY_SOCKET``, or None for a form medge does not speak (``vsock:``)."""
    if value.startswith("@"):
        return "\0" + value[1:]  # Linux abstract namespace
    if value.startswith("/"):
        return value
    return None


class Notifier:
    """Sends notifications to systemd; every method is a no-op (returning False) when not under systemd.

    Args:
        address: the ``NOTIFY_SOCKET`` value (a path or ``@abstract``); None disables the notifier.
        watchdog_s: the watchdog interval systemd asked for (``WATCHDOG_USEC``), if any.

    Each method returns whether the datagram was handed to the socket. A
    failure is logged (once per kind of error) and does not raise: a service
    must not stop because its supervisor went away.
    """

    def __init__(self, address: str | None, *, watchdog_s: float | None = None) -> None:
        self.address = address or None
        self.watchdog_s = watchdog_s
        self._target = _socket_address(address) if address else None
        if address and self._target is None:
            log.warning("NOTIFY_SOCKET=%r is not a path or an @abstract socket: not notifying systemd", address)
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._failures: set[int] = set()

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, *, unset: bool = False) -> Notifier:
        """The notifier systemd set up for this process (``NOTIFY_SOCKET``, ``WATCHDOG_USEC``), or a disabled one.

        Args:
            environ: the environment to read (default: ``os.environ``).
            unset: remove ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` from
                ``os.environ`` afterwards, so child processes do not notify on our behalf.
        """
        env = os.environ if environ is None else environ
        notifier = cls(env.get("NOTIFY_SOCKET"), watchdog_s=watchdog_interval(env))
        if unset:
            for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                os.environ.pop(name, None)
        return notifier

    @property
    def enabled(self) -> bool:
        """Whether there is a socket to notify (the process runs under ``Type=notify``)."""
        return self._target is not None

    def send(self, fields: Mapping[str, str | int]) -> bool:
        """Send one datagram of ``KEY=value`` lines.

        Raises:
            ValueError: a key is not an upper-case protocol name (a programming error).
        """
        for key in fields:
            if not _KEY.match(key):
                raise ValueError(f"not an sd_notify field name: {key!r}")
        if self._target is None:
            return False
        # A newline would start a new assignment: status texts come from error messages, so flatten them.
        payload = "\n".join(f"{key}={' '.join(str(value).splitlines())}" for key, value in fields.items())
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(payload.encode(), self._target)
            except OSError as exc:
                if exc.errno not in self._failures:
                    self._failures.add(exc.errno or 0)
                    log.warning("cannot notify systemd at %s: %s", self.address, exc)
                return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """The service is up and serving (``READY=1``); ``Type=notify`` start-up completes here."""
        fields: dict[str, str | int] = {"READY": 1}
        if status is not None:
            fields["STATUS"] = status
        return self.send(fields)

    def status(self, text: str) -> bool:
        """One line shown by ``systemctl status`` (``STATUS=``)."""
        return self.send({"STATUS": text})

    def watchdog(self) -> bool:
        """Tell systemd the service is alive (``WATCHDOG=1``); call it only when that is true."""
        return self.send({"WATCHDOG": 1})

    def stopping(self, status: str | None = None) -> bool:
        """The service is shutting down (``STOPPING=1``): systemd stops expecting watchdog pings."""
        fields: dict[str, str | int] = {"STOPPING": 1}
        if status is not None:
            fields["STATUS"] = status
        return self.send(fields)

    def reloading(self, status: str | None = None) -> bool:
        """The service is reloading its configuration (``RELOADING=1``); send :meth:`ready` when done.

        ``MONOTONIC_USEC`` goes with it, as ``Type=notify-reload`` requires.
        """
        fields: dict[str, str | int] = {
            "RELOADING": 1,
            "MONOTONIC_USEC": time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000,
        }
        if status is not None:
            fields["STATUS"] = status
        return self.send(fields)

    def mainpid(self, pid: int) -> bool:
        """Name the service's main process (``MAINPID=``), for a launcher that is not itself the service."""
        return self.send({"MAINPID": pid})

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more before start-up or stop times out (``EXTEND_TIMEOUT_USEC=``)."""
        return self.send({"EXTEND_TIMEOUT_USEC": max(1, round(seconds * 1e6))})

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


class ProgressMonitor:
    """Loops that must keep turning say so on each turn; one silent for longer than its allowance is a problem.

    A thread blocked forever on a lock or inside an engine is still "alive" to
    ``Thread.is_alive()``; only the absence of progress gives it away. Give
    :meth:`problems` (with the service's other liveness checks) to a
    :class:`Watchdog`::

        progress = ProgressMonitor()
        progress.expect("supervisor", within_s=5)
        # in the supervisor loop, every turn:
        progress.beat("supervisor")

    Thread-safe: beats come from the loops, :meth:`problems` from the watchdog thread.
    """

    def __init__(self) -> None:
        self._allowance: dict[str, float] = {}
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def expect(self, name: str, within_s: float) -> None:
        """Watch loop ``name``: it must beat at least every ``within_s`` seconds from now on."""
        if within_s <= 0:
            raise ValueError(f"within_s must be positive, not {within_s}")
        with self._lock:
            self._allowance[name] = within_s
            self._last[name] = time.monotonic()

    def beat(self, name: str) -> None:
        """Loop ``name`` made a turn.

        Raises:
            KeyError: ``name`` was never :meth:`expect`-ed (a wiring mistake).
        """
        with self._lock:
            if name not in self._allowance:
                raise KeyError(f"progress of {name!r} is not watched: call expect() first")
            self._last[name] = time.monotonic()

    def forget(self, name: str) -> None:
        """Stop watching loop ``name`` (it ended on purpose)."""
        with self._lock:
            self._allowance.pop(name, None)
            self._last.pop(name, None)

    def problems(self) -> list[str]:
        """One line per watched loop that has been silent longer than its allowance."""
        now = time.monotonic()
        with self._lock:
            late = [(name, now - self._last[name], limit) for name, limit in self._allowance.items()]
        return [
            f"{name} made no progress for {silent:.1f} s (allowed {limit:g} s)"
            for name, silent, limit in late
            if silent > limit
        ]


class Watchdog:
    """Pings ``WATCHDOG=1`` every half interval, but only while ``alive()`` reports no problems.

    When ``alive()`` reports problems (or raises, or never returns) the pings
    stop, ``STATUS=`` says why, and systemd restarts the service once
    ``WatchdogSec`` has passed without one. If the problems clear first, pings
    resume.

    Args:
        notifier: where pings go.
        interval_s: systemd's watchdog interval (``WATCHDOG_USEC``); pings go every half of it.
        alive: the service's liveness check (e.g. the appliance's thread checks plus
            :meth:`ProgressMonitor.problems`); it runs on the watchdog's thread.
    """

    def __init__(self, notifier: Notifier, interval_s: float, alive: HealthCheck) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, not {interval_s}")
        self.notifier = notifier
        self.interval_s = interval_s
        self.period_s = interval_s / 2
        self._alive = alive
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.pings = 0
        self.problems: list[str] = []

    @classmethod
    def requested(cls, notifier: Notifier, alive: HealthCheck) -> Watchdog | None:
        """A watchdog for the interval systemd asked ``notifier``'s process for, or None when it asked for none."""
        if notifier.watchdog_s is None or not notifier.enabled:
            return None
        return cls(notifier, notifier.watchdog_s, alive)

    def check(self) -> bool:
        """Run the health check once and ping if alive; return whether it pinged."""
        try:
            problems = list(self._alive())
        except Exception as exc:  # a health check that fails cannot vouch for the service
            log.exception("the liveness check failed")
            problems = [f"liveness check failed: {exc}"]
        was_alive = not self.problems
        self.problems = problems
        if problems:
            if was_alive:
                log.error("not alive, withholding watchdog pings: %s", "; ".join(problems))
                self.notifier.status(f"not alive: {'; '.join(problems)}")
            return False
        if not was_alive:
            log.warning("alive again, watchdog pings resume")
            self.notifier.status("alive again")
        if self.notifier.watchdog():
            self.pings += 1
        return True

    def _run(self) -> None:
        while True:
            self.check()
            if self._stop.wait(self.period_s):
                return

    def start(self) -> None:
        """Ping from a daemon thread (the first check runs at once)."""
        if self._thread is not None:
            raise RuntimeError("the watchdog is running already")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="medge-sd-watchdog", daemon=True)
        self._thread.start()
        log.info("systemd watchdog: %.1f s interval, pinging every %.1f s while alive", self.interval_s, self.period_s)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop pinging (send ``STOPPING=1`` first, or systemd may restart a service that is only stopping)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> Watchdog:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
