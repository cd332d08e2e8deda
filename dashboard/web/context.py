"""What every route of one app shares: config, store, ingest, authenticator, live feed, templates."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TypeVar

from sqlalchemy import select

from dashboard.auth.sessions import Authenticator, SessionPolicy
from dashboard.auth.throttle import ThrottlePolicy
from dashboard.enrollment import BrokerRegistrar
from dashboard.ingest.service import IngestService
from dashboard.settings import DashboardConfig
from dashboard.store.engine import Store
from dashboard.store.models import Device, Finding
from dashboard.web.live import LiveFeed
from dashboard.web.rendering import Renderer

__all__ = ["FilterOptions", "WebContext"]

T = TypeVar("T")

_OPTIONS_TTL_S = 60.0


@dataclass(frozen=True)
class FilterOptions:
    """The values the worklist's filter menus offer."""

    sites: list[str]
    devices: list[tuple[str, str]]
    modalities: list[str]
    labels: list[str]


class _Cached:
    """One value recomputed at most every ``ttl`` seconds (distinct labels over 100k rows are not free)."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._value: object = None
        self._at = float("-inf")

    def get(self, compute: Callable[[], T]) -> T:
        with self._lock:
            if time.monotonic() - self._at > self.ttl:
                self._value, self._at = compute(), time.monotonic()
            return self._value  # type: ignore[return-value]


@dataclass
class WebContext:
    """The app's shared state (``app.state.medge``); routes reach it through ``ContextDep``."""

    config: DashboardConfig
    store: Store
    ingest: IngestService | None
    auth: Authenticator
    live: LiveFeed
    renderer: Renderer
    registrar: BrokerRegistrar | None = None
    started: float = field(default_factory=time.time)
    _options: _Cached = field(default_factory=lambda: _Cached(_OPTIONS_TTL_S))

    @classmethod
    def build(
        cls,
        config: DashboardConfig,
        store: Store,
        ingest: IngestService | None,
        registrar: BrokerRegistrar | None = None,
    ) -> WebContext:
        web = config.web
        auth = Authenticator(
            store,
            throttle=ThrottlePolicy(web.login_max_failures, web.login_window_s, web.login_lockout_s),
            sessions=SessionPolicy(
                idle=timedelta(minutes=web.session_idle_minutes), max_age=timedelta(hours=web.session_max_hours)
            ),
        )
        live = LiveFeed(store, poll_s=web.live_poll_ms / 1000.0, silent_after_s=config.fleet.silent_after_s)
        return cls(config, store, ingest, auth, live, Renderer(config), registrar)

    def filter_options(self) -> FilterOptions:
        """Sites and devices from the device registry; modalities and labels seen (refreshed every minute)."""

        def compute() -> tuple[list[str], list[str]]:
            with self.store.session() as session:
                modalities = sorted(session.scalars(select(Finding.modality).distinct()))
                labels = sorted(session.scalars(select(Finding.label).distinct()))
            return modalities, labels

        modalities, labels = self._options.get(compute)
        with self.store.session() as session:
            devices = [(row.site, row.device) for row in session.execute(select(Device.site, Device.device))]
        devices.sort()
        return FilterOptions(sorted({site for site, _ in devices}), devices, modalities, labels)
