"""dcmtk's storescu as a scanner, for tests, benchmarks and the demo's simulated scanner checks.

pynetdicom puts its own ``storescu`` in the venv's ``bin/``: dcmtk's is called
by full path. ``TCP_NODELAY=1`` is dcmtk's own switch for Nagle's algorithm
(without it each instance stalls ~40 ms on loopback).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

__all__ = ["STORESCU", "storescu"]

STORESCU = "/usr/bin/storescu"


def storescu(
    port: int,
    files: Sequence[Path],
    *,
    calling_ae: str = "SCANNER1",
    called_ae: str = "MEDGE",
    host: str = "127.0.0.1",
    extra: Sequence[str] = (),
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """Send ``files`` over one association; the caller checks ``returncode`` (refusals are outcomes too)."""
    return subprocess.run(
        [STORESCU, *extra, "-aet", calling_ae, "-aec", called_ae, host, str(port), *map(str, files)],
        capture_output=True,
        text=True,
        env={**os.environ, "TCP_NODELAY": "1"},
        timeout=timeout,
        check=False,
    )
