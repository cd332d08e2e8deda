"""Measuring a package on this host next to its FP32 model, in the same run.

Absolute times on shared machines are noise; ratios measured side by side
hold. So both models are timed in alternating rounds in one process (the
same thermal and load conditions for each), and each one's peak memory is
measured alone in a fresh process (``ru_maxrss`` of a spawned child).

A package's cold start (imports, verify, engine load and warm-up, golden
samples: what the appliance does before a package goes live) is measured in
a fresh interpreter too, so that imports are counted as a real start pays
them (:func:`package_cold_start`), next to a bare ONNX Runtime session on the
same engine file (:func:`bare_session_cold_start`).
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.engines import Engine, load_engine

__all__ = [
    "BenchFigures",
    "ColdStart",
    "ModelUnderTest",
    "bare_session_cold_start",
    "bench_side_by_side",
    "load_package_engine",
    "package_cold_start",
    "peak_rss_mb",
]


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


@dataclass(frozen=True)
class ColdStart:
    """A fresh process that got a model ready to serve: how long each part took and the memory it held.

    Attributes:
        imports_s: importing what the start needs (measured inside the child, after the interpreter started).
        ready_s: everything after the imports until the model has answered (verify, load, warm-up, golden).
        stages_s: ``ready_s`` by stage, where the child can tell.
        process_s: the whole child from the parent's clock (interpreter start and exit included).
        peak_rss_mb: the child's peak resident memory (``VmHWM``).
        rss_mb: its resident memory once the model is ready (``VmRSS``).
    """

    imports_s: float
    ready_s: float
    stages_s: dict[str, float]
    process_s: float
    peak_rss_mb: float
    rss_mb: float

    @property
    def total_s(self) -> float:
        """Imports plus getting ready: what a service start pays before it can take a study."""
        return self.imports_s + self.ready_s


# The children print one JSON line. They import only what they measure; the clock starts before the first import.
_MEMORY_PROBE = """
def _memory():
    status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    kb = lambda key: float(status[key].split()[0]) if key in status else float("nan")
    return kb("VmHWM") / 1024, kb("VmRSS") / 1024
"""

_PACKAGE_CHILD = (
    """
import time
_t0 = time.perf_counter()
import json, sys
from pathlib import Path
from device_profiles import get_profile
from runtime import packages as _packages
from runtime.analyzer import Analyzer
from sdk.trust import TrustStore
_t1 = time.perf_counter()
"""
    + _MEMORY_PROBE
    + """
args = json.loads(sys.argv[1])
stages = {}
def _timed(name, func):
    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return func(*a, **k)
        finally:
            stages[name] = stages.get(name, 0.0) + time.perf_counter() - t
    return wrapper
# Time the stages of the real PackageSet.load by wrapping the two calls it makes besides the engine load.
_packages.verify_package = _timed("verify", _packages.verify_package)
Analyzer.check_golden = _timed("golden samples", Analyzer.check_golden)
package_set = _packages.PackageSet(
    Path(args["folder"]), TrustStore.load(args["trusted_dir"]), get_profile(args["profile"])
)
package_set.load()
_t2 = time.perf_counter()
stages["engine load and warm-up"] = (_t2 - _t1) - sum(stages.values())
peak, rss = _memory()
refused = [r.reason for r in package_set.refused]
print(json.dumps({"imports_s": _t1 - _t0, "ready_s": _t2 - _t1, "stages_s": stages, "peak_rss_mb": peak,
                  "rss_mb": rss, "live": len(package_set.live), "refused": refused}))
"""
)

_BARE_SESSION_CHILD = (
    """
import time
_t0 = time.perf_counter()
import json, sys
import numpy as np
import onnxruntime as ort
_t1 = time.perf_counter()
"""
    + _MEMORY_PROBE
    + """
args = json.loads(sys.argv[1])
session = ort.InferenceSession(args["model"], providers=["CPUExecutionProvider"])
_t2 = time.perf_counter()
feed = {}
for item in session.get_inputs():
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in item.shape]
    feed[item.name] = np.zeros(shape, dtype=np.float32)
session.run(None, feed)
_t3 = time.perf_counter()
peak, rss = _memory()
print(json.dumps({"imports_s": _t1 - _t0, "ready_s": _t3 - _t1,
                  "stages_s": {"session": _t2 - _t1, "first run": _t3 - _t2},
                  "peak_rss_mb": peak, "rss_mb": rss, "live": 1, "refused": []}))
"""
)


def _run_child(code: str, args: dict[str, str], timeout_s: float) -> ColdStart:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    process_s = time.perf_counter() - started
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"cold-start child failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    result = json.loads(lines[-1])
    if result["live"] != 1:
        raise RuntimeError(f"the package did not go live in the cold-start child: {result['refused']}")
    return ColdStart(
        imports_s=result["imports_s"],
        ready_s=result["ready_s"],
        stages_s=result["stages_s"],
        process_s=process_s,
        peak_rss_mb=result["peak_rss_mb"],
        rss_mb=result["rss_mb"],
    )


def package_cold_start(folder: Path, trusted_dir: Path, profile_id: str, *, timeout_s: float = 300.0) -> ColdStart:
    """Start a fresh interpreter that brings the packages in ``folder`` live as the appliance does.

    It runs :meth:`runtime.packages.PackageSet.load` (verify, engine load and
    warm-up, golden samples) and times the verify and golden-sample stages
    inside it. ``folder`` should hold one package.

    Raises:
        RuntimeError: the child failed or the package did not go live.
    """
    args = {"folder": str(folder), "trusted_dir": str(trusted_dir), "profile": profile_id}
    return _run_child(_PACKAGE_CHILD, args, timeout_s)


def bare_session_cold_start(model: Path, *, timeout_s: float = 300.0) -> ColdStart:
    """Start a fresh interpreter that imports ONNX Runtime, opens ``model`` and runs it once on zeros (the floor).

    Raises:
        RuntimeError: the child failed.
    """
    return _run_child(_BARE_SESSION_CHILD, {"model": str(model)}, timeout_s)
