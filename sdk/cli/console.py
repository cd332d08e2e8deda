"""The CLI's presentation layer: consoles, and turning medge errors into one red line.

Every command of the ``medge`` CLI is a :class:`MedgeCommand`, so a user
error (:class:`~sdk.errors.MedgeError`) prints ``error: <what, where, why>``
on stderr and exits with code 2, without a traceback. Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from typer.core import TyperCommand

from sdk.errors import MedgeError

__all__ = ["EXIT_USER_ERROR", "MedgeCommand", "MedgeTyper", "console", "err_console", "progress_bars", "report_error"]

EXIT_USER_ERROR = 2

# Piped output (make, CI logs) would otherwise be cut at 80 columns, which wraps tables badly.
_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 120
console = Console(width=_WIDTH)
err_console = Console(stderr=True, width=_WIDTH)


def progress_bars() -> Progress:
    """The one progress display of the CLI: a labelled bar per task, done/total and elapsed time."""
    return Progress(
        TextColumn("[bold]{task.description:<36}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def report_error(exc: MedgeError) -> None:
    """Print a medge error as one line on stderr."""
    err_console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)


class MedgeCommand(TyperCommand):
    """A typer command that reports :class:`MedgeError` as a clean one-line error."""

    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except MedgeError as exc:
            report_error(exc)
            ctx.exit(EXIT_USER_ERROR)


class MedgeTyper(typer.Typer):
    """``typer.Typer`` whose commands are :class:`MedgeCommand` by default."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("no_args_is_help", True)
        kwargs.setdefault("pretty_exceptions_show_locals", False)
        kwargs.setdefault("rich_markup_mode", "rich")
        super().__init__(**kwargs)

    def command(self, *args: Any, cls: type[TyperCommand] | None = MedgeCommand, **kwargs: Any) -> Any:
        return super().command(*args, cls=cls, **kwargs)
