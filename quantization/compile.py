"""``medge compile`` as a Python API: FP32 ONNX + model config + DICOM folder → signed package.

Stages, each reported to a :class:`CompileListener`:

1. **checks**: the plugins the model config names are installed (their
   distribution and version go into the compile record); the ONNX model
   loads, its opset and operators suit the profile's engine, its tensors
   match the model config (:mod:`graph_checks`);
2. **preflight**: whether INT8 is expected to pay off on the profile's
   hardware, and which nodes must run on the accelerator;
3. **calibration**: DICOM → tensors through the runtime's own preprocessing,
   split by series into calibration and held-back slices (:mod:`calibration`);
4. **quantization**: per engine and precision, searching the settings that
   matter until the accuracy gate passes (:mod:`onnxruntime_int8`,
   :mod:`openvino_int8`), or failing with the report and no package;
5. **package**: engine files, golden samples, fidelity report, compile record,
   calibration statistics; signed (:mod:`packaging`).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from device_profiles import DeviceProfile, detect_host, int8_expected_to_pay_off
from quantization.calibration import CalibrationSet, load_calibration
from quantization.fidelity import GateResult, compare
from quantization.graph_checks import CheckedModel, check_model
from quantization.openvino_ir import convert_to_openvino_ir
from quantization.packaging import package_model
from quantization.vendor_telemetry import decline_vendor_telemetry
from sdk.errors import ConfigError
from sdk.manifest import Manifest
from sdk.model_config import ModelConfig, resolve_plugins

__all__ = ["CompileListener", "CompileOptions", "CompileResult", "Preflight", "compile_package"]

log = logging.getLogger(__name__)

PrecisionChoice = Literal["auto", "fp32", "fp16", "int8"]

# Nodes that do the arithmetic: on an accelerator profile these must not fall back to the CPU.
_COMPUTE_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "QLinearConv", "QLinearMatMul", "MatMulInteger"}


class CompileListener(Protocol):
    """Receives progress; the CLI draws bars from it, the Python API may pass ``None``."""

    def stage(self, name: str, total: int | None = None) -> None:
        """A stage starts; ``total`` steps when known."""

    def advance(self, done: int, total: int | None = None) -> None:
        """Progress within the stage."""

    def note(self, message: str) -> None:
        """One line worth showing (a warning, a step of a search)."""


class _Quiet:
    def stage(self, name: str, total: int | None = None) -> None:
        log.info("compile: %s", name)

    def advance(self, done: int, total: int | None = None) -> None:
        pass

    def note(self, message: str) -> None:
        log.info("compile: %s", message)


@dataclass(frozen=True)
class CompileOptions:
    """What to build and how hard to look.

    Attributes:
        precision: ``auto`` takes the profile's default precision.
        max_calibration: most slices read from the calibration folder (both sides of the split).
        min_calibration: fewest usable slices accepted.
        eval_fraction: share of series held back for the accuracy gate.
        seed: seeds the split (and so the whole compile: same inputs, same package).
        labels: ground truth per SOPInstanceUID (``{uid: {label: 0/1}}``) for AUC and sensitivity.
        golden_count: golden samples to store for the on-device acceptance test.
        max_float_nodes: most layers the ONNX Runtime fall-back may keep in float.
    """

    precision: PrecisionChoice = "auto"
    max_calibration: int = 300
    min_calibration: int = 20
    eval_fraction: float = 0.25
    seed: int = 0
    labels: Mapping[str, Mapping[str, int]] | None = None
    golden_count: int = 3
    max_float_nodes: int = 8


@dataclass(frozen=True)
class Preflight:
    """What was known before quantizing."""

    precision: str
    int8_pays_off: bool | None
    reason: str
    required_accelerator_nodes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class CompileResult:
    """What :func:`compile_package` made and how."""

    manifest: Manifest
    path: Path
    checked: CheckedModel
    preflight: Preflight
    calibration: CalibrationSet
    gate: GateResult | None
    attempts: list[dict[str, Any]]
    seconds: dict[str, float]
    fp32_bytes: int
    package_bytes: int
    engine_bytes: int


def _preflight(profile: DeviceProfile, precision: str, checked: CheckedModel) -> Preflight:
    warnings: list[str] = []
    pays: bool | None = None
    reason = ""
    if precision == "int8":
        facts = detect_host(probe_engines=False)
        if profile.accelerator_kind == "none" and facts.cpu_arch != profile.cpu_arch:
            reason = f"compiling on {facts.cpu_arch} for a {profile.cpu_arch} board: INT8 payoff not checked here"
        else:
            pays, reason = int8_expected_to_pay_off(profile, facts)
            if not pays:
                warnings.append(
                    f"INT8 is not expected to pay off ({reason}); consider --precision fp16 on GPU/NPU or fp32"
                )
    required: list[str] = []
    if profile.engine == "onnxruntime" and profile.accelerator_kind != "none":
        model = checked.load()
        required = sorted(node.name for node in model.graph.node if node.op_type in _COMPUTE_OPS)
    return Preflight(precision, pays, reason, required, warnings)


def _golden_indices(calib: CalibrationSet, count: int) -> np.ndarray:
    """Held-back slices for golden samples: positives and negatives where labels exist, else spread out."""
    total = len(calib.evaluation)
    if total == 0:
        return np.arange(0)
    labels = calib.evaluation_labels
    if labels is not None and np.isfinite(labels).all():
        positive = np.flatnonzero(labels.max(axis=1) > 0)
        negative = np.flatnonzero(labels.max(axis=1) == 0)
        take_pos = positive[: max(1, count - 1)]
        chosen = np.concatenate([take_pos, negative[: count - len(take_pos)]])
        if len(chosen):
            return np.sort(chosen)
    return np.unique(np.linspace(0, total - 1, min(count, total)).round().astype(int))


def _fp16_onnx(model_path: Path) -> bytes:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(model_path)), keep_io_types=True)
    return bytes(model.SerializeToString(deterministic=True))


def _gate_for_onnx(candidate: bytes, reference: Path, calib: CalibrationSet, config: ModelConfig) -> GateResult:
    """Judge an ONNX candidate against the FP32 model on the held-back slices (ONNX Runtime CPU)."""
    from runtime.engines.onnxruntime_engine import OnnxRuntimeEngine

    providers = ["CPUExecutionProvider"]
    ref = OnnxRuntimeEngine(reference.read_bytes(), providers, name="fp32")
    cand = OnnxRuntimeEngine(candidate, providers, name="candidate")
    name, scores = config.input.name, config.outputs.scores
    ref_out = np.concatenate([ref.run({name: x[None]})[scores] for x in calib.evaluation])
    cand_out = np.concatenate([cand.run({name: x[None]})[scores] for x in calib.evaluation])
    return compare(
        ref_out,
        cand_out,
        threshold=config.thresholds[config.labels[0]],
        labels=calib.evaluation_labels,
        gate=config.gate,
    )


def compile_package(
    onnx_path: Path,
    config: ModelConfig,
    profile: DeviceProfile,
    calib_dir: Path,
    private_key: Ed25519PrivateKey,
    out: Path,
    options: CompileOptions | None = None,
    *,
    listener: CompileListener | None = None,
) -> CompileResult:
    """Compile ``onnx_path`` for ``profile`` into a signed package at ``out``.

    Raises:
        ModelCheckError: the model cannot run on the profile's engine (names the node/op).
        CalibrationError: the folder holds too few usable instances of the model's modality.
        QuantizationGateError: no setting passes the accuracy gate; nothing is written.
        ConfigError: the precision is not one the profile supports, or a plugin
            the config names is not installed, is registered twice or refuses its settings.
    """
    options = options or CompileOptions()
    listener = listener or _Quiet()
    decline_vendor_telemetry()
    seconds: dict[str, float] = {}
    started = time.monotonic()
    precision = profile.default_precision if options.precision == "auto" else options.precision
    if precision not in profile.precisions:
        raise ConfigError(
            f"profile {profile.id} does not support {precision} (it supports {', '.join(profile.precisions)})",
            field="precision",
        )

    listener.stage("checks")
    plugins = resolve_plugins(config)
    for plugin in plugins:
        listener.note(f"{plugin.describe()} is part of this package's pre/post-processing")
    checked = check_model(onnx_path, config, profile)
    for message in checked.notes:
        listener.note(message)
    seconds["checks"] = time.monotonic() - started

    t = time.monotonic()
    listener.stage("preflight")
    preflight = _preflight(profile, precision, checked)
    for message in preflight.warnings:
        listener.note(f"[warning] {message}")
    seconds["preflight"] = time.monotonic() - t

    t = time.monotonic()
    listener.stage("calibration", total=options.max_calibration)
    calib = load_calibration(
        calib_dir,
        config,
        min_instances=options.min_calibration,
        max_instances=options.max_calibration,
        eval_fraction=options.eval_fraction,
        seed=options.seed,
        labels=options.labels,
        progress=listener.advance,
    )
    listener.note(
        f"{len(calib.calibration)} calibration + {len(calib.evaluation)} held-back slices "
        f"from {len(set(calib.calibration_series)) + len(set(calib.evaluation_series))} series"
    )
    if len(calib.evaluation) < 100:
        listener.note(
            f"[warning] only {len(calib.evaluation)} held-back slices: one disagreement is "
            f"{1 / max(len(calib.evaluation), 1):.1%}, too coarse for a 1 % gate; give more studies"
        )
    seconds["calibration"] = time.monotonic() - t

    with tempfile.TemporaryDirectory(prefix="medge-compile-") as tmp:
        model_path = checked.save(Path(tmp) / "model.onnx") if checked.changed else Path(onnx_path)
        t = time.monotonic()
        listener.stage(f"quantization ({precision}, {profile.engine})")
        gate: GateResult | None = None
        attempts: list[dict[str, Any]] = []
        float_nodes: dict[str, str] = {}
        package_precision: str = precision
        if profile.engine == "onnxruntime":
            if precision == "int8":
                from quantization.onnxruntime_int8 import search_int8

                assert profile.quantization is not None  # the profile schema requires it with int8
                result = search_int8(
                    model_path,
                    calib.calibration,
                    calib.evaluation,
                    calib.evaluation_labels,
                    config,
                    profile.quantization,
                    progress=listener.note,
                    max_float_nodes=options.max_float_nodes,
                )
                files = {"model.onnx": result.model}
                gate, float_nodes, method = result.gate, result.float_nodes, result.method
                attempts = [attempt.summary() for attempt in result.attempts]
                package_precision = "mixed" if float_nodes else "int8"
            elif precision == "fp16":
                files = {"model.onnx": _fp16_onnx(model_path)}
                method = "fp16 (onnxruntime float16 conversion, float32 inputs/outputs)"
                gate = _gate_for_onnx(files["model.onnx"], model_path, calib, config)
            else:
                files = {"model.onnx": model_path.read_bytes()}
                method = "fp32: ONNX as given"
        else:
            if precision == "int8":
                from quantization.openvino_int8 import quantize_openvino

                scheme = profile.quantization
                ov_result = quantize_openvino(
                    model_path,
                    calib.calibration,
                    calib.evaluation,
                    calib.evaluation_labels,
                    config,
                    progress=listener.note,
                    calib_labels=calib.calibration_labels,
                    target_device=profile.devices[0],
                    symmetric_activations=scheme.activation_symmetric if scheme else None,
                    devices=profile.devices,
                )
                files, gate, method = ov_result.files, ov_result.gate, ov_result.method
                float_nodes = ov_result.float_layers
                attempts = [attempt.summary() for attempt in ov_result.attempts]
                for message in ov_result.notes:
                    listener.note(message)
                package_precision = ov_result.precision
            elif precision == "fp16":
                from quantization.openvino_int8 import fp16_openvino

                fp16 = fp16_openvino(model_path, calib.evaluation, calib.evaluation_labels, config)
                files, gate, method = fp16.files, fp16.gate, fp16.method
            else:
                files = convert_to_openvino_ir(model_path)
                method = "fp32: OpenVINO IR conversion"
        if gate is not None:
            for failure in gate.failures:
                listener.note(f"[warning] {failure}")
        seconds["quantization"] = time.monotonic() - t

        t = time.monotonic()
        listener.stage("package")
        golden = calib.evaluation[_golden_indices(calib, options.golden_count)]
        record: dict[str, Any] = {
            "calibration": calib.record(method),
            "float_nodes": float_nodes,
            "notes": [*checked.notes, *preflight.warnings, *([preflight.reason] if preflight.reason else [])],
            "required_accelerator_nodes": preflight.required_accelerator_nodes,
            "plugins": plugins,
        }
        manifest = package_model(
            onnx_path=model_path,
            engine_name=profile.engine,
            engine_files=files,
            config=config,
            profile_id=profile.id,
            preferences=["CPUExecutionProvider"] if profile.engine == "onnxruntime" else ["CPU"],
            precision=package_precision,
            private_key=private_key,
            out=out,
            golden_inputs=golden,
            method=method,
            fidelity=gate.report if gate is not None else None,
            extra_record=record,
            input_statistics=calib.statistics,
            extra={"compile_attempts": attempts} if attempts else None,
            started=started,
        )
        seconds["package"] = time.monotonic() - t
        fp32_bytes = Path(onnx_path).stat().st_size
    seconds["total"] = time.monotonic() - started
    return CompileResult(
        manifest=manifest,
        path=out,
        checked=checked,
        preflight=preflight,
        calibration=calib,
        gate=gate,
        attempts=attempts,
        seconds=seconds,
        fp32_bytes=fp32_bytes,
        package_bytes=out.stat().st_size,
        engine_bytes=sum(len(files[name]) for name in files),
    )
