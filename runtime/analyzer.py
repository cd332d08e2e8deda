"""Running one verified package on DICOM datasets: preprocess → engine → post-process.

The analyzer is the unit the runtime schedules: it owns a loaded engine and
the package's preprocessing spec, checks the package's golden samples
(on-device acceptance), and times each stage for the finding's latency
breakdown. The package's plugins (:mod:`sdk.plugins`) run inside
:func:`sdk.preprocessing.preprocess` and after :func:`runtime.postprocess.classify`.
"""

from __future__ import annotations

import gzip
import io
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom import Dataset

from runtime.engines import Engine, Placement, load_engine
from runtime.postprocess import Classification, apply_plugin, classify
from sdk.errors import ConfigError, EngineError
from sdk.input_statistics import drift_scores
from sdk.package import ModelPackage
from sdk.plugins import PostprocessEvent, PostprocessPlugin, get_registry
from sdk.preprocessing import preprocess

__all__ = ["Analysis", "Analyzer", "GoldenReport", "Prepared"]


@dataclass(frozen=True)
class Analysis:
    """The result for one image (frame) with its stage timings in milliseconds."""

    frame: int | None
    result: Classification
    latency_ms: dict[str, float] = field(default_factory=dict)
    drift: float | None = None
    """Distance of this image's input from the calibration inputs (0 same, 1 disjoint); None without statistics."""


@dataclass(frozen=True)
class Prepared:
    """Preprocessed frames of one dataset, ready for the engine."""

    batch: np.ndarray
    preprocess_ms: float


@dataclass(frozen=True)
class GoldenReport:
    """How the package's golden samples came out on this device."""

    passed: int
    total: int
    worst_delta: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.total > 0 and self.passed == self.total


def _load_npy(name: str, data: bytes) -> np.ndarray:
    if name.endswith(".gz"):
        data = gzip.decompress(data)
    return np.load(io.BytesIO(data), allow_pickle=False)


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


class Analyzer:
    """One live package.

    Args:
        package: a package that passed :func:`sdk.package.verify_package`.
        preferences: providers/devices in the profile's order.
        threads: engine threads (0: the engine's default).
        cache_dir: engine model cache (OpenVINO).

    Raises:
        EngineError: the engine cannot load the package, or a plugin it names
            cannot be made (:class:`runtime.packages.PackageSet` checks the
            plugins first and refuses such a package with the check ``plugin``).
    """

    def __init__(
        self, package: ModelPackage, preferences: list[str], *, threads: int = 0, cache_dir: Path | None = None
    ) -> None:
        self.package = package
        self.manifest = package.manifest
        config = self.manifest.model
        self._postprocess: PostprocessPlugin | None = None
        try:
            if config.preprocessing.plugin is not None:
                get_registry().preprocess_hook(config.preprocessing.plugin)  # made now, not on the first study
            if config.postprocessing.plugin is not None:
                self._postprocess = get_registry().postprocess_hook(config.postprocessing.plugin)
        except ConfigError as exc:
            raise EngineError(f"package {config.name}: {exc.message}", field=exc.field) from exc
        self._engine: Engine = load_engine(package, preferences, threads=threads, cache_dir=cache_dir)
        self._input = self.manifest.inputs[0].name

    @property
    def placement(self) -> Placement:
        return self._engine.placement

    def run_tensor(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run a preprocessed batch through the engine."""
        return self._engine.run({self._input: np.ascontiguousarray(batch, dtype=np.float32)})

    def check_golden(self) -> GoldenReport:
        """Run every golden sample and compare with the expected outputs.

        Raises:
            EngineError: the package has no golden samples (it cannot be accepted).
        """
        samples = self.manifest.golden
        if not samples:
            raise EngineError(f"package {self.manifest.model.name} has no golden samples to accept it with")
        passed, worst = 0, 0.0
        for sample in samples:
            outputs = self.run_tensor(_load_npy(sample.input, self.package.read(sample.input)))
            delta = 0.0
            for name, member in sample.outputs.items():
                expected = _load_npy(member, self.package.read(member))
                got = outputs.get(name)
                if got is None or got.shape != expected.shape:
                    delta = float("inf")
                    break
                delta = max(delta, float(np.max(np.abs(got.astype(np.float64) - expected))))
            worst = max(worst, delta)
            passed += delta <= sample.tolerance
        return GoldenReport(passed, len(samples), worst, min(s.tolerance for s in samples))

    def prepare(self, ds: Dataset) -> Prepared:
        """Preprocess every frame of a dataset (the part that can overlap with another image's inference).

        Raises:
            PreprocessingError: the dataset cannot become a model input.
        """
        t0 = time.perf_counter()
        batch = preprocess(ds, self.manifest.model.preprocessing)
        return Prepared(batch, (time.perf_counter() - t0) * 1e3)

    def finish(self, ds: Dataset, prepared: Prepared) -> list[Analysis]:
        """Run the engine on prepared frames and post-process each.

        Raises:
            EngineError: the engine failed or its outputs do not fit the config.
        """
        config = self.manifest.model
        batch = prepared.batch
        t1 = time.perf_counter()
        outputs = self.run_tensor(batch)
        t2 = time.perf_counter()
        frames = len(batch)
        results = [classify(outputs, config, index, ds) for index in range(frames)]
        if self._postprocess is not None:
            results = self._plugin(self._postprocess, ds, outputs, batch, results)
        stats = self.manifest.input_statistics
        drift: list[float | None] = list(drift_scores(stats, batch)) if stats else [None] * frames
        t3 = time.perf_counter()
        latency = {
            "preprocess": round(prepared.preprocess_ms / frames, 3),
            "infer": round((t2 - t1) * 1e3 / frames, 3),
            "postprocess": round((t3 - t2) * 1e3 / frames, 3),
        }
        multi = frames > 1
        return [
            Analysis(index if multi else None, result, latency, drift[index]) for index, result in enumerate(results)
        ]

    def _plugin(
        self,
        hook: PostprocessPlugin,
        ds: Dataset,
        outputs: dict[str, np.ndarray],
        batch: np.ndarray,
        results: list[Classification],
    ) -> list[Classification]:
        ref = self.manifest.model.postprocessing.plugin
        assert ref is not None
        frozen = {name: _read_only(value) for name, value in outputs.items()}
        inputs = _read_only(batch)
        return [
            apply_plugin(
                hook,
                ref.name,
                PostprocessEvent(result, frozen, index, inputs[index], ds, self.manifest.model, ref.settings),
            )
            for index, result in enumerate(results)
        ]

    def analyze(self, ds: Dataset) -> list[Analysis]:
        """Analyse every frame of a dataset (:meth:`prepare` then :meth:`finish`)."""
        return self.finish(ds, self.prepare(ds))

    def close(self) -> None:
        self._engine.close()
