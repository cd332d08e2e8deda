"""``medge serve``: run the appliance service until stopped (SIGTERM or Ctrl-C)."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

import typer

from sdk.cli.console import console


def serve(
    config: Path = typer.Option(..., "--config", "-c", help="The appliance config (appliance.toml)."),
    health_port: int = typer.Option(9810, help="Local port of /healthz, /readyz and /metrics (0: any free port)."),
    json_logs: bool = typer.Option(True, "--json-logs/--plain-logs", help="Structured JSON logs (for journald)."),
) -> None:
    """Run the appliance: DICOM in (C-STORE SCP, watched folder), findings into the durable outbox.

    Settings come from the config file, overridden by MEDGE_<SECTION>__<FIELD>
    environment variables. Stops cleanly on SIGTERM or Ctrl-C: ingest first
    (senders retry what was not acknowledged), then the workers.
    """
    from firmware_integration.ota import OtaAgent
    from runtime.appliance import Appliance
    from runtime.sd_notify import Notifier, Watchdog
    from runtime.service_logging import configure_json_logging
    from sdk.appliance_config import load_appliance_config

    notifier = Notifier.from_environment(unset=True)  # first: systemd's socket and watchdog interval
    settings = load_appliance_config(config)
    if json_logs:
        configure_json_logging(logging.INFO)
    # Over-the-air updates: undo an update a crash interrupted before any package loads.
    updates = OtaAgent(settings)
    updates.recover()
    appliance = Appliance(settings, health_port=health_port, commands=updates.commands())
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    notifier.status("starting: verifying packages and running their golden samples")
    appliance.start()
    updates.start(appliance, appliance.emit)
    assert appliance.scp is not None and appliance.health is not None
    live = ", ".join(f"{p.name} {p.manifest.model.version}" for p in appliance.packages.live.values()) or "none"
    notifier.ready(f"serving; packages live: {live}")
    # Pings only while the appliance's threads are alive and making progress: a hang gets it restarted.
    watchdog = Watchdog.requested(notifier, appliance.alive)
    if watchdog is not None:
        watchdog.start()
    console.print(
        f"[bold]medge appliance[/] {settings.appliance.site}/{settings.appliance.device} on {appliance.profile.id}: "
        f"DICOM {settings.dicom.ae_title}@{settings.dicom.host}:{appliance.scp.port}, "
        f"health http://127.0.0.1:{appliance.health.port}/readyz, packages live: {live}"
    )
    try:
        stop.wait()
    finally:
        notifier.stopping("stopping: ingest first, then the workers")
        if watchdog is not None:
            watchdog.stop()
        updates.stop()
        appliance.stop()
        notifier.close()
