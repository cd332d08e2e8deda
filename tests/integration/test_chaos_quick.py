"""Issue 9's chaos run in its quick form: every instance a scanner sent has exactly one finding in the store.

Two ``medge serve`` appliances stream phantom studies through Mosquitto to
``medge dashboard`` while the broker is stopped and killed, an appliance is
killed with SIGKILL, the dashboard is stopped and killed, and one appliance's
spool quota refuses instances with 0xA700 (see :mod:`benchmarks.chaos_run`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.chaos_run import QUICK, format_table, run_chaos


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_chaos_quick_loses_and_duplicates_nothing(reference_packages, tmp_path: Path) -> None:
    packages, trusted = tmp_path / "packages", tmp_path / "trusted"
    reference_packages.build(packages / "chest-ct-nodule.medge")
    trusted.mkdir()
    (trusted / "signing.pub").write_bytes(reference_packages.pair.public_path.read_bytes())

    report = run_chaos(QUICK, tmp_path / "run", packages=packages, trusted=trusted)

    table = format_table(report)
    faults = [fault.fault for fault in report.faults]
    for wanted in (
        "broker stopped (SIGTERM)",
        "broker killed (SIGKILL)",
        "appliance killed (SIGKILL)",
        "appliance restarted",
        "dashboard stopped (SIGTERM)",
        "dashboard killed (SIGKILL)",
        "spool quota hit",
    ):
        assert wanted in faults, f"{wanted} was not injected:\n{table}"
    assert sum(t.refused_quota for t in report.tallies) > 0, table
    assert all(t.accepted == t.instances > 0 for t in report.tallies), table
    assert report.lost == 0, table
    assert report.duplicates == 0, table
    assert sum(t.unexpected for t in report.tallies) == 0, table
    assert all(t.stored == t.distinct_instances == t.instances for t in report.tallies), table
    assert report.passed, table
