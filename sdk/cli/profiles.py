"""``medge profiles``: the device profiles medge ships, and which one fits this machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.table import Table

from sdk.cli.console import MedgeTyper, console

if TYPE_CHECKING:
    from device_profiles import DeviceProfile

app = MedgeTyper(help="List the device profiles, show one, or detect the one that fits this machine.")


def _precisions(profile: DeviceProfile) -> str:
    return ", ".join(f"[bold]{p}[/]" if p == profile.default_precision else p for p in profile.precisions)


def _profile_table(profile: DeviceProfile, title: str) -> Table:
    table = Table(show_header=False, title=title, title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")

    def row(key: str, value: Any) -> None:
        table.add_row(key, escape(str(value)))

    row("id", profile.id)
    row("name", profile.name)
    row("vendor", profile.vendor)
    row("board", profile.board)
    row("cpu", f"{profile.cpu_arch}: {profile.cpu}")
    row("cpu cores", profile.cpu_cores or "any")
    row("memory", f"{profile.memory_mb} MB" if profile.memory_mb else "any")
    row("accelerator", f"{profile.accelerator} ({profile.accelerator_kind})")
    row("engine", profile.engine)
    what = "execution providers" if profile.engine == "onnxruntime" else "devices"
    row(what, " → ".join(profile.preferences))
    table.add_row("precisions", f"{_precisions(profile)}  [dim](default in bold)[/]")
    if profile.quantization is not None:
        q = profile.quantization
        scheme = (
            f"{q.format}; activations {q.activation_dtype} {'symmetric' if q.activation_symmetric else 'asymmetric'}; "
            f"weights {q.weight_dtype} {'symmetric' if q.weight_symmetric else 'asymmetric'} "
            f"{'per-channel' if q.weight_per_channel else 'per-tensor'}; "
            f"zero points {'0' if q.zero_point_zero else 'free'}; calibration {q.calibration_method}"
        )
        row("int8 scheme", scheme)
    if profile.int8_hints is not None:
        hints = profile.int8_hints
        pays = [*hints.accelerator_units, *(f"CPU flag {flag}" for flag in hints.cpu_flags)]
        row("int8 pays off with", " or ".join(pays))
        if hints.note:
            row("int8 note", hints.note)
    row("memory budget", f"{profile.memory_budget_mb} MB")
    row("default threads", profile.default_threads or "engine default")
    row("batch", f"default {profile.batch.default}, max {profile.batch.max}")
    if profile.device_models:
        row("detected by", ", ".join(repr(m) for m in profile.device_models))
    row("description", profile.description)
    return table


@app.command("list")
def list_command(
    as_json: bool = typer.Option(False, "--json", help="Print every profile as a JSON list instead of a table."),
) -> None:
    """List the device profiles shipped with medge."""
    from device_profiles import list_profiles, profiles_dir

    profiles = list_profiles()
    if as_json:
        console.print_json(json.dumps([profile.model_dump(mode="json") for profile in profiles]))
        return
    table = Table(title=f"device profiles in {profiles_dir()}", title_justify="left")
    for column in ("id", "engine", "accelerator", "precisions", "board"):
        table.add_column(column, overflow="fold", no_wrap=column == "id")
    for profile in profiles:
        table.add_row(
            profile.id, profile.engine, escape(profile.accelerator), _precisions(profile), escape(profile.board)
        )
    console.print(table)
    console.print("[dim]default precision in bold; details: medge profiles show ID[/]")


@app.command("show")
def show(
    profile_id: str = typer.Argument(
        ..., metavar="ID", help="The profile id, as listed by [bold]medge profiles list[/]."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the profile as JSON (every field)."),
) -> None:
    """Show everything a device profile says: engine, providers/devices, precisions, INT8 scheme, limits."""
    from device_profiles import get_profile

    profile = get_profile(profile_id)
    if as_json:
        console.print_json(json.dumps(profile.model_dump(mode="json")))
        return
    console.print(_profile_table(profile, profile.name))


@app.command("check")
def check(
    path: Path = typer.Argument(..., help="A device profile TOML file (its name must be ID.toml)."),
) -> None:
    """Validate a device profile file, e.g. one written for a new board, and show it.

    Exits 2 with the file, the field and the reason when the profile is malformed.
    """
    from device_profiles import load_profile

    profile = load_profile(path)
    console.print(_profile_table(profile, f"{path}: valid"))


@app.command("detect")
def detect(
    as_json: bool = typer.Option(False, "--json", help="Print the detection and the host facts as JSON."),
) -> None:
    """Name the device profile that fits this machine, with the reasons and the facts they rest on."""
    from device_profiles import detect_host, get_profile, int8_expected_to_pay_off, list_profiles, match_profile

    facts = detect_host()
    detection = match_profile(facts, list_profiles())
    profile = get_profile(detection.profile_id)
    int8_ok, int8_reason = int8_expected_to_pay_off(profile, facts)
    if as_json:
        payload = {
            "profile": detection.profile_id,
            "reasons": detection.reasons,
            "int8_expected_to_pay_off": int8_ok,
            "int8_reason": int8_reason,
            "facts": facts.model_dump(mode="json"),
        }
        console.print_json(json.dumps(payload))
        return
    console.print(f"profile  [bold green]{detection.profile_id}[/]  ({escape(profile.name)})")
    for reason in detection.reasons:
        console.print(f"  • {escape(reason)}")
    table = Table(show_header=False, title="host facts", title_justify="left")
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    memory = f"{facts.memory_total_mb} MB" if facts.memory_total_mb is not None else "unknown"
    notable = sorted(
        flag
        for flag in facts.cpu_flags
        if flag.startswith(("avx", "amx")) or flag in ("neon", "asimd", "asimddp", "i8mm", "sve")
    )
    rows = [
        ("cpu", f"{facts.machine} {facts.cpu_vendor} {facts.cpu_model}".strip()),
        ("cpu count", str(facts.cpu_count)),
        ("cpu flags", " ".join(notable) or "none of note"),
        ("memory", memory),
        ("nvidia gpu", "yes" if facts.nvidia_gpu else "no"),
        ("jetson", f"yes ({facts.device_model}, L4T {facts.tegra_release})" if facts.tegra else "no"),
        ("intel gpu", f"yes ({', '.join(facts.render_nodes)})" if facts.intel_gpu else "no"),
        ("intel npu", f"yes ({', '.join(facts.accel_nodes)})" if facts.intel_npu else "no"),
        (
            "onnxruntime",
            f"{facts.onnxruntime_version}: {', '.join(facts.onnxruntime_providers)}"
            if facts.onnxruntime_version
            else "not installed",
        ),
        (
            "openvino",
            f"{facts.openvino_version}: {', '.join(facts.openvino_devices) or 'no devices'}"
            if facts.openvino_version
            else "not installed",
        ),
    ]
    for key, value in rows:
        table.add_row(key, escape(value))
    console.print(table)
