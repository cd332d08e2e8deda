"""``medge keys``: make signing keys and manage the keys this machine trusts."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from sdk.cli.console import MedgeTyper, console

app = MedgeTyper(help="Make package-signing keys and manage the trusted keys of this machine.")


@app.command("generate")
def generate(
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write NAME.key (private, mode 600) and NAME.pub."),
    name: str = typer.Option("medge-signing", help="File name stem of the key pair."),
    force: bool = typer.Option(False, "--force", help="Replace an existing key pair of that name."),
    trust: bool = typer.Option(False, "--trust", help="Also add the public key to this machine's trusted keys."),
) -> None:
    """Generate an Ed25519 key pair for signing model packages.

    Keep the private key off appliances; ship only the .pub file to them.
    """
    from sdk.signing import generate_keypair
    from sdk.trust import TrustStore

    pair = generate_keypair(out, name, overwrite=force)
    console.print(f"key id      [bold]{pair.key_id}[/]")
    console.print(f"private key {pair.private_path}  [dim](keep secret)[/]")
    console.print(f"public key  {pair.public_path}")
    if trust:
        store = TrustStore.load()
        store.add(pair.public_path)
        console.print(f"trusted in  {store.folder}")


@app.command("trust")
def trust_key(public_key: Path = typer.Argument(..., help="A PEM public key (.pub) to trust.")) -> None:
    """Trust packages signed by PUBLIC_KEY on this machine (copies it into the local trust store)."""
    from sdk.trust import TrustStore

    store = TrustStore.load()
    ident = store.add(public_key)
    console.print(f"trusted key [bold]{ident}[/] in {store.folder}")


@app.command("list")
def list_keys() -> None:
    """List the keys this machine trusts for model packages."""
    from sdk.trust import TrustStore

    store = TrustStore.load()
    table = Table(title=f"trusted keys in {store.folder}")
    table.add_column("key id")
    for ident in sorted(store):
        table.add_row(ident)
    console.print(table)
    if not store:
        console.print("[yellow]no trusted keys:[/] add one with [bold]medge keys trust KEY.pub[/]")


@app.command("endorse")
def endorse(
    signer: Path = typer.Option(
        ..., "--with", help="The private key (.key) of a signing key the appliances trust now."
    ),
    add: list[Path] = typer.Option([], "--add", help="A public key (.pub) the appliances should trust (repeatable)."),
    retire: list[str] = typer.Option([], "--retire", help="A key id the appliances should stop trusting (repeatable)."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the endorsement (JSON)."),
) -> None:
    """Endorse a key rotation: new keys to trust and old ones to retire, signed by a key trusted now.

    Upload the endorsement on the dashboard (Packages → Rotate keys); each
    appliance checks the signature against its own trusted keys before it
    changes them, so the dashboard cannot make appliances trust a key on its
    own. Rotate in two steps: add the new key, re-sign packages with it, then
    retire the old one.
    """
    from sdk.errors import KeyStoreError
    from sdk.fleet_contracts import endorse_keys
    from sdk.signing import key_id, load_private_key, load_public_key, public_key_pem

    if not add and not retire:
        raise KeyStoreError("nothing to endorse: give --add KEY.pub and/or --retire KEY_ID")
    private = load_private_key(signer)
    pems = [public_key_pem(load_public_key(path)).decode() for path in add]
    rotation = endorse_keys(private, pems, list(retire))
    if key_id(private.public_key()) in retire:
        console.print("[yellow]note:[/] the endorsing key retires itself; appliances keep it if it is their last one")
    try:
        out.write_text(rotation.model_dump_json(indent=2) + "\n")
    except OSError as exc:
        raise KeyStoreError(f"cannot write the endorsement: {exc.strerror}", path=out) from exc
    console.print(f"endorsement by [bold]{rotation.signer}[/]: add {len(pems)}, retire {len(retire)} → {out}")
