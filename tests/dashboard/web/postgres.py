"""The throwaway PostgreSQL server of the store suite: moved to :mod:`sdk.testing.postgres` (the benchmarks use it too).

Re-exported here so the suite's imports keep working.
"""

from __future__ import annotations

from sdk.testing.postgres import POSTGRES_ROOT, PostgresServer, find_postgres_bin, running_postgres

__all__ = ["POSTGRES_ROOT", "PostgresServer", "find_postgres_bin", "running_postgres"]
