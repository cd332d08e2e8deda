"""The runtime benchmark runs end to end at smoke size and reports every figure with its reference, ratio and budget.

Whether the budgets are met is judged by the full run (``python -m
benchmarks.runtime_benchmark``, see docs/benchmarks.md), not here: smoke sizes
are too small for the figures to mean anything.
(tests/runtime/ingest/test_scp.py checks that the SCP's speed work, which the
ingest figures measure, is in effect with the installed pynetdicom.)
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest

from benchmarks.report import BenchmarkReport, Figure
from benchmarks.runtime_benchmark import GROUP_INGEST, GROUP_PIPELINE, GROUP_START, format_table, main

pytestmark = pytest.mark.skipif(
    not (Path("/usr/bin/storescu").exists() and Path("/usr/bin/storescp").exists()), reason="dcmtk is not installed"
)

BUDGETED = {
    GROUP_PIPELINE: ("latency p50, spooled DICOM -> finding in the outbox", "throughput, "),
    GROUP_INGEST: (
        "128x128 CT: medge SCP + spool (fsync'd) + queue row, rate",
        "128x128 CT: medge SCP vs dcmtk storescp (no fsync) on the same instances",
    ),
    GROUP_START: ("cold start of the reference package", "peak resident memory: appliance process"),
}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, dict[str, Any]]:
    """One smoke run for the module: exit code, what it printed, and its JSON report."""
    work = tmp_path_factory.mktemp("runtime-benchmark")
    out = work / "report.json"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["--quick", "--workdir", str(work / "run"), "--json", str(out)])
    return code, printed.getvalue(), json.loads(out.read_text(encoding="utf-8"))


@pytest.mark.slow
def test_quick_run_judges_every_budget_of_the_issue(quick_run: tuple[int, str, dict[str, Any]]) -> None:
    code, _, report = quick_run
    assert code == 0
    assert report["settings"]["name"] == "quick"
    budgeted = [f for f in report["figures"] if f["budget"] is not None]
    assert len(budgeted) == 6
    for group, prefixes in BUDGETED.items():
        names = [f["name"] for f in budgeted if f["group"] == group]
        for prefix in prefixes:
            assert any(name.startswith(prefix) for name in names), (group, prefix, names)
    for figure in budgeted:
        assert isinstance(figure["met"], bool), figure
        assert figure["ratio"] is not None and math.isfinite(figure["ratio"]) and figure["ratio"] > 0, figure


@pytest.mark.slow
def test_quick_run_measures_each_figure_beside_its_reference(quick_run: tuple[int, str, dict[str, Any]]) -> None:
    _, _, report = quick_run
    figures = {f["name"]: f for f in report["figures"]}
    for figure in report["figures"]:
        assert figure["value"] > 0 and math.isfinite(figure["value"]), figure
        if figure["reference"] not in (None, "budget"):
            assert figure["reference_value"] > 0, figure
    latency = next(f for name, f in figures.items() if name.startswith("latency p50, spooled"))
    assert latency["reference"] == "dcmread + preprocess + bare engine call"
    assert "stage medians from the findings" in latency["note"] and "infer" in latency["note"]
    for size in ("128x128", "512x512"):
        assert f"{size} CT: medge SCP vs dcmtk storescp (no fsync) on the same instances" in figures
        assert any(name.startswith(f"{size} CT: medge SCP with pynetdicom's polling") for name in figures)
    cold = next(f for name, f in figures.items() if name.startswith("cold start"))
    assert "imports" in cold["note"] and "golden samples" in cold["note"]
    assert report["machine"]["nproc"] >= 1 and report["machine"]["versions"]["onnxruntime"]


@pytest.mark.slow
def test_quick_run_prints_a_table_with_pass_or_fail(quick_run: tuple[int, str, dict[str, Any]]) -> None:
    _, printed, report = quick_run
    verdicts = [line for line in printed.splitlines() if line.endswith(("PASS", "FAIL"))]
    assert len(verdicts) == 6
    passed = sum(f["met"] is True for f in report["figures"])
    assert f"budgets: {passed} of 6 PASS" in printed
    for group in BUDGETED:
        assert f"== {group}" in printed


def test_the_table_marks_budgets_and_wraps_long_names() -> None:
    report = BenchmarkReport(
        settings={"name": "quick"},
        machine={"date": "d", "cpu": "c", "nproc": 2, "cpu_flags": [], "load_average_start": [0], "versions": {}},
    )
    long_name = "a figure whose name is far too long to fit in the first column of the table " * 2
    report.add(Figure("g", long_name, 12.5, "ms", "ref", 10.0, 1.25, "1.25x", "<= 1.15x", False, "why"))
    report.add(Figure("g", "rate", 450.0, "instances/s", "budget", 300.0, 1.5, "1.50 of the budget", ">= 300 /s", True))
    text = format_table(report)
    lines = text.splitlines()
    assert any(line.endswith("FAIL") and "12.50 ms" in line and "10.00 ms" in line for line in lines)
    assert any(line.endswith("PASS") and "450 /s" in line for line in lines)
    assert f"    {long_name}" in lines and "    why" in lines
    assert f"budgets: 1 of 2 PASS: FAIL {long_name}" in text


def test_unknown_option_is_refused() -> None:
    with pytest.raises(SystemExit) as exc, contextlib.redirect_stderr(io.StringIO()):
        main(["--no-such-option"])
    assert exc.value.code == 2
