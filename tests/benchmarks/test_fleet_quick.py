"""The fleet simulation's harness at a small size: simulated appliances → Mosquitto → 1 and 2 dashboards → PostgreSQL.

50 devices for 10 s per configuration (see :mod:`benchmarks.fleet_simulation`):
every finding published is stored exactly once and acknowledged, the pages
answer under load, and the figures the report is made of are there.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from benchmarks.fleet_simulation import QUICK, format_table, run_fleet
from sdk.testing.postgres import find_postgres_bin

pytestmark = pytest.mark.skipif(find_postgres_bin() is None, reason="PostgreSQL is not installed")


@pytest.mark.slow
@pytest.mark.postgresql
@pytest.mark.timeout(180)
def test_fleet_quick_loses_nothing_with_one_and_two_dashboards(tmp_path: Path) -> None:
    report, results = run_fleet(QUICK, [1, 2], tmp_path)

    table = format_table(report)
    assert [r.dashboards for r in results] == [1, 2], table
    for result in results:
        assert result.connected == QUICK.devices, table
        assert result.findings_published > 0, table
        assert result.findings_lost == 0 and result.findings_duplicated == 0, table
        assert result.findings_stored == result.findings_published, table
        assert result.unacked_at_end == 0, table
        assert result.heartbeats > 0, table
        assert not result.page_errors, table
        assert all(not math.isnan(result.page_ms[path]["p95"]) for path in ("/", "/fleet")), table
        assert not math.isnan(result.lag_ms["p99"]) and result.broker_cpu_pct >= 0, table
    assert not report.missed, table
    assert any(figure.group.startswith("scale-out") for figure in report.figures), table
