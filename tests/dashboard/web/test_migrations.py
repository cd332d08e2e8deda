"""Revisions 0002 (web), 0003 (enrollment, packages, rollouts), 0004 (patient ID) match the models, undo cleanly."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from dashboard.store import MIGRATIONS, Base, Store, create_store, migrate

WEB_TABLES = {"users", "web_sessions", "api_tokens", "login_throttle", "feedback", "audit_log"}
FLEET_TABLES = {"enrollment_tokens", "device_credentials", "packages", "rollouts", "rollout_steps"}


def test_the_migrations_build_exactly_the_models(store: Store) -> None:
    assert set(inspect(store.engine).get_table_names()) >= WEB_TABLES
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection)
        assert context.get_current_revision() == "0004"
        assert compare_metadata(context, Base.metadata) == []
    indexes = {index["name"] for index in inspect(store.engine).get_indexes("findings")}
    assert {"ix_findings_received_at", "ix_findings_state_changed_at", "ix_findings_state_score"} <= indexes


def test_0002_downgrades_to_0001_and_comes_back(store: Store, store_url: str) -> None:
    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    with store.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0001")
    tables = set(inspect(store.engine).get_table_names())
    assert not ((WEB_TABLES | FLEET_TABLES) & tables) and "findings" in tables
    migrate(store)
    with create_store(store_url) as again:
        assert set(inspect(again.engine).get_table_names()) >= WEB_TABLES


def test_0003_downgrades_to_0002_and_comes_back(store: Store, store_url: str) -> None:
    assert set(inspect(store.engine).get_table_names()) >= FLEET_TABLES
    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    with store.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0002")
    tables = set(inspect(store.engine).get_table_names())
    assert not (FLEET_TABLES & tables) and tables >= WEB_TABLES
    migrate(store)
    with create_store(store_url) as again, again.engine.connect() as connection:
        context = MigrationContext.configure(connection)
        assert context.get_current_revision() == "0004"
        assert compare_metadata(context, Base.metadata) == []


def test_0004_downgrades_to_0003_and_comes_back(store: Store, store_url: str) -> None:
    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    with store.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0003")
    assert "patient_id" not in {column["name"] for column in inspect(store.engine).get_columns("findings")}
    migrate(store)
    with create_store(store_url) as again:
        assert "patient_id" in {column["name"] for column in inspect(again.engine).get_columns("findings")}
