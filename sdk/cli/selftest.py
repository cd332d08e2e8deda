"""``medge selftest``: the appliance's checklist, pass/warn/fail with the fix for each problem."""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from sdk.cli.console import console

if TYPE_CHECKING:
    from runtime.selftest import SelfTestReport
    from sdk.appliance_config import ApplianceConfig

_MARK = {"pass": "[bold green]PASS[/]", "warn": "[bold yellow]WARN[/]", "fail": "[bold red]FAIL[/]"}
# Loggers whose errors the checklist already states in its own words (shown again with --verbose).
_QUIET = ("runtime.packages", "pynetdicom")


def selftest(
    config: Path = typer.Option(..., "--config", "-c", help="The appliance config (appliance.toml)."),
    calling_ae: str | None = typer.Option(
        None, help="AE title of the C-ECHO (default: the first of dicom.allowed_calling_aes)."
    ),
    min_free_mb: int = typer.Option(1024, help="Free MiB under data_dir below which the disk check fails."),
    timeout: float = typer.Option(5.0, help="Seconds each network step may take (connect, association, PUBACK)."),
    skip: list[str] = typer.Option(
        [], "--skip", help="Leave a check out: profile, engine, packages, dicom, broker, clock, disk, spool."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print the report as JSON (for provisioning tools)."),
) -> None:
    """Check this appliance: profile and engine, packages, DICOM, broker, clock, disk and spool.

    Each failure comes with the fix in one sentence. Exits 0 when nothing
    failed (warnings allowed), 1 when a check failed. Run it as the service's
    user (sudo -u medge) to test what the service can do.
    """
    from runtime.selftest import CHECKS
    from sdk.appliance_config import load_appliance_config
    from sdk.errors import ConfigError

    unknown = sorted(set(skip) - set(CHECKS))
    if unknown:
        raise ConfigError(f"no such check: {', '.join(unknown)} (checks: {', '.join(CHECKS)})", field="--skip")
    settings = load_appliance_config(config)
    if not json_output:
        appliance = settings.appliance
        console.print(f"[bold]medge self-test[/] {appliance.site}/{appliance.device} ({config})")
    report = run_checklist(
        settings, calling_ae=calling_ae, min_free_mb=min_free_mb, timeout=timeout, skip=skip, show=not json_output
    )
    if json_output:
        console.print_json(report.model_dump_json())
    raise typer.Exit(report.exit_code)


def run_checklist(
    settings: ApplianceConfig,
    *,
    calling_ae: str | None = None,
    min_free_mb: int = 1024,
    timeout: float = 5.0,
    skip: Collection[str] = (),
    show: bool = True,
) -> SelfTestReport:
    """Run the self-test, printing each check with its fix and a verdict (``medge selftest``, ``medge provision``)."""
    from runtime.selftest import Check, SelfTest

    verbose = logging.getLogger().getEffectiveLevel() <= logging.DEBUG
    quieted = []
    if not verbose:
        for name in _QUIET:
            logger = logging.getLogger(name)
            quieted.append((logger, logger.level))
            logger.setLevel(logging.CRITICAL)

    def print_check(check: Check) -> None:
        console.print(f"{_MARK[check.status.value]} {escape(check.name)}: {escape(check.detail)}", soft_wrap=True)
        if check.fix:
            console.print(f"     [bold]fix:[/] {escape(check.fix)}", soft_wrap=True)

    try:
        runner = SelfTest(settings, calling_ae=calling_ae, min_free_mb=min_free_mb, timeout_s=timeout)
        report = runner.run(skip=skip, on_check=print_check if show else None)
    finally:
        for logger, level in quieted:
            logger.setLevel(level)
    if show:
        counts = {status: sum(1 for c in report.checks if c.status.value == status) for status in _MARK}
        verdict = "[bold green]ready[/]" if report.ok else "[bold red]not ready[/]"
        console.print(f"{verdict}: {counts['pass']} passed, {counts['warn']} warning(s), {counts['fail']} failed")
    return report
