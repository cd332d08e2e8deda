"""Serving the app with uvicorn: in the foreground for ``medge dashboard``, in a thread for tests and demos."""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI

from dashboard.settings import DashboardConfig
from dashboard.web.context import WebContext
from sdk.errors import ConfigError

__all__ = ["DashboardServer"]

logger = logging.getLogger(__name__)

_GRACEFUL_S = 3


class _Server(uvicorn.Server):
    """uvicorn, ending the live streams first: they never finish by themselves and would hold up the shutdown."""

    def __init__(self, config: uvicorn.Config, context: WebContext) -> None:
        super().__init__(config)
        self._context = context

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._context.live.close_streams()
        await super().shutdown(sockets)


class DashboardServer:
    """The web app on uvicorn, on ``web.host``/``web.port`` of the config (port 0: a free one).

    The socket is bound when this object is made, so :attr:`url` is known
    before serving starts. :meth:`run` serves in the calling thread until
    SIGTERM/SIGINT (the ``medge dashboard`` command); :meth:`start` serves in a
    background thread until :meth:`stop` (tests, benchmarks, the demo).

    Args:
        app: from :func:`dashboard.web.create_app`.
        config: the dashboard config (``web`` section: address, TLS, trusted proxies).

    Raises:
        ConfigError: the address cannot be bound (in use, not this machine's, a privileged port).
    """

    def __init__(self, app: FastAPI, config: DashboardConfig) -> None:
        web = config.web
        self.app = app
        self.config = config
        family = socket.AF_INET6 if ":" in web.host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.socket.bind((web.host, web.port))
        except OSError as exc:
            self.socket.close()
            raise ConfigError(f"cannot listen on {web.host}:{web.port}: {exc.strerror or exc}", field="web") from exc
        self.socket.set_inheritable(True)
        self.port: int = self.socket.getsockname()[1]
        uvicorn_config = uvicorn.Config(
            app,
            log_config=None,  # the CLI or the host application configures logging
            access_log=False,
            proxy_headers=bool(web.trusted_proxies),
            forwarded_allow_ips=web.trusted_proxies or None,
            ssl_certfile=None if web.tls_cert_file is None else str(web.tls_cert_file),
            ssl_keyfile=None if web.tls_key_file is None else str(web.tls_key_file),
            timeout_graceful_shutdown=_GRACEFUL_S,
            server_header=False,
            lifespan="on",
        )
        self._server = _Server(uvicorn_config, app.state.medge)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Where a browser on this machine reaches it."""
        web = self.config.web
        scheme = "https" if web.uses_tls else "http"
        host = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(web.host, web.host)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.port}"

    def run(self) -> None:
        """Serve in this thread until SIGTERM or SIGINT."""
        logger.info("dashboard serving on %s", self.url)
        self._server.run(sockets=[self.socket])

    def start(self, timeout: float = 15.0) -> DashboardServer:
        """Serve in a background thread; returns once it accepts connections.

        Raises:
            RuntimeError: it did not start within ``timeout`` seconds.
        """
        self._thread = threading.Thread(target=self.run, name="medge-dashboard-web", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the dashboard did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving (open live streams are ended) and wait for the thread."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.socket.close()

    def __enter__(self) -> DashboardServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
