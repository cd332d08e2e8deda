"""Turning a model and its config into a signed package for one device profile.

This is the last stage of ``medge compile``: it converts the engine file for
the profile's engine (ONNX as is for ONNX Runtime, OpenVINO IR for OpenVINO),
computes golden samples with the engine the package will run on, fills the
manifest and signs it.
"""

from __future__ import annotations

import gzip
import io
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from runtime.engines import load_engine
from sdk.errors import PackageError
from sdk.input_statistics import InputStatistics
from sdk.manifest import FORMAT_VERSION, CompileRecord, EngineSpec, FidelityReport, GoldenSample, Manifest, TensorSpec
from sdk.model_config import ModelConfig
from sdk.package import ModelPackage, write_package

__all__ = ["GOLDEN_TOLERANCE", "EngineFiles", "model_tensors", "package_model"]

log = logging.getLogger(__name__)

GOLDEN_TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "int8": 2e-2, "mixed": 2e-2}
"""Largest |Δ output| a device may show on a golden sample, by precision."""

EngineFiles = dict[str, bytes]

_VERSIONED = ("medge", "numpy", "onnx", "onnxruntime", "openvino", "nncf", "pydicom")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a compiled model, for the compile record."""
    found = {}
    for name in _VERSIONED:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def model_tensors(onnx_bytes: bytes) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The input and output tensors of an ONNX model, as ONNX Runtime sees them."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"])

    def spec(arg: object) -> TensorSpec:
        dtype = str(getattr(arg, "type", "tensor(float)")).removeprefix("tensor(").removesuffix(")")
        dims = [dim if isinstance(dim, int) else str(dim or "N") for dim in getattr(arg, "shape", [])]
        return TensorSpec(name=getattr(arg, "name", ""), shape=dims, dtype="float32" if dtype == "float" else dtype)

    return [spec(arg) for arg in session.get_inputs()], [spec(arg) for arg in session.get_outputs()]


def _npy_gz(array: np.ndarray) -> bytes:
    """An array as gzip'd ``.npy`` (mtime 0, so the bytes depend on the array only)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return gzip.compress(buffer.getvalue(), compresslevel=9, mtime=0)


def _golden_files(
    engine_files: EngineFiles, manifest: Manifest, preferences: list[str], inputs: np.ndarray
) -> tuple[dict[str, bytes], list[GoldenSample]]:
    """Run each golden input through the package's own engine and keep the outputs."""
    # A package object over the unsigned files lets us load the engine exactly as the runtime will.
    draft = ModelPackage(Path("<draft>"), manifest, b"", "", b"", dict(engine_files))
    engine = load_engine(draft, preferences)
    try:
        files: dict[str, bytes] = {}
        samples = []
        input_name = manifest.inputs[0].name
        tolerance = GOLDEN_TOLERANCE[manifest.engine.precision]
        for index, sample in enumerate(inputs):
            # Stored as float16 (half the bytes; most of a small package's size) and run exactly as stored:
            # the expected outputs are those of the float16-rounded input, so nothing is lost.
            stored = sample[np.newaxis].astype(np.float16)
            outputs = engine.run({input_name: stored.astype(np.float32)})
            input_file = f"golden/{index:03d}/input.npy.gz"
            files[input_file] = _npy_gz(stored)
            output_files = {}
            for name, value in sorted(outputs.items()):
                output_files[name] = f"golden/{index:03d}/{name}.npy.gz"
                files[output_files[name]] = _npy_gz(value)
            samples.append(GoldenSample(input=input_file, outputs=output_files, tolerance=tolerance))
        return files, samples
    finally:
        engine.close()


def package_model(
    *,
    onnx_path: Path,
    engine_name: str,
    engine_files: Mapping[str, bytes],
    config: ModelConfig,
    profile_id: str,
    preferences: list[str],
    precision: str,
    private_key: Ed25519PrivateKey,
    out: Path,
    golden_inputs: np.ndarray,
    method: str,
    fidelity: FidelityReport | None = None,
    extra_record: Mapping[str, object] | None = None,
    input_statistics: InputStatistics | None = None,
    extra: Mapping[str, Any] | None = None,
    started: float | None = None,
) -> Manifest:
    """Assemble, sign and write a package; returns the manifest as written.

    Args:
        onnx_path: the source ONNX model (its tensors are recorded).
        engine_name: ``onnxruntime`` or ``openvino``.
        engine_files: the engine files by member name (``model.onnx`` or ``model.xml``/``model.bin``).
        config: the model config, copied into the manifest unchanged.
        profile_id: the target device profile.
        preferences: providers/devices used to compute golden outputs on this host.
        precision: ``fp32``, ``fp16``, ``int8`` or ``mixed``.
        private_key: the signing key.
        out: the package path to write.
        golden_inputs: preprocessed inputs ``(N, C, H, W)`` (or NHWC) for golden samples.
        method: how the engine files were made (for the compile record).
        fidelity: the accuracy report against FP32, where one was measured.
        extra_record: more compile-record fields (calibration, float nodes, notes).
        input_statistics: the calibration inputs' statistics, for the runtime's drift watch.
        extra: free-form manifest data (e.g. every quantization attempt's figures).
        started: ``time.monotonic()`` when compilation began, for the duration.

    Raises:
        PackageError: the model's tensors do not match the config.
    """
    started = time.monotonic() if started is None else started
    inputs, outputs = model_tensors(onnx_path.read_bytes())
    if inputs[0].name != config.input.name:
        raise PackageError(
            f"model input is named {inputs[0].name!r} but the model config says {config.input.name!r}",
            path=onnx_path,
        )
    output_names = {tensor.name for tensor in outputs}
    for wanted in filter(None, (config.outputs.scores, config.outputs.location)):
        if wanted not in output_names:
            raise PackageError(f"model has no output {wanted!r} (has {sorted(output_names)})", path=onnx_path)
    record = dict(extra_record or {})
    versions = library_versions()
    engine = EngineSpec(
        name=engine_name,  # type: ignore[arg-type]
        files=sorted(name for name in engine_files if not name.endswith(".json")),
        precision=precision,  # type: ignore[arg-type]
        profile=profile_id,
        required_accelerator_nodes=list(record.pop("required_accelerator_nodes", [])),  # type: ignore[call-overload]
    )
    draft = Manifest(
        format_version=FORMAT_VERSION,
        model=config,
        inputs=inputs,
        outputs=outputs,
        engine=engine,
        compile=CompileRecord(
            toolchain=f"medge {versions.get('medge', 'dev')}",
            versions=versions,
            created=datetime.now(UTC).replace(microsecond=0),
            duration_s=0.0,
            method=method,
            **record,  # type: ignore[arg-type]
        ),
        fidelity=fidelity,
        input_statistics=input_statistics,
        extra=dict(extra or {}),
    )
    golden_files, golden = _golden_files(dict(engine_files), draft, preferences, golden_inputs)
    duration = round(time.monotonic() - started, 3)
    manifest = draft.model_copy(
        update={"golden": golden, "compile": draft.compile.model_copy(update={"duration_s": duration})}
    )
    written = write_package(out, manifest, {**engine_files, **golden_files}, private_key)
    log.info("wrote %s (%s, %s, %s)", out, engine_name, precision, profile_id)
    return written
