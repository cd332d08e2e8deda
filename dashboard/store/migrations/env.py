"""Alembic environment: run the migrations on the connection :func:`dashboard.store.engine.migrate` hands over.

Also usable with the ``alembic`` command for writing new revisions: set
``sqlalchemy.url`` in an ``alembic.ini`` whose ``script_location`` is
``dashboard.store:migrations``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from dashboard.store.models import Base


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=True,  # SQLite cannot ALTER most things: rebuild tables instead
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no connection handed over and no sqlalchemy.url configured")
    engine = create_engine(url)
    try:
        with engine.begin() as own:
            _run(own)
    finally:
        engine.dispose()


_main()
