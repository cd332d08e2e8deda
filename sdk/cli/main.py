"""The ``medge`` command line: one entry point for device makers and field techs."""

from __future__ import annotations

import logging

import typer

from sdk.cli import broker, dashboard, keys, ota, package, profiles
from sdk.cli.bench import bench
from sdk.cli.compile import compile_command
from sdk.cli.console import MedgeTyper, console
from sdk.cli.deid import deid_command
from sdk.cli.demo import demo
from sdk.cli.provision import provision
from sdk.cli.selftest import selftest
from sdk.cli.serve import serve

app = MedgeTyper(
    add_completion=False,
    help=(
        "medge: compile, sign, run and report medical-imaging models on edge appliances.\n\n"
        "Start with [bold]medge profiles detect[/] to see which device profile fits this machine."
    ),
)
app.add_typer(profiles.app, name="profiles")
app.add_typer(keys.app, name="keys")
app.add_typer(package.app, name="package")
app.add_typer(broker.app, name="broker")
app.add_typer(dashboard.app, name="dashboard")
app.add_typer(ota.app, name="ota")
app.command("compile")(compile_command)
app.command("bench")(bench)
app.command("serve")(serve)
app.command("demo")(demo)
app.command("selftest")(selftest)
app.command("provision")(provision)
app.command("deid")(deid_command)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(f"medge {version('medge')}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details to stderr."),
    show_version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )


def run() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    run()
