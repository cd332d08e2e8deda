"""Opening the store: engine, sessions and schema migrations.

:func:`create_store` is the one way in: it connects, applies the Alembic
migrations shipped in this package (``alembic upgrade head``) and returns a
:class:`Store` holding the engine and a session factory.

SQLite is tuned for a durable single-file store that several processes share:
WAL (readers never block the writer), ``synchronous=FULL`` (a committed
transaction survives a power cut), foreign keys on, and a busy timeout so a
second writer waits instead of failing. Write transactions start with
``BEGIN IMMEDIATE``: a transaction that reads first and writes later would
otherwise fail with "database is locked" when another process committed in
between, busy timeout or not.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Connection, Engine, create_engine, event, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dashboard.store.models import DeadLetterCount, DeadLetterReason, Device, SequenceGap
from sdk.errors import MedgeError

__all__ = ["MIGRATIONS", "Store", "StoreError", "create_store"]

logger = logging.getLogger(__name__)

MIGRATIONS = "dashboard.store:migrations"
"""Alembic ``script_location`` of the shipped migrations (a package resource)."""

_BUSY_TIMEOUT_S = 30.0
_WRITE = "medge_write"


class StoreError(MedgeError):
    """The store cannot be opened or migrated (bad URL, unreachable database, failed migration)."""


class Store:
    """The dashboard's database: an engine and its sessions.

    Use :meth:`session` to read and :meth:`write` for a transaction that
    writes (committed on leaving the block, rolled back on an exception).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessions: sessionmaker[Session] = sessionmaker(engine, expire_on_commit=False)
        self._writer = engine.execution_options(**{_WRITE: True})
        self._write_sessions: sessionmaker[Session] = sessionmaker(self._writer, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    def session(self) -> Session:
        """A session for reading (and ad-hoc writes by its owner)."""
        return self.sessions()

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction that takes the write lock up front on SQLite; commits on success."""
        with self._write_sessions() as session, session.begin():
            yield session

    def sequence_gaps(self, site: str, device: str) -> list[tuple[int, int]]:
        """The runs of sequence numbers of one device not received, as ``(first, last)`` in order."""
        with self.session() as session:
            rows = session.execute(
                select(SequenceGap.first_seq, SequenceGap.last_seq)
                .join(Device, Device.id == SequenceGap.device_id)
                .where(Device.site == site, Device.device == device)
                .order_by(SequenceGap.first_seq)
            )
            return [(first, last) for first, last in rows]

    def dead_letter_counts(self) -> dict[DeadLetterReason, int]:
        """How many messages were dead-lettered, by reason."""
        with self.session() as session:
            rows = session.execute(select(DeadLetterCount.reason, DeadLetterCount.count))
            return {reason: count for reason, count in rows}

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _use_wal(cursor: Any) -> None:
    """Switch the file to WAL; retried, because a journal-mode change does not wait on the busy timeout.

    Several processes opening a new store at once all try to switch it; the
    losers get "database is locked" at once instead of waiting.
    """
    deadline = time.monotonic() + _BUSY_TIMEOUT_S
    while True:
        try:
            if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
                return
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the sqlite3 module, so BEGIN is ours (see _on_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(_BUSY_TIMEOUT_S * 1000)}")
        _use_wal(cursor)
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        immediate = connection.get_execution_options().get(_WRITE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _engine(url: str, *, echo: bool) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StoreError(f"not a database URL: {url!r}", field="store.url") from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, echo=echo, connect_args={"timeout": _BUSY_TIMEOUT_S})
        _sqlite_setup(engine)
        return engine
    if backend == "postgresql":
        return create_engine(parsed, echo=echo, pool_pre_ping=True)
    raise StoreError(f"database {backend!r} is not supported (use sqlite or postgresql)", field="store.url")


def migrate(store: Store, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (Alembic ``upgrade``), safe when several processes start at once.

    Raises:
        StoreError: the database is unreachable or a migration failed.
    """
    config = AlembicConfig()
    config.set_main_option("script_location", MIGRATIONS)
    try:
        with store._writer.begin() as connection:
            # One migrator at a time: SQLite's BEGIN IMMEDIATE already holds the write lock,
            # PostgreSQL takes a transaction-scoped advisory lock.
            if store.dialect == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(7213004)"))
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot migrate the store to {revision}: {exc}") from exc


def create_store(url: str, *, migrate_schema: bool = True, echo: bool = False) -> Store:
    """Open the store at ``url`` and apply the shipped migrations.

    Args:
        url: a SQLAlchemy URL, ``sqlite:///path`` or ``postgresql[+driver]://...``;
            a SQLite file's folder is created.
        migrate_schema: apply ``alembic upgrade head`` (off only for tools that
            inspect an old database as it is).
        echo: log every SQL statement (debugging).

    Raises:
        StoreError: bad URL, unsupported database, unreachable, or a failed migration.
    """
    store = Store(_engine(url, echo=echo))
    if migrate_schema:
        try:
            migrate(store)
        except StoreError:
            store.close()
            raise
    logger.info("store ready at %s", make_url(url).render_as_string(hide_password=True))
    return store
