"""``medge demo --once``: the whole chain on phantoms, end to end (sdk/cli/demo.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdk.cli.main import app

runner = CliRunner()


def test_demo_once_prints_findings_and_leaves_a_verifiable_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDGE_CONFIG_DIR", str(tmp_path / "config"))
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--once", "--out", str(out), "--studies", "2", "--slices", "12"])
    assert result.exit_code == 0, result.output
    assert "findings per study" in result.output
    assert "golden samples 3/3" in result.output
    assert "sensitivity" in result.output
    packages = list(out.glob("*.medge"))
    assert len(packages) == 1
    # The demo trusted its key locally, so verify needs no --trust.
    verified = runner.invoke(app, ["package", "verify", str(packages[0])])
    assert verified.exit_code == 0, verified.output
    assert len(list((out / "studies").rglob("*.dcm"))) == 24


def test_demo_refuses_an_unknown_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDGE_CONFIG_DIR", str(tmp_path / "config"))
    result = runner.invoke(app, ["demo", "--once", "--out", str(tmp_path), "--profile", "toaster"])
    assert result.exit_code == 2
    assert "toaster" in result.output
    assert "Traceback" not in result.output
