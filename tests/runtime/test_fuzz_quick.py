"""The quick form of the DICOM fuzzer (benchmarks/fuzz_dicom.py): a bounded run that fails on any crash.

It runs the harness in a subprocess (atheris instruments the modules it
imports; the test process must stay uninstrumented) from a fresh seed corpus
for a bounded time. A crash, a hang (one input over the per-input timeout) or
a memory blow-up (over the RSS limit) makes libFuzzer exit non-zero and write
the input under ``artifacts``; the failure message names it. The long run is
in docs/reliability.md.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ_SECONDS = 40
WALL_LIMIT_S = 120  # instrumentation and seeding take a few seconds before the fuzzing time starts


@pytest.mark.slow
def test_a_quick_fuzz_run_finds_no_crash_hang_or_blow_up(tmp_path: Path) -> None:
    corpus, artifacts = tmp_path / "corpus", tmp_path / "artifacts"
    command = [
        sys.executable,
        "-m",
        "benchmarks.fuzz_dicom",
        "--seconds",
        str(FUZZ_SECONDS),
        "--corpus",
        str(corpus),
        "--artifacts",
        str(artifacts),
        "--timeout",
        "10",
        "--rss-limit-mb",
        "2048",
        "-seed=1",  # the same mutations every run, so that a pass is not luck of the draw
    ]
    env = {**os.environ, "RUST_BACKTRACE": "0"}
    result = subprocess.run(
        command,
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=WALL_LIMIT_S,
        check=False,
    )
    found = sorted(path.name for path in artifacts.glob("*")) if artifacts.is_dir() else []
    tail = "\n".join(result.stderr.splitlines()[-40:])
    assert result.returncode == 0 and not found, f"fuzzer found {found} (exit {result.returncode}):\n{tail}"
    executed = re.search(r"stat::number_of_executed_units:\s+(\d+)", result.stderr)
    assert executed is not None, tail
    assert int(executed.group(1)) >= 1000, f"only {executed.group(1)} inputs ran: the harness is too slow to matter"
    assert len(list(corpus.iterdir())) >= 20, "the seed corpus was written"
