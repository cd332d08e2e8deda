"""Opening the store (dashboard/store/engine.py): migrations on an empty SQLite, settings, refusals."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import IntegrityError, StatementError

from dashboard.store import MIGRATIONS, Base, Device, DeviceState, Store, StoreError, create_store

TABLES = {
    "users",
    "web_sessions",
    "api_tokens",
    "login_throttle",
    "feedback",
    "audit_log",
    "devices",
    "sequence_gaps",
    "findings",
    "events",
    "heartbeats",
    "command_results",
    "dead_letters",
    "dead_letter_counts",
    "enrollment_tokens",
    "device_credentials",
    "packages",
    "rollouts",
    "rollout_steps",
}


def _alembic() -> Config:
    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    return config


def _url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'sub' / 'store.sqlite'}"


def test_migrations_build_the_schema_on_an_empty_sqlite(tmp_path: Path) -> None:
    with create_store(_url(tmp_path)) as store:
        assert (tmp_path / "sub" / "store.sqlite").is_file(), "the folder is created"
        assert set(inspect(store.engine).get_table_names()) == TABLES | {"alembic_version"}
        with store.engine.connect() as connection:
            head = ScriptDirectory.from_config(_alembic()).get_current_head()
            assert MigrationContext.configure(connection).get_current_revision() == head
            # The models and the migrations describe the same schema.
            assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


def test_reopening_keeps_the_data_and_migrates_nothing(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    with create_store(_url(tmp_path)) as store, store.write() as session:
        session.add(Device(site="a", device="b", first_seen=now, last_seen=now))
    with create_store(_url(tmp_path)) as store, store.session() as session:
        device = session.scalars(select(Device)).one()
        assert device.state == DeviceState.UNKNOWN
        assert device.first_seen == now, "times come back aware and equal"


def test_processes_starting_together_migrate_once(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    stores: list[Store] = []

    def open_store() -> None:
        try:
            stores.append(create_store(_url(tmp_path)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for store in stores:
        store.close()
    assert errors == []
    assert len(stores) == 4


def test_the_migration_downgrades_and_upgrades_again(tmp_path: Path) -> None:
    with create_store(_url(tmp_path)) as store:
        config = _alembic()
        with store.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "base")
        assert set(inspect(store.engine).get_table_names()) == {"alembic_version"}
    with create_store(_url(tmp_path)) as store:
        assert set(inspect(store.engine).get_table_names()) >= TABLES


def test_foreign_keys_are_enforced(tmp_path: Path) -> None:
    with (
        create_store(_url(tmp_path)) as store,
        pytest.raises(IntegrityError, match="FOREIGN KEY"),
        store.write() as session,
    ):
        session.execute(
            text(
                "INSERT INTO sequence_gaps (device_id, first_seq, last_seq, detected_at)"
                " VALUES (999, 1, 2, '2026-01-01 00:00:00')"
            )
        )


def test_naive_times_are_refused(tmp_path: Path) -> None:
    with (
        create_store(_url(tmp_path)) as store,
        pytest.raises(StatementError, match="timezone-aware"),
        store.write() as session,
    ):
        naive = datetime(2026, 1, 1)
        session.add(Device(site="a", device="b", first_seen=naive, last_seen=naive))


@pytest.mark.parametrize(
    ("url", "message"),
    [("mysql://u@h/db", "not supported"), ("::nonsense::", "not a database URL")],
)
def test_bad_urls_are_store_errors(url: str, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        create_store(url)
