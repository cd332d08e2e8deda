"""A throwaway PostgreSQL server from Debian's package, for the store suite and the benchmarks on PostgreSQL.

``initdb`` refuses to run as root, so as root the server runs as the
``postgres`` system user (``runuser``) in a private folder it owns. It listens
on a free loopback port, by default with durability switched off (a test
database need not survive a power cut; benchmarks ask for ``durable=True``,
so commits cost what they cost on a site), and is stopped, and its folder
removed, at the end.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from sdk.testing.mosquitto import free_port

__all__ = ["POSTGRES_ROOT", "PostgresServer", "find_postgres_bin", "running_postgres"]

POSTGRES_ROOT = Path("/usr/lib/postgresql")


def find_postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's ``bin`` folder, or ``None``."""
    candidates = sorted(POSTGRES_ROOT.glob("*/bin/initdb"), key=lambda path: int(path.parts[-3]))
    return candidates[-1].parent if candidates else None


class PostgresServer:
    """One ``postgres`` process on ``127.0.0.1:port`` with a fresh data folder.

    Args:
        bin_dir: the PostgreSQL ``bin`` folder.
        durable: keep fsync and synchronous commits on (as a production server); off by default for tests.
        max_connections: the server's ``max_connections``.
    """

    SUPERUSER = "medge"

    def __init__(self, bin_dir: Path, *, durable: bool = False, max_connections: int = 200) -> None:
        self.bin_dir = bin_dir
        self.durable = durable
        self.max_connections = max_connections
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="medge-pg-"))
        self.data = self.root / "data"
        self._prefix: list[str] = []
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self._prefix = ["runuser", "-u", "postgres", "--"]
        self._databases = 0

    def _run(self, *args: str) -> None:
        subprocess.run([*self._prefix, *args], check=True, capture_output=True, timeout=60)

    def start(self) -> PostgresServer:
        """initdb, start, and wait until it takes connections."""
        self._run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            self.SUPERUSER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        options += f" -c max_connections={self.max_connections}"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "log"),
            "-w",
            "start",
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                with psycopg.connect(self.dsn("postgres"), connect_timeout=2):
                    return self
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def dsn(self, database: str) -> str:
        """A libpq connection string for ``database``."""
        return f"host=127.0.0.1 port={self.port} user={self.SUPERUSER} dbname={database}"

    def url(self, database: str) -> str:
        """A SQLAlchemy URL of ``database`` on this server."""
        return f"postgresql+psycopg://{self.SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its name."""
        self._databases += 1
        name = f"medge_test_{self._databases}"
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        """Drop ``name``, disconnecting its clients."""
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        """Stop immediately and remove the folder."""
        if self.data.exists():
            with contextlib.suppress(subprocess.CalledProcessError):  # it was not running
                self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def running_postgres(bin_dir: Path, *, durable: bool = False, max_connections: int = 200) -> Iterator[PostgresServer]:
    """Start a server, yield it, stop it and remove its folder."""
    server = PostgresServer(bin_dir, durable=durable, max_connections=max_connections)
    try:
        yield server.start()
    finally:
        server.stop()
