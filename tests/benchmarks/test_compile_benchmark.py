"""The compile benchmark runs end to end at smoke size and prints every figure with its reference and ratio.

Whether the budgets are met is judged by the full run (``python -m
benchmarks.compile_benchmark``, see docs/benchmarks.md), not here: smoke sizes
are too small for the figures to mean anything.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from typing import Any

import pytest

from benchmarks.compile_benchmark import FULL, QUICK, main, resnet_config
from benchmarks.report import BenchmarkReport, Figure, format_markdown, format_report


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, dict[str, Any]]:
    """One smoke run for the module: exit code, what it printed, and its JSON report."""
    work = tmp_path_factory.mktemp("benchmark")
    out = work / "report.json"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["--quick", "--workdir", str(work / "run"), "--json", str(out)])
    return code, printed.getvalue(), json.loads(out.read_text(encoding="utf-8"))


def _names(report: dict[str, Any], group_prefix: str) -> list[str]:
    return [f["name"] for f in report["figures"] if f["group"].startswith(group_prefix)]


@pytest.mark.slow
def test_quick_run_measures_every_figure(quick_run: tuple[int, str, dict[str, Any]]) -> None:
    code, _, report = quick_run
    assert code == 0
    assert report["settings"]["name"] == "quick"
    for group in ("chest-ct-nodule", "ResNet-50"):
        names = _names(report, group)
        for expected in (
            "latency p50, batch 1: medge x86 INT8 (generic-x86_64-cpu package)",
            "latency p50, batch 1: medge OpenVINO INT8 (intel-xeon package)",
            "speed-up of medge x86 INT8 over ONNX Runtime FP32",
            "speed-up of medge OpenVINO INT8 over ONNX Runtime FP32",
            "package file (generic-x86_64-cpu, int8)",
            "engine files (intel-xeon, int8)",
            "FakeQuantize nodes: medge OpenVINO INT8 vs plain nncf.quantize",
            "A/A control: plain nncf.quantize vs a second instance of itself",
        ):
            assert expected in names, (group, expected, names)
    reference = _names(report, "chest-ct-nodule")
    for profile in ("generic-x86_64-cpu", "intel-xeon"):
        assert f"agreement with FP32: medge {profile} package" in reference
        assert f"AUC: medge {profile} package" in reference
        assert any(name.startswith(f"compile time ({profile}") for name in reference)
    assert len(report["compiles"]) == 4


@pytest.mark.slow
def test_quick_run_ratios_are_finite_and_budgets_judged(quick_run: tuple[int, str, dict[str, Any]]) -> None:
    _, _, report = quick_run
    budgeted = [f for f in report["figures"] if f["budget"] is not None]
    assert len(budgeted) >= 14
    for figure in budgeted:
        assert isinstance(figure["met"], bool), figure
        assert figure["ratio"] is not None and math.isfinite(figure["ratio"]), figure
    for figure in report["figures"]:
        if figure["name"].startswith(("latency", "speed-up", "package file", "engine files")):
            assert figure["ratio"] > 0 and figure["reference_value"] > 0, figure
    # The smoke-size ResNet is not the standard network and says so.
    assert any("smoke size" in f["group"] for f in report["figures"])
    assert report["machine"]["nproc"] >= 1 and report["machine"]["versions"]["onnxruntime"]


@pytest.mark.slow
def test_quick_run_prints_figure_reference_and_ratio(quick_run: tuple[int, str, dict[str, Any]]) -> None:
    _, printed, report = quick_run
    latency = [line for line in printed.splitlines() if line.startswith("- latency p50") and "budget" in line]
    assert len(latency) == 4
    for line in latency:
        assert "| reference plain" in line and "| ratio " in line and "| budget <= 1.00x" in line
    assert "budgets met:" in printed
    assert f"budgets met: {sum(f['met'] is True for f in report['figures'])} of" in printed


def test_missed_budgets_are_listed() -> None:
    report = BenchmarkReport(
        settings={"name": "quick"},
        machine={
            "date": "d",
            "cpu": "c",
            "nproc": 2,
            "cpu_flags": [],
            "threads": 2,
            "load_average_start": [0, 0, 0],
            "versions": {},
        },
    )
    report.add(Figure("m", "size", 2.0, "MB", "FP32", 4.0, 2.0, "2.00x smaller", ">= 3.8x smaller", False))
    report.add(Figure("m", "latency", 1.0, "ms", "plain", 2.0, 0.5, "0.50x", "<= 1.00x", True))
    text = format_report(report)
    assert "[MISSED]" in text and "[met]" in text
    assert "budgets met: 1 of 2: missed m: size" in text
    assert [f.name for f in report.missed] == ["size"]
    table = format_markdown(report)
    assert "| size | 2 MB | FP32: 4 MB | 2.00x smaller | >= 3.8x smaller | **missed** |" in table
    assert table.count("| met |") == 1


def test_resnet_config_is_permissive_and_covers_every_class() -> None:
    config = resnet_config(1000, 224)
    assert len(config.labels) == 1000 and config.labels[0] == "class-000"
    assert config.preprocessing.input_shape(1) == (1, 3, 224, 224)
    assert config.gate.min_agreement == 0 and config.gate.max_flip_rate == 1 and config.gate.max_auc_drop == 1
    assert FULL.standard_resnet and not QUICK.standard_resnet


def test_unknown_option_is_refused() -> None:
    with pytest.raises(SystemExit) as exc, contextlib.redirect_stderr(io.StringIO()):
        main(["--no-such-option"])
    assert exc.value.code == 2
