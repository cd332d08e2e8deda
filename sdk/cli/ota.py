"""``medge ota``: what a field tech needs to see and do about over-the-air model updates on an appliance."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from sdk.cli.console import MedgeTyper, console

app = MedgeTyper(help="See the package slots and the update in progress; roll back by hand.")

_CONFIG = typer.Option(..., "--config", "-c", help="The appliance config (appliance.toml).")


@app.command("status")
def status(config: Path = _CONFIG) -> None:
    """Show the active slot, the packages in each slot and the update in progress (if any)."""
    from firmware_integration.ota import Journal, OtaPaths, Slots
    from firmware_integration.ota.slots import package_model_name
    from sdk.appliance_config import load_appliance_config

    paths = OtaPaths.from_config(load_appliance_config(config))
    slots = Slots(paths.packages_dir, paths.slots_dir)
    if not paths.packages_dir.is_symlink():
        console.print(f"{paths.packages_dir} is a plain folder: no update has run (the service makes the slots)")
        active = None
    else:
        active = slots.active()
    table = Table(title="package slots")
    for column in ("slot", "state", "packages"):
        table.add_column(column)
    for slot in ("A", "B"):
        folder = slots.path(slot)
        files = sorted(folder.glob("*.medge")) if folder.is_dir() else []
        names = ", ".join(f"{f.name} ({package_model_name(f) or 'unreadable'})" for f in files) or "empty"
        table.add_row(slot, "active" if slot == active else "", escape(names))
    console.print(table)
    entry = Journal(paths.journal).read()
    if entry is None:
        console.print("no update in progress")
    else:
        reason = f": {entry.reason}" if entry.reason else ""
        console.print(
            f"update {escape(entry.update_id)} of {escape(entry.package)}: {entry.step.value}{escape(reason)} "
            f"(from slot {entry.previous_slot} to {entry.target_slot}, started {entry.started:%Y-%m-%d %H:%M:%S} UTC)"
        )


@app.command("rollback")
def rollback(config: Path = _CONFIG) -> None:
    """Make the other slot (the packages before the last update) live again. Stop the service first.

    The service verifies and golden-tests the packages again when it starts,
    so a slot that no longer passes does not go live. Updates roll back by
    themselves when they fail; this is for a package that passed probation
    and is later found wanting.
    """
    from firmware_integration.ota import Journal, OtaError, OtaPaths, Slots
    from sdk.appliance_config import load_appliance_config

    paths = OtaPaths.from_config(load_appliance_config(config))
    if Journal(paths.journal).read() is not None:
        raise OtaError("an update is in progress or not yet reported: start the service and let it finish first")
    slots = Slots(paths.packages_dir, paths.slots_dir)
    if not paths.packages_dir.is_symlink():
        raise OtaError("no update has run on this appliance: there is nothing to roll back to")
    active = slots.active()
    target = slots.other(active)
    if not any(slots.path(target).glob("*.medge")):
        raise OtaError(f"slot {target} holds no package: there is nothing to roll back to")
    slots.activate(target)
    console.print(f"slot {target} is active (was {active}); now: systemctl restart medge-runtime")
