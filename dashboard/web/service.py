"""The whole dashboard in one process: the store, the MQTT ingest and the web server, started and stopped together.

``medge dashboard --config F`` is :meth:`DashboardService.run`; tests and
``make demo`` use :meth:`DashboardService.start` / :meth:`DashboardService.stop`.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

from dashboard.enrollment import BrokerRegistrar
from dashboard.ingest.service import IngestService
from dashboard.settings import DashboardConfig
from dashboard.store.engine import Store, create_store
from dashboard.web.app import create_app
from dashboard.web.server import DashboardServer

__all__ = ["DashboardService"]

logger = logging.getLogger(__name__)


def _noted(signum: int, _frame: FrameType | None) -> None:
    logger.info("stopped by signal %d", signum)


class DashboardService:
    """Store + ingest + web app + uvicorn, on the config's addresses.

    ``registrar`` adds enrolled devices to the broker (``medge dashboard``
    passes a ``firmware_integration.broker.registrar.FolderRegistrar`` when
    ``[enrollment] broker_dir`` is set); without it enrollment answers 503.

    The store is opened (and migrated) and the web socket bound when this
    object is made, so a bad URL or a busy port fails here, before anything
    runs; :attr:`url` is then known.

    Raises:
        StoreError: the store cannot be opened or migrated.
        ConfigError: the web address cannot be bound.
    """

    def __init__(
        self, config: DashboardConfig, *, ingest: bool = True, registrar: BrokerRegistrar | None = None
    ) -> None:
        self.config = config
        self.store: Store = create_store(config.store_url)
        try:
            self.ingest = IngestService(config, self.store) if ingest else None
            app = create_app(config, self.store, self.ingest, registrar=registrar)
            self.server = DashboardServer(app, config)
        except BaseException:
            self.store.close()
            raise

    @property
    def url(self) -> str:
        return self.server.url

    def start(self, timeout: float = 15.0) -> DashboardService:
        """Start the ingest (connecting in the background) and serve in a background thread."""
        if self.ingest is not None:
            self.ingest.start()
        try:
            self.server.start(timeout)
        except BaseException:
            self._stop_ingest()
            raise
        return self

    def run(self) -> None:
        """Start the ingest and serve in this thread until SIGTERM or SIGINT, then stop everything and return."""
        handled = (signal.SIGTERM, signal.SIGINT)
        main = threading.current_thread() is threading.main_thread()
        # uvicorn re-raises the signal that stopped it, under the handler it found: with the default one the
        # process would die before the ingest commits and acknowledges what it holds.
        previous = {sig: signal.signal(sig, _noted) for sig in handled} if main else {}
        if self.ingest is not None:
            self.ingest.start()
        try:
            self.server.run()
        finally:
            self._stop_ingest()
            self.store.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def stop(self) -> None:
        """Stop serving, then the ingest (it commits and acknowledges what it holds), then close the store."""
        self.server.stop()
        self._stop_ingest()
        self.store.close()

    def _stop_ingest(self) -> None:
        if self.ingest is not None:
            self.ingest.stop()

    def __enter__(self) -> DashboardService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
