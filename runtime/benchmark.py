"""Measuring a package on this host next to its FP32 model, in the same run.

Absolute times on shared machines are noise; ratios measured side by side
hold. So both models are timed in alternating rounds in one process (the
same thermal and load conditions for each), and each one's peak memory is
measured alone in a fresh process (``ru_maxrss`` of a spawned child).
"""

from __future__ import annotations

import multiprocessing
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.engines import Engine, load_engine

__all__ = ["BenchFigures", "ModelUnderTest", "bench_side_by_side", "load_package_engine", "peak_rss_mb"]


@dataclass(frozen=True)
class BenchFigures:
    """One model's figures: latency at batch 1, throughput at each batch size, peak memory."""

    label: str
    p50_ms: float
    p95_ms: float
    p99_ms: float
    throughput: dict[int, float]
    peak_rss_mb: float | None = None


@dataclass
class ModelUnderTest:
    """A label, a loaded engine and its input name."""

    label: str
    engine: Engine
    input_name: str


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def bench_side_by_side(
    models: list[ModelUnderTest],
    sample: np.ndarray,
    *,
    batch_sizes: list[int],
    rounds: int = 5,
    iterations: int = 20,
    on_round: Callable[[], None] | None = None,
) -> list[BenchFigures]:
    """Time every model in alternating rounds on the same input.

    Args:
        models: the engines to compare (the first is the one under test).
        sample: one preprocessed input ``(1, ...)``; batches tile it.
        batch_sizes: batch sizes for throughput; batch 1 also gives latency percentiles.
        rounds: alternations between the models.
        iterations: runs per model per round and batch size.
        on_round: called after each round (progress bars).
    """
    latencies: dict[str, list[float]] = {m.label: [] for m in models}
    rates: dict[str, dict[int, list[float]]] = {m.label: {b: [] for b in batch_sizes} for m in models}
    batches = {b: np.ascontiguousarray(np.repeat(sample, b, axis=0)) for b in batch_sizes}
    for model in models:  # warm-up: first runs allocate and pick kernels
        for batch in batches.values():
            for _ in range(3):
                model.engine.run({model.input_name: batch})
    for _ in range(rounds):
        for model in models:
            for size, batch in batches.items():
                feed = {model.input_name: batch}
                start = time.perf_counter()
                for _ in range(iterations):
                    t0 = time.perf_counter()
                    model.engine.run(feed)
                    if size == 1:
                        latencies[model.label].append((time.perf_counter() - t0) * 1e3)
                rates[model.label][size].append(size * iterations / (time.perf_counter() - start))
        if on_round is not None:
            on_round()
    figures = []
    for model in models:
        lat = latencies[model.label] or [float("nan")]
        figures.append(
            BenchFigures(
                label=model.label,
                p50_ms=statistics.median(lat),
                p95_ms=_percentile(lat, 95),
                p99_ms=_percentile(lat, 99),
                throughput={b: statistics.median(r) for b, r in rates[model.label].items()},
            )
        )
    return figures


def _child_peak(loader: Callable[[], tuple[Engine, str]], sample: np.ndarray, queue: multiprocessing.Queue) -> None:
    engine, input_name = loader()
    for _ in range(5):
        engine.run({input_name: sample})
    queue.put(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def peak_rss_mb(loader: Callable[[], tuple[Engine, str]], sample: np.ndarray) -> float:
    """Peak resident memory (MB) of a fresh process that loads a model and runs it.

    ``loader`` must be picklable (a module-level function or ``functools.partial`` of one).
    """
    context = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue = context.Queue()
    process = context.Process(target=_child_peak, args=(loader, sample, queue))
    process.start()
    try:
        value = float(queue.get(timeout=300))
    finally:
        process.join(timeout=30)
    return value


def load_package_engine(
    path: Path, trusted_dir: Path | None, preferences: list[str], threads: int
) -> tuple[Engine, str]:
    """Verify a package and load its engine (module level, so a spawned child can call it)."""
    from sdk.package import verify_package
    from sdk.trust import TrustStore

    package = verify_package(path, TrustStore.load(trusted_dir))
    return load_engine(package, preferences, threads=threads), package.manifest.inputs[0].name
