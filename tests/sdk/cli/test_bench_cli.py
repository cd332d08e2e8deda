"""``medge bench``: a package next to its FP32 model (sdk/cli/bench.py, runtime/benchmark.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdk.cli.main import app

runner = CliRunner()


@pytest.fixture
def demo_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MEDGE_CONFIG_DIR", str(tmp_path / "config"))
    out = tmp_path / "demo"
    result = runner.invoke(
        app, ["demo", "--once", "--out", str(out), "--studies", "1", "--slices", "8", "--calib-studies", "4"]
    )
    assert result.exit_code == 0, result.output
    (package,) = out.glob("*.medge")
    return package


@pytest.mark.slow
def test_bench_prints_figures_and_ratios(demo_package: Path) -> None:
    result = runner.invoke(app, ["bench", str(demo_package), "--rounds", "2", "--iterations", "3"])
    assert result.exit_code == 0, result.output
    for row in ("latency p50", "latency p99", "throughput batch 1", "peak memory", "engine files", "ratio"):
        assert row in result.output
    assert "FP32 model" in result.output


def test_bench_needs_the_fp32_model_of_a_foreign_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDGE_CONFIG_DIR", str(tmp_path / "config"))
    junk = tmp_path / "x.medge"
    junk.write_bytes(b"PK\x03\x04 broken")
    result = runner.invoke(app, ["bench", str(junk)])
    assert result.exit_code == 2
    assert "error:" in result.output and "Traceback" not in result.output
