"""The dashboard benchmark runs end to end at smoke size and reports its figures with budgets (judged by full runs)."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.dashboard_benchmark import main


def test_a_quick_run_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    assert main(["--quick", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())["figures"]
    assert figures, "no figure measured"
    assert any("findings" in f["name"] for f in figures)
    for figure in figures:
        assert figure["value"] is not None and figure["value"] >= 0, figure
        if figure["budget"] is not None:
            assert figure["met"] in (True, False), figure
