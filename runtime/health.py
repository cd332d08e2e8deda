"""``/healthz``, ``/readyz`` and ``/metrics`` on a local port, for systemd, load balancers and Prometheus.

``/healthz`` answers 200 while the service's threads are alive; ``/readyz``
answers 200 only when it can do its job (packages live, SCP listening) and
503 with the reasons otherwise; ``/metrics`` is the Prometheus text format.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ["HealthServer", "Probe"]

log = logging.getLogger(__name__)

Probe = Callable[[], list[str]]
"""Returns the problems found; an empty list means healthy (or ready)."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, object]:
        conn, address = super().get_request()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, address


class HealthServer:
    """A small HTTP server in a daemon thread.

    Args:
        host: the address to bind (loopback by default: health is local).
        port: 0 for any free port (see :attr:`port`).
        registry: the Prometheus registry to expose.
        liveness: problems that make ``/healthz`` fail.
        readiness: problems that make ``/readyz`` fail.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        liveness: Probe,
        readiness: Probe,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        probes = {"/healthz": liveness, "/readyz": readiness}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                    return
                probe = probes.get(path)
                if probe is None:
                    self._send(404, b'{"error": "not found"}\n', "application/json")
                    return
                try:
                    problems = probe()
                except Exception as exc:  # a failing probe is itself a problem to report, not a crash
                    problems = [f"probe failed: {exc}"]
                body = json.dumps({"ok": not problems, "problems": problems}).encode() + b"\n"
                self._send(200 if not problems else 503, body, "application/json")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("health: " + format, *args)

        self._server = _Server((host, port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="medge-health", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
