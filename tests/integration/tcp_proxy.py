"""A loopback TCP proxy that can cut the network the way a pulled cable does.

The integration tests put it between the appliance's reporter and Mosquitto.
A pulled cable (or a dead switch port) closes nothing: both ends keep their
connection and simply stop hearing from each other, which only keep-alives
reveal. Closing the proxy's sockets instead would hand both ends an
immediate FIN and test something easier. So:

- :meth:`TcpProxy.cut` stops forwarding bytes in both directions on every
  open connection without closing it (the bytes stay unread in the kernel
  buffers), and new connections are accepted and then ignored (black-holed:
  the TCP handshake completes, the CONNECT goes nowhere).
- :meth:`TcpProxy.restore` forwards new connections again. The connections
  the cut froze are closed then: by the time the network is back both ends
  have given up on them, and the first byte through would be answered with
  a reset.

Threads only (one accept loop, two pumps per connection): no event loop is
shared with the code under test.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
from dataclasses import dataclass, field

__all__ = ["TcpProxy"]

log = logging.getLogger(__name__)

_POLL_S = 0.05  # how often idle threads look at the cut and stop flags
_CHUNK = 65536


def _nodelay(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@dataclass(eq=False)
class _Link:
    """One proxied connection: the client's socket, the upstream socket and their pumps."""

    downstream: socket.socket
    upstream: socket.socket
    # Held while a pump reads and forwards one chunk, so that no byte crosses once cut() has returned.
    lock: threading.Lock = field(default_factory=threading.Lock)
    frozen: bool = False
    closed: bool = False
    pumps: list[threading.Thread] = field(default_factory=list)

    def close(self) -> None:
        with self.lock:
            self.closed = True
        for sock in (self.downstream, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class TcpProxy:
    """Forwards ``127.0.0.1:port`` to ``upstream_host:upstream_port`` until cut.

    Args:
        upstream_port: the port to forward to (Mosquitto's).
        upstream_host: the host to forward to.

    Use as a context manager, or :meth:`start` and :meth:`close`.
    """

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        self._held: list[socket.socket] = []  # black-holed while cut
        self._cut = False
        self._stopping = threading.Event()
        self._acceptor = threading.Thread(target=self._accept_loop, name="tcp-proxy-accept", daemon=True)

    @property
    def is_cut(self) -> bool:
        """Whether the network is cut right now."""
        return self._cut

    def start(self) -> TcpProxy:
        """Start accepting connections."""
        self._acceptor.start()
        return self

    def cut(self) -> None:
        """Stop forwarding on every connection (none is closed) and black-hole new ones; effective on return."""
        with self._lock:
            self._cut = True
            links = list(self._links)
        for link in links:
            with link.lock:
                link.frozen = True
        log.info("network cut: %d connection(s) frozen", len(links))

    def restore(self) -> None:
        """Forward new connections again; close the ones frozen or held by the cut (both ends gave up on them)."""
        with self._lock:
            self._cut = False
            frozen = [link for link in self._links if link.frozen]
            self._links = [link for link in self._links if not link.frozen]
            held, self._held = self._held, []
        for link in frozen:
            link.close()
        for sock in held:
            sock.close()
        log.info("network restored: %d frozen and %d black-holed connection(s) closed", len(frozen), len(held))

    def close(self) -> None:
        """Stop accepting and close every connection."""
        self._stopping.set()
        if self._acceptor.is_alive():
            self._acceptor.join(timeout=5)
        self._listener.close()
        with self._lock:
            links, self._links = self._links, []
            held, self._held = self._held, []
        for link in links:
            link.close()
        for sock in held:
            sock.close()
        for link in links:
            for pump in link.pumps:
                pump.join(timeout=5)

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- threads -----------------------------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            ready, _, _ = select.select([self._listener], [], [], _POLL_S)
            if not ready:
                continue
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                continue
            _nodelay(downstream)
            with self._lock:
                if self._cut:
                    self._held.append(downstream)
                    continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError as exc:  # the broker is down: the client sees its connection refused-like close
                log.info("upstream %s:%d unreachable: %s", *self.upstream, exc)
                downstream.close()
                continue
            upstream.settimeout(None)
            _nodelay(upstream)
            link = _Link(downstream, upstream)
            with self._lock:
                self._links.append(link)
            for source, target, name in ((downstream, upstream, "up"), (upstream, downstream, "down")):
                pump = threading.Thread(
                    target=self._pump, args=(link, source, target), name=f"tcp-proxy-{name}", daemon=True
                )
                link.pumps.append(pump)
                pump.start()

    def _pump(self, link: _Link, source: socket.socket, target: socket.socket) -> None:
        while not self._stopping.is_set():
            if link.frozen:
                if link.closed:
                    return
                self._stopping.wait(_POLL_S)
                continue
            try:
                readable, _, _ = select.select([source], [], [], _POLL_S)
            except (OSError, ValueError):  # closed under us
                return
            if not readable:
                continue
            with link.lock:
                if link.closed:
                    return
                if link.frozen:
                    continue  # cut between the select and the lock: leave the bytes unread
                try:
                    data = source.recv(_CHUNK)
                    if data:
                        target.sendall(data)
                except OSError:
                    data = b""
            if not data:  # one end closed: close the other, as a router between them would pass it on
                with self._lock:
                    if link in self._links:
                        self._links.remove(link)
                link.close()
                return
