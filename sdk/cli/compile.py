"""``medge compile``: an FP32 ONNX model → a signed, accuracy-gated package for one device profile."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.progress import Progress, TaskID
from rich.table import Table

from sdk.cli.console import console, err_console, progress_bars

if TYPE_CHECKING:
    from quantization.compile import CompileResult
    from quantization.errors import QuantizationGateError


class RichListener:
    """Draws one progress line per stage and prints the notes of the search."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: TaskID | None = None

    def stage(self, name: str, total: int | None = None) -> None:
        if self.task is not None:
            task = self.progress.tasks[self.task]
            self.progress.update(self.task, completed=task.total or 1, total=task.total or 1)
        self.task = self.progress.add_task(name, total=total)

    def advance(self, done: int, total: int | None = None) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=done, total=total)

    def note(self, message: str) -> None:
        style = "yellow" if message.startswith("[warning]") else "dim"
        text = escape(message.removeprefix("[warning] "))
        self.progress.console.print(f"  [{style}]{'⚠ ' if style == 'yellow' else ''}{text}[/]")

    def close(self) -> None:
        self.stage("done", total=1)
        if self.task is not None:
            self.progress.remove_task(self.task)


def compile_summary(result: CompileResult) -> Table:
    manifest = result.manifest
    table = Table(title=f"compiled {manifest.model.name} {manifest.model.version} for {manifest.engine.profile}")
    table.add_column("", style="bold")
    table.add_column("")
    table.add_row("package", f"{result.path}  ({result.package_bytes / 1e6:.2f} MB, signed)")
    table.add_row("engine", f"{manifest.engine.name}, {manifest.engine.precision}: {manifest.compile.method}")
    ratio = result.fp32_bytes / max(result.engine_bytes, 1)
    table.add_row(
        "size",
        f"FP32 model {result.fp32_bytes / 1e6:.2f} MB → engine files {result.engine_bytes / 1e6:.2f} MB "
        f"({ratio:.1f}x smaller); package {result.fp32_bytes / result.package_bytes:.1f}x smaller than FP32",
    )
    calib = result.calibration
    table.add_row(
        "calibration",
        f"{len(calib.calibration)} slices + {len(calib.evaluation)} held back, sha256 {calib.sha256[:16]}…",
    )
    if result.gate is not None:
        report = result.gate.report
        gate = manifest.model.gate
        lines = [
            f"agreement {report.agreement:.2%} (gate ≥ {gate.min_agreement:.1%})",
            f"flips at threshold {report.flip_rate:.2%} (gate ≤ {gate.max_flip_rate:.1%})",
            f"max |Δp| {report.max_abs_delta:.4f}",
        ]
        if report.auc_reference is not None and report.auc_compiled is not None:
            lines.append(
                f"AUC {report.auc_compiled:.4f} vs FP32 {report.auc_reference:.4f} "
                f"(drop {report.auc_reference - report.auc_compiled:+.4f}, gate ≤ {gate.max_auc_drop})"
            )
        table.add_row("fidelity", "\n".join(lines))
    float_nodes = manifest.compile.float_nodes
    table.add_row(
        "kept in float",
        "\n".join(f"{node}: {why}" for node, why in float_nodes.items()) if float_nodes else "none",
    )
    if result.preflight.reason:
        table.add_row("preflight", result.preflight.reason)
    if result.preflight.required_accelerator_nodes:
        table.add_row("on accelerator", f"{len(result.preflight.required_accelerator_nodes)} compute nodes required")
    table.add_row("golden samples", str(len(manifest.golden)))
    table.add_row("time", ", ".join(f"{stage} {secs:.1f} s" for stage, secs in result.seconds.items()))
    return table


def _gate_failure(exc: QuantizationGateError) -> None:
    err_console.print(f"[bold red]accuracy gate failed:[/] {escape(exc.message)}")
    for failure in exc.failures:
        err_console.print(f"  • {escape(failure)}")
    if exc.worst_layers:
        err_console.print("  layers that cost most accuracy, worst first:")
        for layer in list(exc.worst_layers)[:10]:
            err_console.print(f"    {escape(str(layer))}")
    err_console.print("[bold]no package was written.[/]")


def compile_command(
    model: Path = typer.Argument(..., help="The FP32 ONNX model."),
    config: Path = typer.Option(..., "--config", "-c", help="The model config (model.toml)."),
    profile: str = typer.Option(..., "--profile", "-p", help="Target device profile id (see: medge profiles list)."),
    calib: Path = typer.Option(..., "--calib", help="Folder of DICOM studies for calibration and the accuracy gate."),
    key: Path = typer.Option(..., "--key", "-k", help="The Ed25519 private key that signs the package."),
    out: Path = typer.Option(..., "--out", "-o", help="The package file to write (*.medge)."),
    precision: str = typer.Option("auto", help="auto (the profile's default), int8, fp16 or fp32."),
    labels: Path | None = typer.Option(
        None, help="CSV 'sop_instance_uid,<label>...' of 0/1 ground truth, for AUC and sensitivity/specificity."
    ),
    max_calibration: int = typer.Option(300, min=2, help="Most slices read from the calibration folder."),
    seed: int = typer.Option(0, help="Seed of the calibration/held-back split."),
) -> None:
    """Compile MODEL for a device profile into a signed package, proven to agree with the FP32 model.

    Checks the model against the profile's engine, calibrates on the DICOM folder
    with the runtime's own preprocessing, searches the quantization settings that
    matter until the model config's accuracy gate passes (keeping the costliest
    layers in float if needed), then writes the signed package with its fidelity
    report, compile record, calibration statistics and golden samples. If the gate
    cannot be met, prints the report and writes nothing.
    """
    from device_profiles import get_profile
    from quantization.calibration import labels_from_phantom_truth, read_labels_csv
    from quantization.compile import CompileOptions, compile_package
    from quantization.errors import QuantizationGateError
    from sdk.errors import ConfigError
    from sdk.model_config import load_model_config
    from sdk.signing import load_private_key

    if precision not in {"auto", "int8", "fp16", "fp32"}:
        raise ConfigError(f"--precision must be auto, int8, fp16 or fp32, not {precision!r}", field="precision")
    model_config = load_model_config(config)
    target = get_profile(profile)
    private_key = load_private_key(key)
    truth = read_labels_csv(labels) if labels else labels_from_phantom_truth(calib) or None
    if truth and not labels:
        console.print("[dim]labels: phantom ground truth found in the calibration folder[/]")
    options = CompileOptions(
        precision=precision,  # type: ignore[arg-type]
        max_calibration=max_calibration,
        seed=seed,
        labels=truth,
    )
    progress = progress_bars()
    listener = RichListener(progress)
    try:
        with progress:
            result = compile_package(model, model_config, target, calib, private_key, out, options, listener=listener)
            listener.close()
    except QuantizationGateError as exc:
        _gate_failure(exc)
        raise typer.Exit(1) from None
    console.print(compile_summary(result))
