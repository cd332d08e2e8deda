"""``medge bench``: a package's speed and memory on this host, next to its FP32 model."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import typer
from rich.table import Table

from sdk.cli.console import console, progress_bars


def bench(
    package: Path = typer.Argument(..., help="The package to measure."),
    fp32: Path | None = typer.Option(
        None, help="The FP32 ONNX model it was compiled from (default: the shipped reference model, if it is that)."
    ),
    trust: Path | None = typer.Option(None, help="Folder of trusted public keys (default: this machine's)."),
    rounds: int = typer.Option(5, min=1, max=100, help="Alternating rounds between the package and FP32."),
    iterations: int = typer.Option(20, min=1, max=10_000, help="Runs per model, round and batch size."),
    batch: int | None = typer.Option(None, min=1, help="The larger batch size (default: the profile's)."),
    memory: bool = typer.Option(True, help="Also measure each model's peak memory in a fresh process."),
) -> None:
    """Measure latency p50/p95/p99, throughput at batch 1 and the profile's batch, and peak memory.

    The package and its FP32 model run in alternating rounds in one process, so
    the ratios hold on a busy machine even where absolute times do not.
    """
    import gzip
    import io

    import numpy as np

    from device_profiles import get_profile
    from quantization.fp32_reference import fp32_reference_engine, load_fp32_engine
    from runtime.benchmark import (
        ModelUnderTest,
        bench_side_by_side,
        load_package_engine,
        peak_rss_mb,
    )
    from runtime.engines import load_engine
    from sdk.errors import ConfigError
    from sdk.package import verify_package
    from sdk.reference_model import onnx_path as reference_onnx
    from sdk.trust import TrustStore

    pkg = verify_package(package, TrustStore.load(trust))
    manifest = pkg.manifest
    profile = get_profile(manifest.engine.profile)
    if fp32 is None:
        if manifest.model.name != "chest-ct-nodule":
            raise ConfigError("give the FP32 model this package was compiled from with --fp32 MODEL.onnx")
        fp32 = reference_onnx()
    threads = profile.default_threads
    preferences = profile.preferences
    sample_member = manifest.golden[0].input if manifest.golden else None
    if sample_member is None:
        sample = np.zeros(manifest.model.preprocessing.input_shape(1), dtype=np.float32)
    else:
        raw = pkg.read(sample_member)
        sample = np.load(io.BytesIO(gzip.decompress(raw) if sample_member.endswith(".gz") else raw)).astype(np.float32)
    sizes = sorted({1, batch or profile.batch.default})
    models = [
        ModelUnderTest(
            f"package ({manifest.engine.precision})",
            load_engine(pkg, preferences, threads=threads),
            manifest.inputs[0].name,
        ),
        ModelUnderTest("FP32 model", fp32_reference_engine(pkg, fp32, preferences, threads), manifest.inputs[0].name),
    ]
    with progress_bars() as progress:
        task = progress.add_task("timing (alternating rounds)", total=rounds)
        figures = bench_side_by_side(
            models,
            sample,
            batch_sizes=sizes,
            rounds=rounds,
            iterations=iterations,
            on_round=lambda: progress.advance(task),
        )
    peaks: list[float | None] = [None, None]
    if memory:
        with console.status("peak memory, each model alone in a fresh process"):
            peaks = [
                peak_rss_mb(partial(load_package_engine, package, trust, preferences, threads), sample),
                peak_rss_mb(partial(load_fp32_engine, package, fp32, preferences, threads), sample),
            ]
    for model in models:
        model.engine.close()
    table = Table(title=f"{manifest.model.name} {manifest.model.version} on this host ({profile.id})")
    table.add_column("")
    for figure in figures:
        table.add_column(figure.label, justify="right")
    table.add_column("ratio", justify="right")
    package_fig, fp32_fig = figures

    def row(name: str, a: float | None, b: float | None, fmt: str, lower_is_better: bool) -> None:
        ratio = "" if a is None or b is None or not b else f"{a / b:.2f}x"
        if ratio and lower_is_better and a is not None and b is not None and a <= b:
            ratio = f"[green]{ratio}[/]"
        table.add_row(name, "-" if a is None else format(a, fmt), "-" if b is None else format(b, fmt), ratio)

    row("latency p50 (ms, batch 1)", package_fig.p50_ms, fp32_fig.p50_ms, ".2f", True)
    row("latency p95 (ms, batch 1)", package_fig.p95_ms, fp32_fig.p95_ms, ".2f", True)
    row("latency p99 (ms, batch 1)", package_fig.p99_ms, fp32_fig.p99_ms, ".2f", True)
    for size in sizes:
        row(f"throughput batch {size} (img/s)", package_fig.throughput[size], fp32_fig.throughput[size], ".1f", False)
    row("peak memory (MB)", peaks[0], peaks[1], ".0f", True)
    row(
        "engine files (MB)",
        sum(len(pkg.read(f)) for f in manifest.engine.files) / 1e6,
        fp32.stat().st_size / 1e6,
        ".2f",
        True,
    )
    console.print(table)
