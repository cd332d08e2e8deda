"""``medge provision``: enroll this appliance with the dashboard and make it ready, with one token."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import typer
from rich.markup import escape

from sdk.cli.console import console

RUNTIME_UNIT = "medge-runtime.service"


def provision(
    dashboard: str = typer.Option(..., "--dashboard", help="The dashboard's URL, as its enrollment page shows it."),
    token: str = typer.Option(..., "--token", help="The single-use enrollment token from the dashboard."),
    site: str = typer.Option(..., "--site", help="The site (hospital) name the token was made for."),
    device: str = typer.Option(..., "--device", help="This appliance's name at the site, e.g. ct-1."),
    scanner_ae: list[str] = typer.Option(
        [], "--scanner-ae", help="AE title of a scanner allowed to send (repeat for each scanner)."
    ),
    ae_title: str = typer.Option("MEDGE", help="This appliance's AE title (the scanners send to it)."),
    dicom_port: int = typer.Option(11112, help="The DICOM port scanners send to."),
    dashboard_ca: Path | None = typer.Option(
        None, "--dashboard-ca", help="The CA certificate of the dashboard's HTTPS (default: the system's CAs)."
    ),
    profile: str | None = typer.Option(None, help="The device profile id (default: detected)."),
    prefix: Path = typer.Option(Path("/"), help="Root of medge's folders (/ on an appliance)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Enroll again over an existing appliance.toml."),
    start: bool | None = typer.Option(
        None,
        "--start/--no-start",
        help="Enable and (re)start the runtime's systemd unit afterwards (default: when systemd runs).",
    ),
) -> None:
    """Enroll this appliance and make it ready: key pair, credentials, config, package, self-test.

    Makes the device's own key pair (its private key never leaves the
    appliance), enrolls with the dashboard using the token, writes the broker
    credentials, the trusted package-signing keys and /etc/medge/appliance.toml,
    installs the package assigned on the dashboard, then runs the self-test
    checklist. Run it as root. Exits 0 when the appliance is ready, 1 when a
    self-test check failed (fix it and run `medge selftest`), 2 on an error.
    """
    from firmware_integration.layout import Layout
    from firmware_integration.provisioning import Provisioner, ProvisionOptions
    from runtime.selftest import CHECKS
    from sdk.appliance_config import load_appliance_config
    from sdk.cli.selftest import run_checklist

    options = ProvisionOptions(
        dashboard_url=dashboard,
        token=token,
        site=site,
        device=device,
        scanner_aes=tuple(scanner_ae),
        ae_title=ae_title,
        dicom_port=dicom_port,
        dashboard_ca=dashboard_ca,
        profile=profile,
        layout=Layout(prefix),
        overwrite=overwrite,
    )

    def step(name: str, detail: str) -> None:
        console.print(f"[bold green]✓[/] {name:<12} {escape(detail)}", soft_wrap=True)

    console.print(f"[bold]medge provision[/] {site}/{device} with {escape(dashboard)}")
    result = Provisioner(options, on_step=step).run()
    settings = load_appliance_config(result.config_path)
    if start is None:
        start = Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None
    # The broker check connects as this device: run it before the service holds that session.
    console.print("[bold]self-test[/]")
    skip = ["dicom"]
    report = run_checklist(settings, skip=skip)
    if start:
        subprocess.run(["systemctl", "enable", RUNTIME_UNIT], check=False)
        started = subprocess.run(["systemctl", "restart", RUNTIME_UNIT], check=False)  # Type=notify: waits for READY
        if started.returncode != 0:
            console.print(f"[bold red]the service did not start[/]: see journalctl -u {RUNTIME_UNIT}")
            raise typer.Exit(1)
        dicom = run_checklist(settings, skip=[c for c in CHECKS if c != "dicom"])
        report = report.model_copy(update={"checks": report.checks + dicom.checks})
    else:
        console.print(
            f"DICOM C-ECHO not checked: the service is not started. Start it (systemctl enable --now {RUNTIME_UNIT}), "
            f"then run: medge selftest --config {result.config_path}",
            soft_wrap=True,
        )
    if not report.ok:
        raise typer.Exit(1)
    console.print(f"[bold green]{site}/{device} is provisioned[/]: config {result.config_path}")
