"""``medge broker``: set up a site's Mosquitto broker and decide who may connect to it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer
from rich.markup import escape
from rich.table import Table

from sdk.cli.console import MedgeTyper, console

app = MedgeTyper(
    help=(
        "Set up the site's MQTT broker (Mosquitto 2.0) and manage device and dashboard credentials.\n\n"
        "[bold]medge broker init DIR[/] makes a folder with a TLS listener, password or certificate "
        "authentication, ACLs that confine each device to [bold]medge/v1/{site}/{device}/...[/] and "
        "persistence. [bold]add-device[/] then writes a credential bundle to copy onto an appliance. "
        "The broker reads changes when reloaded ([bold]medge broker reload DIR[/] or "
        "[bold]systemctl reload mosquitto[/]). See docs/broker.md."
    )
)

_DIR = typer.Argument(..., help="The broker folder (e.g. /etc/mosquitto/medge).")
_RELOAD = typer.Option(False, "--reload", help="Reload the running broker afterwards (SIGHUP to its pid file).")


def _reload(directory: Path, pid_file: Path | None = None) -> None:
    from firmware_integration.broker import read_broker_settings, reload_broker

    target = pid_file or read_broker_settings(directory).pid_file
    pid = reload_broker(target)
    console.print(f"reloaded    mosquitto (pid {pid})")


def _hint_reload(reload: bool, directory: Path) -> None:
    if reload:
        _reload(directory)
    else:
        console.print(
            f"[yellow]not active yet:[/] run [bold]medge broker reload {escape(str(directory))}[/] "
            "or [bold]systemctl reload mosquitto[/]"
        )


@app.command("init")
def init(
    directory: Path = _DIR,
    auth: str = typer.Option(
        "password",
        "--auth",
        help="password: a username and password per device, over TLS. "
        "certificate: mutual TLS, each device's certificate CN is its identity.",
    ),
    hostname: list[str] = typer.Option(
        [],
        "--hostname",
        "-H",
        help="A host name or IP address appliances use to reach the broker (repeat; default: this machine's name). "
        "Goes into the generated server certificate and the credential bundles.",
    ),
    port: int | None = typer.Option(None, "--port", help="Listener port (default 8883; 1883 with --no-tls)."),
    bind: str = typer.Option("0.0.0.0", "--bind", help="Address the listener binds."),
    no_tls: bool = typer.Option(
        False, "--no-tls", help="Plain MQTT for a demo: only allowed with a loopback --bind such as 127.0.0.1."
    ),
    ca_cert: Path | None = typer.Option(None, help="Use the site's PKI: its CA certificate (PEM)."),
    ca_key: Path | None = typer.Option(None, help="The CA's key, if medge should issue device certificates."),
    server_cert: Path | None = typer.Option(None, help="Use the site's PKI: the broker's certificate (PEM)."),
    server_key: Path | None = typer.Option(None, help="Use the site's PKI: the broker's private key (PEM)."),
    run_as: str = typer.Option("mosquitto", help="The user mosquitto runs as; files it reads are shared with it."),
    pid_file: Path | None = typer.Option(
        None, help="Where the broker writes its pid.", show_default="/run/mosquitto/mosquitto.pid (Debian's)"
    ),
) -> None:
    """Create a broker folder: TLS (a new site CA unless you pass your PKI's files), config, ACLs, persistence.

    Then point Debian's mosquitto service at it (ln -s DIR/conf.d/medge.conf /etc/mosquitto/conf.d/)
    or run it stand-alone (mosquitto -c DIR/mosquitto.conf), and add identities with add-dashboard
    and add-device.
    """
    import socket

    from firmware_integration.broker import DEFAULT_PID_FILE, TlsMaterial, write_broker_config
    from sdk.errors import ConfigError

    tls: TlsMaterial | Literal["generate"] | None
    if no_tls:
        tls = None
    elif ca_cert is None and server_cert is None and server_key is None:
        tls = "generate"
    elif ca_cert is not None and server_cert is not None and server_key is not None:
        tls = TlsMaterial(ca_cert, server_cert, server_key, ca_key)
    else:
        raise ConfigError("to use your PKI pass --ca-cert, --server-cert and --server-key together", field="tls")
    hostnames = hostname or ([bind] if no_tls else [socket.getfqdn()])
    settings = write_broker_config(
        directory,
        tls=tls,
        auth=auth,
        port=port,
        bind_address=bind,
        hostnames=hostnames,
        run_as=run_as or None,
        pid_file=pid_file or DEFAULT_PID_FILE,
    )
    folder = directory.absolute()
    console.print(f"broker      {escape(str(folder))}  [dim]({settings.auth.value} auth, port {settings.port})[/]")
    console.print(f"listener    {settings.bind_address}:{settings.port} {'TLS' if settings.tls else '[red]no TLS[/]'}")
    if settings.tls:
        console.print(f"CA          {escape(str(folder / 'tls' / 'ca.crt'))}  [dim](goes to every appliance)[/]")
    if settings.ca_key:
        console.print(f"CA key      {escape(str(folder / 'ca' / 'ca.key'))}  [dim](keep secret; mode 600)[/]")
    console.print(
        "next        [bold]medge broker add-dashboard DIR[/], [bold]medge broker add-device DIR --site S --device D[/]"
    )


@app.command("add-device")
def add_device_command(
    directory: Path = _DIR,
    site: str = typer.Option(..., "--site", help="The appliance's site name."),
    device: str = typer.Option(..., "--device", help="The appliance's device name."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Bundle folder.", show_default="./mqtt-SITE-DEVICE"),
    install_dir: str = typer.Option(
        "/etc/medge/mqtt", help="Where the bundle will live on the appliance (paths in its mqtt.toml)."
    ),
    replace: bool = typer.Option(False, "--replace", help="Issue new credentials; the old ones stop working."),
    reload: bool = _RELOAD,
) -> None:
    """Let an appliance connect as SITE/DEVICE and write its credential bundle.

    The bundle (ca.crt, a password file or client.crt + client.key, and mqtt.toml: the mqtt
    section of the appliance config) is written with owner-only permissions; secrets are never printed.
    """
    from firmware_integration.broker import add_device

    credentials = add_device(directory, site, device, replace=replace)
    target = out or Path(f"mqtt-{site}-{device}")
    files = credentials.write(target, install_dir=install_dir, overwrite=replace)
    _print_bundle(credentials.username, target, files)
    _hint_reload(reload, directory)


@app.command("add-dashboard")
def add_dashboard_command(
    directory: Path = _DIR,
    name: str = typer.Option(
        "dashboard", "--name", help="The dashboard identity; give each dashboard process its own (ingest-1, ingest-2)."
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Bundle folder.", show_default="./mqtt-NAME"),
    install_dir: str = typer.Option("/etc/medge/mqtt", help="Where the bundle will live on the dashboard host."),
    replace: bool = typer.Option(False, "--replace", help="Issue new credentials; the old ones stop working."),
    reload: bool = _RELOAD,
) -> None:
    """Let a dashboard connect: it reads every medge topic and sends commands and acknowledgements."""
    from firmware_integration.broker import add_dashboard

    credentials = add_dashboard(directory, name, replace=replace)
    target = out or Path(f"mqtt-{name}")
    files = credentials.write(target, install_dir=install_dir, overwrite=replace)
    _print_bundle(credentials.username, target, files)
    _hint_reload(reload, directory)


def _print_bundle(username: str, target: Path, files: list[Path]) -> None:
    console.print(f"identity    [bold]{escape(username)}[/]")
    console.print(f"bundle      {escape(str(target))}/  [dim]({', '.join(f.name for f in files)}; keep secret)[/]")


@app.command("remove-device")
def remove_device_command(
    directory: Path = _DIR,
    site: str = typer.Option(..., "--site", help="The appliance's site name."),
    device: str = typer.Option(..., "--device", help="The appliance's device name."),
    reload: bool = _RELOAD,
) -> None:
    """Stop an appliance from connecting: its password is deleted, or its certificate revoked (CRL) and denied."""
    from firmware_integration.broker import remove_device

    remove_device(directory, site, device)
    console.print(f"removed     [bold]{escape(site)}/{escape(device)}[/]")
    _hint_reload(reload, directory)


@app.command("remove-dashboard")
def remove_dashboard_command(
    directory: Path = _DIR,
    name: str = typer.Option(..., "--name", help="The dashboard identity."),
    reload: bool = _RELOAD,
) -> None:
    """Stop a dashboard identity from connecting."""
    from firmware_integration.broker import remove_dashboard

    remove_dashboard(directory, name)
    console.print(f"removed     [bold]{escape(name)}[/]")
    _hint_reload(reload, directory)


@app.command("list")
def list_command(directory: Path = _DIR) -> None:
    """List the devices and dashboards allowed to connect."""
    from firmware_integration.broker import read_broker_settings

    settings = read_broker_settings(directory)
    table = Table(title=f"{settings.auth.value} auth, port {settings.port}", title_justify="left")
    for column in ("identity", "role", "added", "certificate serial"):
        table.add_column(column)
    for d in settings.dashboards:
        table.add_row(escape(d.username), "dashboard", d.added.isoformat(), d.cert_serial or "")
    for e in sorted(settings.devices, key=lambda e: e.username):
        table.add_row(escape(e.username), "device", e.added.isoformat(), e.cert_serial or "")
    console.print(table)
    if settings.revoked:
        console.print(f"[dim]{len(settings.revoked)} revoked certificate(s) in the CRL[/]")


@app.command("reload")
def reload_command(
    directory: Path = _DIR,
    pid_file: Path | None = typer.Option(None, help="The broker's pid file.", show_default="the folder's pid_file"),
) -> None:
    """Make the running broker re-read its password file, ACL file and CRL (SIGHUP)."""
    _reload(directory, pid_file)
