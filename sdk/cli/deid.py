"""``medge deid``: de-identified copies of DICOM files, for calibration and validation sets off an appliance."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from sdk.cli.console import console, progress_bars

if TYPE_CHECKING:
    from runtime.deid import ExportSummary
    from runtime.deid.export import Outcome

_ACTIONS = ("X", "Z", "D", "U", "C", "K")


def deid_command(
    source: Path = typer.Argument(..., help="A DICOM file, or a folder searched recursively (DICOMDIR is skipped)."),
    target: Path = typer.Argument(
        ..., help="Output folder, outside IN: OUT/<study>/<series>/<instance>.dcm by new UIDs."
    ),
    key_file: Path | None = typer.Option(
        None,
        "--key-file",
        help="The key new UIDs derive from (made, mode 600, if missing). Default: deid.key in the medge config folder.",
    ),
    retain_dates: bool = typer.Option(
        False, "--retain-dates", help="Retain Longitudinal Temporal Information (Full Dates): keep dates and times."
    ),
    clean_descriptors: bool = typer.Option(
        False, "--clean-descriptors", help="Clean Descriptors: keep the imaging words of descriptions, drop the rest."
    ),
    allow_burned_in: bool = typer.Option(
        False, "--allow-burned-in", help="Write images with burned-in annotation too (their pixels are NOT scrubbed)."
    ),
    keep_private: list[str] = typer.Option(
        [], "--keep-private", help="Keep a private attribute: CREATOR:EE or CREATOR:GGGG,xxEE in hex (repeatable)."
    ),
    keep_folder_names: bool = typer.Option(
        False, "--keep-folder-names", help="Mirror IN's folder names (check they hold no names, dates or UIDs)."
    ),
) -> None:
    """De-identify DICOM files by PS3.15 Annex E's Basic Application Level Confidentiality Profile.

    Identifying attributes are removed, emptied or replaced as the
    profile's table says, private attributes are removed, and UIDs are
    replaced by keyed hashes: the same key gives the same new UIDs in every
    export, so series still group and references still resolve. Pixel data
    is not scrubbed: images with burned-in annotation are refused unless
    --allow-burned-in.

    Exits 0 when every DICOM file was written, 1 when some were refused or
    unreadable.
    """
    from runtime.deid import Deidentifier, DeidExport, DeidOptions, SafePrivateTag, default_key_path, load_or_create_key

    options = DeidOptions(
        retain_dates=retain_dates,
        clean_descriptors=clean_descriptors,
        allow_burned_in=allow_burned_in,
        keep_private=tuple(SafePrivateTag.parse(text) for text in keep_private),
    )
    key_path = key_file or default_key_path()
    key, created = load_or_create_key(key_path)
    if created:
        console.print(
            f"[yellow]made a new de-identification key[/] {escape(str(key_path))} (mode 600). Use the same key "
            "(--key-file) for every export that must link up: another key gives other UIDs. Keep it secret."
        )
    else:
        console.print(f"key {escape(str(key_path))}")
    export = DeidExport(source, target, Deidentifier(key, options), keep_folder_names=keep_folder_names)
    with progress_bars() as progress:
        task = progress.add_task("de-identifying", total=len(export.inputs))
        summary = export.run(on_file=lambda _outcome: progress.advance(task))
    _print_summary(summary, export.target)
    if summary.of("refused") or summary.of("unreadable"):
        raise typer.Exit(1)


def _print_summary(summary: ExportSummary, target: Path) -> None:
    totals: dict[str, Counter[str]] = {}
    for item in summary.of("written"):
        if item.report is None:
            continue
        for family, per_action in item.report.by_group().items():
            for taken, count in per_action.items():
                totals.setdefault(family.value, Counter())[taken.value] += count
    if totals:
        table = Table(title="attributes acted on (all files)")
        table.add_column("group")
        for code in _ACTIONS:
            table.add_column(code, justify="right")
        for name, counts in sorted(totals.items()):
            table.add_row(name, *(str(counts[code] or "") for code in _ACTIONS))
        console.print(table)
    outcomes: tuple[Outcome, ...] = ("refused", "unreadable", "skipped")
    for outcome in outcomes:
        for item in summary.of(outcome):
            console.print(f"[yellow]{outcome}[/] {escape(str(item.source))}: {escape(item.reason)}")
    for item in summary.flagged:
        console.print(f"[bold red]burned-in[/] {escape(str(item.output))}: {escape(item.reason)}")
    console.print(
        f"written [bold]{len(summary.of('written'))}[/] to {escape(str(target))}, "
        f"refused {len(summary.of('refused'))}, unreadable {len(summary.of('unreadable'))}, "
        f"skipped {len(summary.of('skipped'))}"
    )
