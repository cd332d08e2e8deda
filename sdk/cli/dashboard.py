"""``medge dashboard``: run the central dashboard (web UI, REST API, MQTT ingest), add users, verify the audit log."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer
from rich.markup import escape

from sdk.cli.console import EXIT_USER_ERROR, MedgeTyper, console, err_console, report_error
from sdk.errors import MedgeError

app = MedgeTyper(
    help=(
        "The site's dashboard: hospital staff watch and act on findings, field techs see which appliances are "
        "healthy.\n\n"
        "[bold]medge dashboard --config dashboard.toml[/] serves the web UI and REST API and consumes the "
        "appliances' MQTT messages into the store. Create the first admin with "
        "[bold]medge dashboard create-user --config dashboard.toml --username admin --role admin[/]. "
        "See docs/dashboard.md."
    ),
    invoke_without_command=True,
)

_CONFIG = typer.Option(..., "--config", "-c", help="The dashboard config (dashboard.toml).")


@app.callback(invoke_without_command=True)
def main(
    ctx: typer.Context,
    config: Path | None = typer.Option(None, "--config", "-c", help="The dashboard config (dashboard.toml)."),
    json_logs: bool = typer.Option(True, "--json-logs/--plain-logs", help="Structured JSON logs (for journald)."),
) -> None:
    """Serve the dashboard until stopped (SIGTERM or Ctrl-C)."""
    if ctx.invoked_subcommand is not None:
        return
    if config is None:
        err_console.print("[bold red]error:[/] --config is required to serve the dashboard")
        raise typer.Exit(EXIT_USER_ERROR)
    try:
        _serve(config, json_logs)
    except MedgeError as exc:
        report_error(exc)
        raise typer.Exit(EXIT_USER_ERROR) from exc


def _serve(path: Path, json_logs: bool) -> None:
    from sqlalchemy import func, select

    from dashboard.settings import load_dashboard_config
    from dashboard.store import User
    from dashboard.web import DashboardService

    settings = load_dashboard_config(path)
    if json_logs:
        from runtime.service_logging import configure_json_logging

        configure_json_logging(logging.INFO)
    registrar = None
    if settings.enrollment.broker_dir is not None:
        from firmware_integration.broker.registrar import FolderRegistrar

        registrar = FolderRegistrar(settings.enrollment.broker_dir, reload_target=settings.enrollment.broker_reload)
    service = DashboardService(settings, registrar=registrar)
    with service.store.session() as session:
        users = session.scalar(select(func.count()).select_from(User)) or 0
    console.print(
        f"[bold]medge dashboard[/] on {service.url} · MQTT {escape(settings.mqtt.host)}:{settings.mqtt.port} · "
        f"store {service.store.dialect}"
    )
    if not users:
        console.print(
            "[yellow]no users yet:[/] run [bold]medge dashboard create-user --config "
            f"{escape(str(path))} --username admin --role admin[/]"
        )
    if registrar is None:
        console.print(
            f"[yellow]enrollment is off:[/] set [bold]{escape('[enrollment] broker_dir')}[/] to enroll appliances"
        )
    service.run()


@app.command("create-user")
def create_user_command(
    config: Path = _CONFIG,
    username: str = typer.Option(..., "--username", "-u", help="Login name (case-insensitive)."),
    role: str = typer.Option(..., "--role", "-r", help="clinician, technician or admin."),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from standard input."),
) -> None:
    """Create a dashboard user (the password is asked twice, or read from stdin)."""
    from dashboard.audit import CLI_ACTOR
    from dashboard.auth import check_password_policy, create_user
    from dashboard.settings import load_dashboard_config
    from dashboard.store import create_store

    settings = load_dashboard_config(config)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    check_password_policy(password, username)
    with create_store(settings.store_url) as store:
        user = create_user(store, username, role, password, actor=CLI_ACTOR)
    console.print(f"created user [bold]{escape(user.username)}[/] ({user.role.value})")


@app.command("create-token")
def create_token_command(
    config: Path = _CONFIG,
    name: str = typer.Option(..., "--name", "-n", help="What the token is for (e.g. validation-export)."),
    role: str = typer.Option(..., "--role", "-r", help="The role it acts with: clinician, technician or admin."),
    valid_days: float | None = typer.Option(None, "--valid-days", help="Expire after this many days."),
) -> None:
    """Create an API token for a script; it is printed once and never stored."""
    from dashboard.audit import CLI_ACTOR
    from dashboard.auth import create_token
    from dashboard.settings import load_dashboard_config
    from dashboard.store import create_store

    settings = load_dashboard_config(config)
    with create_store(settings.store_url) as store:
        created = create_token(store, name, role, actor=CLI_ACTOR, valid_days=valid_days)
    err_console.print(f"token [bold]{escape(name)}[/] ({created.info.role.value}); shown once:")
    console.print(created.secret, highlight=False, soft_wrap=True)


@app.command("audit-verify")
def audit_verify_command(config: Path = _CONFIG) -> None:
    """Check the audit log's hash chain; names the first broken entry (exit code 1)."""
    from dashboard.audit import verify_chain
    from dashboard.settings import load_dashboard_config
    from dashboard.store import create_store

    settings = load_dashboard_config(config)
    with create_store(settings.store_url) as store:
        report = verify_chain(store)
    if report.intact:
        console.print(f"[green]audit log intact:[/] {report.entries} entries, head hash {report.head_hash}")
        return
    err_console.print(
        f"[bold red]audit log broken at entry {report.first_broken}:[/] {escape(report.reason or '')} "
        f"({report.entries} entries before it check out)"
    )
    raise typer.Exit(1)
