"""Fixtures of the web tests: the store on SQLite and on a real PostgreSQL, and a running dashboard.

``store`` is parametrized over both databases; PostgreSQL comes from Debian's
package, started once per test session (skipped only when
``/usr/lib/postgresql`` is absent). ``site`` serves the real app with uvicorn
on a free loopback port and talks to it over HTTP with httpx.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from dashboard.auth.passwords import hash_password
from dashboard.ingest import BatchWriter, InboundMessage
from dashboard.settings import DashboardConfig
from dashboard.store import Finding, Role, Store, User, WebSession, create_store
from dashboard.web import SESSION_COOKIE, DashboardServer, create_app
from sdk.messages import Event, Heartbeat, Status
from sdk.messages import Finding as FindingMessage
from sdk.topics import TopicKind, topic
from tests.dashboard.conftest import make_finding
from tests.dashboard.web.postgres import POSTGRES_ROOT, PostgresServer, find_postgres_bin, running_postgres

PASSWORD = "correct horse battery staple"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Marked here, not in the params: this conftest's marker is registered only once it is imported.
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("store_url") == "postgresql":
            item.add_marker("postgresql")


@cache
def password_hash() -> str:
    """One scrypt hash of PASSWORD for every test user (each hash costs ~0.3 s)."""
    return hash_password(PASSWORD)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    bin_dir = find_postgres_bin()
    if not POSTGRES_ROOT.exists() or bin_dir is None:
        pytest.skip("PostgreSQL is not installed (/usr/lib/postgresql is absent)")
    with running_postgres(bin_dir) as server:
        yield server


def _store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store' / 'dashboard.sqlite'}"
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    name = server.create_database()
    yield server.url(name)
    server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database URL, on SQLite and on PostgreSQL."""
    yield from _store_url(request, tmp_path)


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    with create_store(store_url) as opened:
        yield opened


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    """For tests whose subject is not the database."""
    with create_store(f"sqlite:///{tmp_path / 'store' / 'dashboard.sqlite'}") as opened:
        yield opened


def web_config(tmp_path: Path, store: Store, **web: Any) -> DashboardConfig:
    settings: dict[str, Any] = {"port": 0}
    settings.update(web)
    return DashboardConfig(
        data_dir=tmp_path / "data",
        demo=True,
        store={"url": store.engine.url.render_as_string(hide_password=False)},  # type: ignore[arg-type]
        mqtt={"port": 1},  # type: ignore[arg-type]
        web=settings,  # type: ignore[arg-type]
    )


@dataclass(frozen=True)
class TestUser:
    __test__ = False  # not a test class

    id: int
    username: str
    role: Role


def insert_user(store: Store, role: Role | str, username: str) -> TestUser:
    """Insert a user whose password is PASSWORD (the hash is computed once per test session)."""
    now = datetime.now(UTC)
    with store.write() as session:
        user = User(
            username=username.lower(),  # as create_user stores it
            role=Role(role),
            password_hash=password_hash(),
            disabled=False,
            created_at=now,
            created_by=None,
            password_changed_at=now,
        )
        session.add(user)
        session.flush()
        return TestUser(user.id, user.username, user.role)


class Browserless(httpx.Client):
    """An httpx client holding a session, with the CSRF token its pages carry."""

    csrf: str = ""

    def post_form(self, url: str, data: dict[str, str] | None = None, **kwargs: Any) -> httpx.Response:
        """POST a form with the session's CSRF token, as the page's own form would."""
        return self.post(url, data={"csrf_token": self.csrf, **(data or {})}, **kwargs)


class Site:
    """A running dashboard (real uvicorn on loopback) over one store, and ways to be its users."""

    def __init__(self, config: DashboardConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self.app = create_app(config, store)
        self.server = DashboardServer(self.app, config).start()
        self.url = self.server.url
        self._clients: list[httpx.Client] = []
        self._users = 0
        self._seq = -1

    def close(self) -> None:
        for client in self._clients:
            client.close()
        self.server.stop()

    # Users ---------------------------------------------------------------------------------------

    def add_user(self, role: Role | str, username: str | None = None) -> TestUser:
        """A user with PASSWORD, inserted directly (creating one through the UI is tested on its own)."""
        self._users += 1
        return insert_user(self.store, role, username or f"{Role(role).value}{self._users}-{secrets.token_hex(3)}")

    def client(self, **kwargs: Any) -> Browserless:
        client = Browserless(base_url=self.url, follow_redirects=False, timeout=15, **kwargs)
        self._clients.append(client)
        return client

    def session_of(self, user: TestUser) -> Browserless:
        """A client with a session opened directly in the store (skips the slow password check)."""
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        with self.store.write() as session:
            session.add(
                WebSession(
                    token_hash=hashlib.sha256(token.encode()).hexdigest(),  # the store keeps only this
                    user_id=user.id,
                    csrf_token=csrf,
                    created_at=now,
                    last_seen_at=now,
                    expires_at=now + timedelta(hours=1),
                    client_ip="127.0.0.1",
                    user_agent="tests",
                )
            )
        client = self.client()
        client.cookies.set(SESSION_COOKIE, token)
        client.csrf = csrf
        return client

    def as_role(self, role: Role | str) -> Browserless:
        return self.session_of(self.add_user(role))

    def login(self, username: str, password: str = PASSWORD, client: Browserless | None = None) -> httpx.Response:
        """Log in through the real form (login page, its CSRF cookie, the POST)."""
        client = client or self.client()
        page = client.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token is not None, page.text
        return client.post(
            "/login", data={"username": username, "password": password, "csrf_token": token.group(1), "next": "/"}
        )

    # Data ----------------------------------------------------------------------------------------

    def publish(self, *messages: FindingMessage | Event | Heartbeat | Status) -> None:
        """Commit messages through the real ingest writer, as if they came over MQTT."""
        kinds = {FindingMessage: TopicKind.FINDING, Event: TopicKind.EVENT, Heartbeat: TopicKind.HEARTBEAT}
        inbound = [
            InboundMessage(topic(m.site, m.device, kinds.get(type(m), TopicKind.STATUS)), m.to_json()) for m in messages
        ]
        BatchWriter(self.store).write(inbound)

    def publish_one(self, **changes: Any) -> int:
        """Publish one finding (fields overridable); returns its row id."""
        self._seq += 1
        message = make_finding(seq=changes.pop("seq", self._seq), **changes)
        self.publish(message)
        return self.finding_id(message)

    def finding_id(self, message: FindingMessage) -> int:
        with self.store.session() as session:
            found = session.scalar(select(Finding.id).where(Finding.message_id == message.id))
        assert found is not None
        return found


@pytest.fixture
def site_factory(tmp_path: Path) -> Iterator[Callable[..., Site]]:
    sites: list[Site] = []

    def build(store: Store, **web: Any) -> Site:
        site = Site(web_config(tmp_path, store, **web), store)
        sites.append(site)
        return site

    yield build
    for site in sites:
        site.close()


@pytest.fixture
def site(site_factory: Callable[..., Site], store: Store) -> Site:
    """The dashboard over SQLite and over PostgreSQL."""
    return site_factory(store)


@pytest.fixture
def sqlite_site(site_factory: Callable[..., Site], sqlite_store: Store) -> Site:
    """The dashboard over SQLite only (for tests about the web layer, not the database)."""
    return site_factory(sqlite_store)


@pytest.fixture
def browser() -> Iterator[object]:
    """Debian's headless Chromium through Playwright (no browser download: ``executable_path``)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--headless"])
        yield launched
        launched.close()
