"""The figures a benchmark run measured, and how they are printed (plain text) and documented (Markdown)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import os
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["BenchmarkReport", "Figure", "format_markdown", "format_report", "format_table", "machine_facts"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Figure:
    """One measured figure, its reference and how they compare.

    Attributes:
        group: the model (``chest-ct-nodule``, ``ResNet-50``).
        name: what was measured.
        value: the figure, in ``unit``.
        unit: ``ms``, ``MB``, ``%``, ``s``, ...
        reference: what it is compared with, or None.
        reference_value: the reference's figure, in ``unit``.
        ratio: the comparison as a number (its meaning in ``comparison``).
        comparison: the comparison in words, e.g. ``0.93x`` or ``4.1x smaller``.
        budget: the budget on the comparison, e.g. ``<= 1.00x``, or None.
        met: whether the budget is met; None without a budget.
        note: detail (intervals, sample counts).
    """

    group: str
    name: str
    value: float
    unit: str
    reference: str | None = None
    reference_value: float | None = None
    ratio: float | None = None
    comparison: str = ""
    budget: str | None = None
    met: bool | None = None
    note: str = ""


@dataclass
class BenchmarkReport:
    """Everything one run measured."""

    settings: dict[str, Any]
    machine: dict[str, Any]
    figures: list[Figure] = field(default_factory=list)
    compiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, figure: Figure) -> Figure:
        """Record and log a figure."""
        self.figures.append(figure)
        log.info("%s | %s: %s", figure.group, figure.name, _value(figure.value, figure.unit))
        return figure

    @property
    def missed(self) -> list[Figure]:
        """Figures whose budget is not met."""
        return [f for f in self.figures if f.met is False]

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return {
            "settings": self.settings,
            "machine": self.machine,
            "figures": [dataclasses.asdict(f) for f in self.figures],
            "compiles": self.compiles,
            "seconds": round(self.seconds, 1),
        }


def machine_facts() -> dict[str, Any]:
    """CPU, core count, load and library versions: what a reader needs to judge the figures."""
    model, flags = "unknown", set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    wanted = ["avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8"]
    versions = {}
    for package in ("onnxruntime", "onnx", "openvino", "nncf", "numpy", "pydicom"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": model,
        "cpu_flags": [flag for flag in wanted if flag in flags],
        "nproc": os.cpu_count(),
        "load_average_start": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def _value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "%":
        return f"{value:.2f} %"
    if unit in ("ms", "s"):
        return f"{value:.2f} {unit}"
    if unit == "":
        return f"{value:.4f}" if value < 1.5 else f"{value:.0f}"
    return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"


def format_report(report: BenchmarkReport) -> str:
    """The report as plain text: one line per figure with its reference, comparison and budget."""
    machine = report.machine
    lines = [
        f"medge {report.settings.get('benchmark', 'compile')} benchmark ({report.settings.get('name', '')})"
        f" - {machine['date']}",
        f"machine: {machine['cpu']}, {machine['nproc']} CPUs ({', '.join(machine['cpu_flags'])}), "
        + (f"{machine['threads']} inference threads, " if "threads" in machine else "")
        + f"load average {machine['load_average_start']} -> {machine.get('load_average_end')}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()),
        "",
    ]
    group = None
    for figure in report.figures:
        if figure.group != group:
            group = figure.group
            lines += ["", f"== {group}"]
        verdict = "" if figure.met is None else ("  [met]" if figure.met else "  [MISSED]")
        reference = (
            f" | reference {figure.reference}: {_value(figure.reference_value, figure.unit)}"
            if figure.reference
            else ""
        )
        comparison = f" | ratio {figure.comparison}" if figure.comparison else ""
        budget = f" | budget {figure.budget}" if figure.budget else ""
        lines.append(f"- {figure.name}: {_value(figure.value, figure.unit)}{reference}{comparison}{budget}{verdict}")
        if figure.note:
            lines.append(f"    {figure.note}")
    lines += ["", "compiles:"]
    for name, record in report.compiles.items():
        lines.append(f"- {name}: {json.dumps(record)}")
    missed = report.missed
    budgeted = [f for f in report.figures if f.met is not None]
    lines += [
        "",
        f"budgets met: {len(budgeted) - len(missed)} of {len(budgeted)}"
        + (": missed " + "; ".join(f"{f.group}: {f.name}" for f in missed) if missed else ""),
        f"benchmark wall time: {report.seconds:.0f} s",
    ]
    return "\n".join(lines)


def format_markdown(report: BenchmarkReport) -> str:
    """The figures as Markdown tables, one per model (for docs/benchmarks.md)."""
    lines: list[str] = []
    group = None
    for figure in report.figures:
        if figure.group != group:
            group = figure.group
            lines += [
                "",
                f"**{group}**",
                "",
                "| figure | value | reference | ratio | budget | |",
                "|---|---|---|---|---|---|",
            ]
        reference = f"{figure.reference}: {_value(figure.reference_value, figure.unit)}" if figure.reference else ""
        verdict = "" if figure.met is None else ("met" if figure.met else "**missed**")
        name = figure.name + (f" <br><sub>{figure.note}</sub>" if figure.note else "")
        cells = [name, _value(figure.value, figure.unit), reference, figure.comparison, figure.budget or "", verdict]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines).strip() + "\n"


def _fmt(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit in ("instances/s", "/s"):
        return f"{value:.0f} /s"
    if unit in ("ms", "s"):
        return f"{value:.2f} {unit}"
    if unit == "MB":
        return f"{value:.0f} MB"
    return f"{value:.3g} {unit}".strip()


def format_table(report: BenchmarkReport, benchmark: str) -> str:
    """The report as a plain-text table: figure, value, reference, ratio, budget and PASS/FAIL."""
    machine = report.machine
    lines = [
        f"medge {benchmark} benchmark ({report.settings.get('name', '')}) - {machine['date']}",
        f"machine: {machine['cpu']}, {machine['nproc']} CPUs ({', '.join(machine.get('cpu_flags', []))}), "
        f"load average {machine['load_average_start']} -> {machine.get('load_average_end')}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in machine.get("versions", {}).items()),
    ]
    header = f"{'figure':<72} {'value':>11} {'reference':>11} {'ratio':>16} {'budget':>12}  result"
    group = None
    for figure in report.figures:
        if figure.group != group:
            group = figure.group
            lines += ["", f"== {group}", header]
        result = "" if figure.met is None else ("PASS" if figure.met else "FAIL")
        name = figure.name if len(figure.name) <= 72 else figure.name[:69] + "..."
        reference = _fmt(figure.reference_value, figure.unit) if figure.reference_value is not None else ""
        lines.append(
            f"{name:<72} {_fmt(figure.value, figure.unit):>11} {reference:>11} {figure.comparison:>16} "
            f"{figure.budget or '':>12}  {result}"
        )
        if len(figure.name) > 72:
            lines.append(f"    {figure.name}")
        if figure.reference:
            lines.append(f"    reference: {figure.reference}")
        if figure.note:
            lines.append(f"    {figure.note}")
    budgeted = [f for f in report.figures if f.met is not None]
    missed = report.missed
    lines += [
        "",
        f"budgets: {len(budgeted) - len(missed)} of {len(budgeted)} PASS"
        + (": FAIL " + "; ".join(f.name for f in missed) if missed else ""),
        f"benchmark wall time: {report.seconds:.0f} s",
    ]
    return "\n".join(lines)
