"""``medge package``: look inside a model package and verify it."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from sdk.cli.console import MedgeTyper, console, err_console

app = MedgeTyper(help="Inspect and verify signed model packages (*.medge).")


@app.command("inspect")
def inspect(
    package: Path = typer.Argument(..., help="The package file."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole manifest as JSON."),
) -> None:
    """Show what a package holds: model, engine, precision, profile, compile record, fidelity, files.

    This does not check the signature; use [bold]medge package verify[/] for that.
    """
    from sdk.package import open_package

    pkg = open_package(package)
    manifest = pkg.manifest
    if as_json:
        console.print_json(json.dumps(manifest.model_dump(mode="json")))
        return
    model = manifest.model
    table = Table(show_header=False, title=str(package))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("model", f"{model.name} {model.version} ({model.task})")
    table.add_row("labels", ", ".join(f"{label} ≥ {model.thresholds[label]}" for label in model.labels))
    table.add_row("engine", f"{manifest.engine.name}  files: {', '.join(manifest.engine.files)}")
    table.add_row("precision", manifest.engine.precision)
    table.add_row("profile", manifest.engine.profile)
    for tensor in manifest.inputs:
        table.add_row("input", f"{tensor.name} {tensor.shape} {tensor.dtype}")
    for tensor in manifest.outputs:
        table.add_row("output", f"{tensor.name} {tensor.shape} {tensor.dtype}")
    compiled = manifest.compile
    table.add_row("compiled", f"{compiled.created:%Y-%m-%d %H:%M:%S %Z} by {compiled.toolchain} ({compiled.method})")
    if compiled.calibration:
        cal = compiled.calibration
        table.add_row("calibration", f"{cal.size} samples, {cal.method}, sha256 {cal.sha256[:16]}…")
    if manifest.fidelity:
        fid = manifest.fidelity
        table.add_row(
            "fidelity",
            f"agreement {fid.agreement:.2%}, flips {fid.flip_rate:.2%}, max |Δp| {fid.max_abs_delta:.4f} "
            f"on {fid.samples} samples",
        )
    table.add_row("golden samples", str(len(manifest.golden)))
    table.add_row("signed by", pkg.signer_key_id)
    table.add_row("files", "\n".join(f"{name}  {len(pkg.members[name]):,} B" for name in sorted(manifest.files)))
    console.print(table)


@app.command("verify")
def verify(
    package: Path = typer.Argument(..., help="The package file."),
    trust: list[Path] = typer.Option(
        None, "--trust", help="Trust only this public key (repeatable). Default: this machine's trusted keys."
    ),
) -> None:
    """Verify a package: canonical archive, format version, trusted key, signature, file list and hashes.

    Exits 0 when every check passes, 1 and names the failed check otherwise.
    """
    from sdk.package import check_package
    from sdk.signing import load_public_key
    from sdk.trust import TrustStore

    store = TrustStore.from_keys(load_public_key(path) for path in trust) if trust else TrustStore.load()
    results = check_package(package, store)
    for result in results:
        mark = "[green]pass[/]" if result.ok else "[bold red]FAIL[/]"
        console.print(f"{mark}  {result.check:<10} {result.detail}")
    if not results or not results[-1].ok:
        failed = results[-1].check if results else "archive"
        err_console.print(f"[bold red]verification failed:[/] {failed} check")
        raise typer.Exit(1)
    console.print(f"[bold green]{package} verified[/]")
