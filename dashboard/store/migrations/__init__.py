"""Alembic migrations of the dashboard store, applied by :func:`dashboard.store.create_store`."""
