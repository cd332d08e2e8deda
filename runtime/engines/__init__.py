"""Inference engines behind one tiny interface (:class:`Engine`)."""

from __future__ import annotations

import os
from pathlib import Path

from runtime.engines.base import Engine, Placement
from sdk.errors import EngineError
from sdk.package import ModelPackage

__all__ = ["Engine", "Placement", "load_engine"]


def load_engine(
    package: ModelPackage, preferences: list[str], *, threads: int = 0, cache_dir: Path | None = None
) -> Engine:
    """Load a package's model into the engine its manifest names.

    Args:
        package: a verified package.
        preferences: execution providers (ONNX Runtime) or devices (OpenVINO),
            in the profile's order of preference.
        threads: intra-op threads (0: the engine's default); capped at this host's CPU count.
        cache_dir: OpenVINO's compiled-model cache.

    Raises:
        EngineError: the engine cannot load the model on any preferred device.
    """
    spec = package.manifest.engine
    # A profile's thread count is for its board; never oversubscribe a smaller host.
    threads = min(threads, os.cpu_count() or 1) if threads > 0 else 0
    name = f"{package.manifest.model.name} {package.manifest.model.version}"
    if spec.name == "onnxruntime":
        from runtime.engines.onnxruntime_engine import OnnxRuntimeEngine

        return OnnxRuntimeEngine(package.read(spec.files[0]), preferences, threads=threads, name=name)
    if spec.name == "openvino":
        from runtime.engines.openvino_engine import OpenVinoEngine

        xml = next((f for f in spec.files if f.endswith(".xml")), None)
        weights = next((f for f in spec.files if f.endswith(".bin")), None)
        if xml is None or weights is None:
            raise EngineError(f"{name}: an OpenVINO package needs a .xml and a .bin file, has {spec.files}")
        return OpenVinoEngine(
            package.read(xml),
            package.read(weights),
            preferences,
            precision=spec.precision,
            threads=threads,
            cache_dir=cache_dir,
            name=name,
        )
    raise EngineError(f"{name}: unknown engine {spec.name!r}")
