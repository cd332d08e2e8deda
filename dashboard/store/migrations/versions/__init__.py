"""Alembic revisions of the dashboard store, oldest first."""
