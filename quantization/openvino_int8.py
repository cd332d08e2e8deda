"""OpenVINO packages: IR conversion, NNCF INT8 under the accuracy gate, FP16 weight compression.

The ONNX model is converted with ``openvino.convert_model`` and quantized with
NNCF's post-training quantization. Every candidate is serialized to the exact
IR bytes that would ship, loaded through the runtime's own
:class:`~runtime.engines.openvino_engine.OpenVinoEngine` (so the CPU runs it in
f32, not the bfloat16 OpenVINO picks on AMX CPUs) and judged against the FP32
ONNX model's outputs on the held-back slices with
:func:`quantization.fidelity.compare`.

The search, cheapest and fastest first:

1. NNCF's ``performance`` preset (symmetric INT8 activations and weights,
   per-channel weights, fast bias correction): the same graph as plain
   ``nncf.quantize`` defaults for a CNN, hence never slower than them.
2. The ``mixed`` preset (asymmetric activations) when the profile allows it.
3. ``nncf.quantize_with_accuracy_control``: NNCF ranks groups of quantizers by
   what they cost and reverts the costliest layers to float until a
   gate-shaped metric holds on the calibration slices (the held-back slices
   stay unseen until the final check), in at most ``max_float_layers`` steps
   so that the package stays an INT8 package and compiling stays quick.

If the gate still fails, :class:`~quantization.errors.QuantizationGateError`
carries the best report and the layers that cost most; nothing is returned.

IR bytes are deterministic: OpenVINO names nodes it creates from a
process-wide counter (``Constant_31379``) and records the source path in
``rt_info``, so the same model compiled twice, or after other work in the same
process, would otherwise differ. :func:`serialize_ir` renames those nodes by
their position in the graph and drops the conversion parameters.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from quantization.errors import QuantizationGateError
from quantization.fidelity import GateResult, compare
from quantization.openvino_ir import convert_onnx, onnx_names, serialize_ir
from sdk.errors import EngineError
from sdk.model_config import AccuracyGate, ModelConfig

if TYPE_CHECKING:
    import openvino as ov

__all__ = [
    "OpenVinoAttempt",
    "OpenVinoFp16Result",
    "OpenVinoInt8Result",
    "OpenVinoSettings",
    "fp16_openvino",
    "quantize_openvino",
    "serialize_ir",
]

log = logging.getLogger(__name__)

Preset = Literal["performance", "mixed"]
Progress = Callable[[str], None]

AC_TARGET_USAGE = 0.5
"""Share of the gate's allowance accuracy control aims for on the calibration slices.

Half the allowance leaves headroom for the held-back slices, which the final check sees for the first time.
"""

AC_MAX_VALIDATION = 128
"""Calibration slices accuracy control validates on: each of its steps runs them all, so this bounds compile time."""

AC_RANKING_SUBSET = 48
"""Slices (the worst ones) NNCF ranks each group of quantizers on."""

FLOAT_LAYER_SHARE = 0.25
"""Default cap on layers kept in float, as a share of the quantized layers: beyond it INT8 stops paying off."""

_BATCH = 16
_TINY = 1e-6
_COMPUTE_OPS = frozenset(
    {"Convolution", "GroupConvolution", "ConvolutionBackpropData", "GroupConvolutionBackpropData", "MatMul"}
)
_LOW_PRECISION = frozenset({"i8", "u8", "i4", "u4", "nf4"})
_DEQUANTIZE_OPS = frozenset({"Convert", "Subtract", "Multiply", "Reshape", "Transpose"})
_NOT_LAYERS = frozenset({"Constant", "FakeQuantize", "Convert", "Parameter", "Result"})
_NOT_QUANTIZED = "NNCF does not quantize this layer for the target device"


@dataclass(frozen=True)
class OpenVinoSettings:
    """The NNCF settings a candidate was made with (recorded in the compile record).

    Attributes:
        preset: ``performance`` (symmetric activations) or ``mixed`` (asymmetric activations).
        target_device: NNCF's target device (``CPU``, ``GPU``, ``NPU``).
        subset_size: calibration slices NNCF collected statistics on.
        fast_bias_correction: NNCF's fast bias correction (True) or the slower full one.
        model_type: NNCF's model type; ``None`` for CNNs (``transformer`` adds transformer patterns).
        accuracy_control: whether layers were reverted to float by NNCF's accuracy control.
        max_float_layers: the cap on reverted layers, when accuracy control ran.
        fp16_weights: whether weights left in float are stored as FP16.
    """

    preset: Preset
    target_device: str
    subset_size: int
    fast_bias_correction: bool = True
    model_type: str | None = None
    accuracy_control: bool = False
    max_float_layers: int | None = None
    fp16_weights: bool = False

    def describe(self) -> str:
        """One line for logs and the compile record."""
        text = f"NNCF {self.preset} preset, {self.target_device}, {self.subset_size} calibration slices"
        if self.accuracy_control:
            text += f", accuracy control (at most {self.max_float_layers} float layers)"
        return text + (", FP16 float weights" if self.fp16_weights else "")


@dataclass(frozen=True)
class OpenVinoAttempt:
    """One candidate the search built and judged.

    Attributes:
        settings: how it was made.
        gate: its fidelity against FP32 on the held-back slices and the verdict.
        float_layers: layers it keeps in float, with the reason.
        seconds: time spent quantizing and evaluating it.
    """

    settings: OpenVinoSettings
    gate: GateResult
    float_layers: dict[str, str]
    seconds: float

    def summary(self) -> dict[str, Any]:
        """The attempt as JSON-ready figures, for the compile record."""
        report = self.gate.report
        return {
            "settings": self.settings.describe(),
            "passed": self.gate.passed,
            "agreement": report.agreement,
            "flip_rate": report.flip_rate,
            "max_abs_delta": report.max_abs_delta,
            "auc_reference": report.auc_reference,
            "auc_compiled": report.auc_compiled,
            "failures": list(self.gate.failures),
            "float_layers": sorted(self.float_layers),
            "seconds": round(self.seconds, 2),
        }


@dataclass(frozen=True)
class OpenVinoInt8Result:
    """An INT8 OpenVINO IR that passed the accuracy gate.

    Attributes:
        files: ``model.xml`` and ``model.bin``, byte-identical for identical inputs.
        precision: ``int8``, or ``mixed`` when layers were kept in float.
        settings: the settings of the shipped candidate.
        float_layers: layers kept in float (names as in the ONNX graph), with the reason.
        attempts: every candidate tried, in order; the last one is the shipped one.
        gate: the shipped candidate's fidelity on the held-back slices.
        method: one line for the compile record.
        notes: sentences for the compile record's notes.
    """

    files: dict[str, bytes]
    precision: Literal["int8", "mixed"]
    settings: OpenVinoSettings
    float_layers: dict[str, str]
    attempts: list[OpenVinoAttempt]
    gate: GateResult
    method: str
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class OpenVinoFp16Result:
    """An OpenVINO IR with FP16 weights that passed the accuracy gate.

    Attributes:
        files: ``model.xml`` and ``model.bin``, byte-identical for identical inputs.
        gate: its fidelity on the held-back slices, as run on ``devices``.
        device: the OpenVINO device the gate was measured on.
        method: one line for the compile record.
    """

    files: dict[str, bytes]
    gate: GateResult
    device: str
    method: str
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- public API


def quantize_openvino(
    onnx_path: Path,
    calib: np.ndarray,
    evaluation: np.ndarray,
    labels: np.ndarray | None,
    config: ModelConfig,
    *,
    fp16_weights: bool = False,
    progress: Progress | None = None,
    calib_labels: np.ndarray | None = None,
    target_device: str = "CPU",
    symmetric_activations: bool | None = None,
    max_float_layers: int | None = None,
    devices: Sequence[str] = ("CPU",),
) -> OpenVinoInt8Result:
    """Quantize an FP32 ONNX model to an OpenVINO INT8 IR that passes the model's accuracy gate.

    Args:
        onnx_path: the FP32 ONNX model.
        calib: preprocessed calibration slices ``(N, C, H, W)`` (or NHWC), float32.
        evaluation: held-back preprocessed slices the gate is judged on.
        labels: ground truth of ``evaluation`` (``(N,)`` or ``(N, L)`` of 0/1), or None.
        config: the model config (input/output names, thresholds, gate).
        fp16_weights: ask OpenVINO to store the constants left in float as FP16 (OpenVINO 2026 leaves a
            quantized IR's constants in FP32 regardless; the result's notes say so).
        progress: called with a short sentence as each stage starts.
        calib_labels: ground truth of ``calib``, if any; lets accuracy control watch the AUC too.
        target_device: NNCF's target device: the profile's first OpenVINO device (``CPU``, ``GPU``, ``NPU``).
        symmetric_activations: True when the profile requires symmetric activations (``performance`` only),
            False for asymmetric only (``mixed``), None to try both.
        max_float_layers: most reverting steps accuracy control may take (0: none). Each step keeps one
            layer in float, together with any layer sharing its input quantizer; default a quarter of the
            quantized layers.
        devices: OpenVINO devices to measure the gate on, in preference order (the first available one is used).

    Raises:
        QuantizationGateError: no candidate passes the gate; carries the best report and the costliest layers.
        EngineError: OpenVINO cannot convert or run the model.
        ValueError: the arrays do not fit together.
    """
    import nncf

    _check_array("calib", calib, calib_labels, "calib_labels")
    _check_array("evaluation", evaluation, labels, "labels")
    say = progress or (lambda _message: None)
    gate_limits = config.gate
    thresholds = [config.thresholds[label] for label in config.labels]

    nncf_device = _nncf_device(target_device)
    say("running the FP32 ONNX model on the calibration and held-back slices")
    (calib_ref, eval_ref), batch = _onnx_scores(onnx_path, config, [calib, evaluation])
    fp32_model = convert_onnx(onnx_path)
    keep_names = onnx_names(onnx_path)
    dataset = _dataset(calib, config.input.name)

    def judge(files: dict[str, bytes], precision: str) -> GateResult:
        candidate, _device = _engine_scores(files, config, evaluation, batch, precision=precision, devices=devices)
        return compare(eval_ref, candidate, threshold=thresholds, labels=labels, gate=gate_limits)

    presets: list[Preset] = ["performance", "mixed"]
    if symmetric_activations is not None:
        presets = ["performance"] if symmetric_activations else ["mixed"]
    attempts: list[OpenVinoAttempt] = []
    int8_names: dict[Preset, set[str]] = {}
    fp32_compute = _compute_layers(fp32_model)
    for preset in presets:
        started = time.monotonic()
        settings = OpenVinoSettings(preset, nncf_device, len(calib), fp16_weights=fp16_weights)
        say(f"quantizing with {settings.describe()}")
        with _nncf_logs():
            model = nncf.quantize(
                fp32_model,
                dataset,
                preset=_nncf_preset(preset),
                target_device=nncf.TargetDevice[nncf_device],
                subset_size=len(calib),
                fast_bias_correction=settings.fast_bias_correction,
            )
        # Before serializing: that renames counter-named nodes, and the accuracy-control model is compared by name.
        int8_names[preset] = _int8_layers(model)
        floats = {_layer(name): _NOT_QUANTIZED for name in fp32_compute - int8_names[preset]}
        files = serialize_ir(model, compress_to_fp16=fp16_weights, keep_names=keep_names)
        say("checking the accuracy gate on the held-back slices")
        result = judge(files, "int8")
        attempt = OpenVinoAttempt(settings, result, floats, time.monotonic() - started)
        attempts.append(attempt)
        _log_attempt(attempt)
        if result.passed:
            return _result(files, attempt, attempts)

    best = min(attempts, key=lambda a: _gate_usage(a.gate, gate_limits))
    base_layers = int8_names[best.settings.preset]
    cap = _float_cap(max_float_layers, len(base_layers))
    if cap == 0:
        raise _gate_error(onnx_path, best, attempts, {}, "accuracy control is disabled (max_float_layers = 0)")

    started = time.monotonic()
    settings = OpenVinoSettings(
        best.settings.preset,
        nncf_device,
        len(calib),
        accuracy_control=True,
        max_float_layers=cap,
        fp16_weights=fp16_weights,
    )
    say(f"keeping the costliest layers in float: {settings.describe()}")
    model, reverted_order = _accuracy_control(
        fp32_model, dataset, calib, calib_ref, calib_labels, config, settings, thresholds
    )
    reverted = base_layers - _int8_layers(model)
    order = [name for name in reverted_order if name in reverted] + sorted(reverted - set(reverted_order))
    floats = dict(best.float_layers)
    for rank, name in enumerate(order, start=1):
        floats[_layer(name)] = (
            f"kept in float by NNCF accuracy control (step {rank} of {len(order)}): "
            "its quantizers cost the most agreement with the FP32 model"
        )
    files = serialize_ir(model, compress_to_fp16=fp16_weights, keep_names=keep_names)
    say("checking the accuracy gate on the held-back slices")
    result = judge(files, "mixed" if order else "int8")
    attempt = OpenVinoAttempt(settings, result, floats, time.monotonic() - started)
    attempts.append(attempt)
    _log_attempt(attempt)
    if result.passed:
        return _result(files, attempt, attempts)
    best = min(attempts, key=lambda a: _gate_usage(a.gate, gate_limits))
    worst = {_layer(name): floats[_layer(name)] for name in order}
    why = (
        f"{len(order)} layer(s) in float (at most {cap} steps) were not enough"
        if order
        else "accuracy control met its target on the calibration slices, but the held-back slices still fail"
    )
    raise _gate_error(onnx_path, best, attempts, worst, why)


def fp16_openvino(
    onnx_path: Path,
    evaluation: np.ndarray,
    labels: np.ndarray | None,
    config: ModelConfig,
    *,
    devices: Sequence[str] = ("CPU",),
    progress: Progress | None = None,
) -> OpenVinoFp16Result:
    """Convert an FP32 ONNX model to an OpenVINO IR with FP16 weights that passes the accuracy gate.

    For GPU and NPU profiles, which compute in FP16 anyway: the ``.bin`` is half
    the size. The gate runs the IR as the runtime runs an ``fp16`` package on
    the first available of ``devices`` (on a CPU without FP16/BF16 support,
    that is FP32 arithmetic on FP16 weights).

    Raises:
        QuantizationGateError: the FP16 IR fails the gate (ship FP32 instead).
        EngineError: OpenVINO cannot convert or run the model.
    """
    _check_array("evaluation", evaluation, labels, "labels")
    say = progress or (lambda _message: None)
    say("running the FP32 ONNX model on the held-back slices")
    (eval_ref,), batch = _onnx_scores(onnx_path, config, [evaluation])
    say("converting to OpenVINO IR with FP16 weights")
    started = time.monotonic()
    files = serialize_ir(convert_onnx(onnx_path), compress_to_fp16=True, keep_names=onnx_names(onnx_path))
    say("checking the accuracy gate on the held-back slices")
    candidate, device = _engine_scores(files, config, evaluation, batch, precision="fp16", devices=devices)
    thresholds = [config.thresholds[label] for label in config.labels]
    result = compare(eval_ref, candidate, threshold=thresholds, labels=labels, gate=config.gate)
    log.info(
        "FP16 IR on %s: agreement %.4f, flips %.4f, max |dp| %.4g, %s (%.1f s)",
        device,
        result.report.agreement,
        result.report.flip_rate,
        result.report.max_abs_delta,
        "passes" if result.passed else "fails: " + "; ".join(result.failures),
        time.monotonic() - started,
    )
    if not result.passed:
        raise QuantizationGateError(
            f"the FP16 IR fails the accuracy gate on {device}: {'; '.join(result.failures)}; ship FP32 instead",
            report=result.report,
            failures=result.failures,
            worst_layers={},
            path=onnx_path,
        )
    notes = []
    if device == "CPU":
        notes.append("gate measured on the CPU; GPU and NPU compute in FP16 and may differ slightly")
    return OpenVinoFp16Result(files, result, device, f"fp16: OpenVINO IR with FP16 weights, gate on {device}", notes)


# ----------------------------------------------------------------------------- accuracy control


def _accuracy_control(
    fp32_model: ov.Model,
    dataset: Any,
    calib: np.ndarray,
    calib_ref: np.ndarray,
    calib_labels: np.ndarray | None,
    config: ModelConfig,
    settings: OpenVinoSettings,
    thresholds: list[float],
) -> tuple[ov.Model, list[str]]:
    """Run NNCF's accuracy control on calibration slices; return the model and the reverted layers in order."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    # Evenly spaced, so the subset spans the calibration set as the DICOM folder ordered it.
    count = min(len(calib), AC_MAX_VALIDATION)
    picked = np.unique(np.linspace(0, len(calib) - 1, count).round().astype(int))
    validation = nncf.Dataset([int(i) for i in picked], lambda i: {config.input.name: calib[i : i + 1]})
    gate = config.gate

    def validate(compiled: Any, items: Iterable[int]) -> tuple[float, list[float]]:
        index = np.fromiter(items, dtype=np.int64)
        scores = _compiled_scores(compiled, config, calib, index)
        reference = calib_ref[index]
        truth = None if calib_labels is None else calib_labels[index]
        result = compare(reference, scores, threshold=thresholds, labels=truth, gate=gate, bootstrap=0)
        delta = np.abs(scores - reference)
        flipped = np.any((scores >= thresholds) != (reference >= thresholds), axis=1)
        # Higher is better; the FP32 model scores ~0. The mean |Δ| term breaks ties between
        # groups whose reversal moves no decision on the ranking subset.
        metric = -(_gate_usage(result, gate) + float(delta.mean()))
        per_item = -(delta.max(axis=1) + flipped)
        return metric, [float(v) for v in per_item]

    restorer = AdvancedAccuracyRestorerParameters(
        max_num_iterations=settings.max_float_layers or 0,
        ranking_subset_size=min(AC_RANKING_SUBSET, len(picked)),
        num_ranking_workers=1,
    )
    with _nncf_logs() as records:
        model = nncf.quantize_with_accuracy_control(
            fp32_model,
            dataset,
            validation,
            validate,
            max_drop=AC_TARGET_USAGE,
            drop_type=nncf.DropType.ABSOLUTE,
            preset=_nncf_preset(settings.preset),
            target_device=nncf.TargetDevice[settings.target_device],
            subset_size=settings.subset_size,
            fast_bias_correction=settings.fast_bias_correction,
            advanced_accuracy_restorer_parameters=restorer,
        )
    return model, _reverted_in_order(records)


_REVERTED = re.compile(r"^Reverted \d+ operations to the floating-point precision:\s*\n(.*)$", re.S)


def _reverted_in_order(records: list[logging.LogRecord]) -> list[str]:
    """Names NNCF reverted, in the order it did, from its log (the model tells which remain reverted)."""
    names: list[str] = []
    for record in records:
        match = _REVERTED.match(record.getMessage())
        if match:
            names.extend(line.strip() for line in match.group(1).splitlines() if line.strip())
    return list(dict.fromkeys(names))


@contextmanager
def _nncf_logs() -> Iterator[list[logging.LogRecord]]:
    """Route NNCF's log through ours (it prints to stdout by default) and keep its records."""
    logger = logging.getLogger("nncf")
    records: list[logging.LogRecord] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    saved = (list(logger.handlers), logger.propagate, logger.level)
    logger.handlers = [_Keep(logging.INFO)]
    logger.propagate = True
    logger.setLevel(logging.INFO)  # accuracy control reports the layers it reverts at INFO
    try:
        yield records
    finally:
        logger.handlers, logger.propagate = saved[:2]
        logger.setLevel(saved[2])


# ----------------------------------------------------------------------------- model inspection


def _compute_layers(model: ov.Model) -> set[str]:
    """Convolutions and matrix products: the layers INT8 speeds up."""
    return {op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() in _COMPUTE_OPS}


def _int8_layers(model: ov.Model) -> set[str]:
    """Layers that read an INT8 tensor: a FakeQuantize output or dequantized low-precision weights."""
    found = set()
    for op in model.get_ordered_ops():
        if op.get_type_name() in _NOT_LAYERS or _is_weight_chain(op):
            continue
        for port in op.inputs():
            source = port.get_source_output().get_node()
            if source.get_type_name() == "FakeQuantize" or _is_weight_chain(source):
                found.add(op.get_friendly_name())
                break
    return found


def _is_weight_chain(node: Any, depth: int = 5) -> bool:
    """True for a dequantization chain (Convert/Subtract/Multiply/Reshape) that starts at an INT8 constant."""
    kind = node.get_type_name()
    if kind == "Constant":
        return node.get_element_type().get_type_name() in _LOW_PRECISION
    if kind not in _DEQUANTIZE_OPS or depth == 0:
        return False
    return any(_is_weight_chain(port.get_source_output().get_node(), depth - 1) for port in node.inputs())


def _layer(name: str) -> str:
    """A layer's name as in the ONNX graph (OpenVINO splits Conv+bias into ``.../WithoutBiases`` and an Add)."""
    return name.removesuffix("/WithoutBiases")


# ----------------------------------------------------------------------------- running models


def _dataset(calib: np.ndarray, input_name: str) -> Any:
    """An ``nncf.Dataset`` of single calibration slices (items are indices; cheap to hold)."""
    import nncf

    return nncf.Dataset(list(range(len(calib))), lambda i: {input_name: calib[i : i + 1]})


def _nncf_preset(preset: Preset) -> Any:
    import nncf

    return nncf.QuantizationPreset.PERFORMANCE if preset == "performance" else nncf.QuantizationPreset.MIXED


def _probabilities(raw: np.ndarray, config: ModelConfig) -> np.ndarray:
    """Scores as ``(N, L)`` probabilities, the way the runtime's post-processing reads them."""
    scores = np.asarray(raw, dtype=np.float64).reshape(len(raw), -1)
    if config.outputs.score_kind == "logit":
        scores = 1.0 / (1.0 + np.exp(-scores))
    return scores


def _onnx_scores(onnx_path: Path, config: ModelConfig, arrays: list[np.ndarray]) -> tuple[list[np.ndarray], int]:
    """The FP32 ONNX model's probabilities, the reference every candidate is judged against, and the batch to use.

    The batch is 1 when the model's batch dimension is fixed (the IR keeps it), else a small chunk.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise EngineError(f"ONNX Runtime cannot load the FP32 model: {exc}", path=onnx_path) from exc
    batch = _BATCH if not isinstance(session.get_inputs()[0].shape[0], int) else 1
    results = []
    for inputs in arrays:
        chunks = [
            session.run([config.outputs.scores], {config.input.name: inputs[start : start + batch]})[0]
            for start in range(0, len(inputs), batch)
        ]
        results.append(_probabilities(np.concatenate(chunks), config))
    return results, batch


def _compiled_scores(compiled: Any, config: ModelConfig, inputs: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Probabilities from an ``ov.CompiledModel`` (what NNCF hands the validation function)."""
    request = compiled.create_infer_request()
    output = compiled.output(config.outputs.scores)
    batch = _BATCH if compiled.input(0).get_partial_shape()[0].is_dynamic else 1
    chunks = []
    for start in range(0, len(index), batch):
        result = request.infer({config.input.name: inputs[index[start : start + batch]]})
        chunks.append(np.array(result[output]))
    return _probabilities(np.concatenate(chunks), config)


def _engine_scores(
    files: dict[str, bytes],
    config: ModelConfig,
    inputs: np.ndarray,
    batch: int,
    *,
    precision: str,
    devices: Sequence[str],
) -> tuple[np.ndarray, str]:
    """Probabilities from the IR bytes, run by the runtime's engine exactly as a package would be, and the device."""
    from runtime.engines.openvino_engine import OpenVinoEngine

    engine = OpenVinoEngine(
        files["model.xml"], files["model.bin"], list(devices), precision=precision, name=config.name
    )
    try:
        chunks = []
        for start in range(0, len(inputs), batch):
            outputs = engine.run({config.input.name: inputs[start : start + batch]})
            if config.outputs.scores not in outputs:
                raise EngineError(
                    f"{config.name}: the IR has no output {config.outputs.scores!r} (has {sorted(outputs)})"
                )
            chunks.append(outputs[config.outputs.scores])
        return _probabilities(np.concatenate(chunks), config), engine.placement.device
    finally:
        engine.close()


# ----------------------------------------------------------------------------- gate bookkeeping


def _gate_usage(result: GateResult, gate: AccuracyGate) -> float:
    """How much of the gate's allowance a candidate uses: <= 1 passes, FP32 itself scores ~0."""
    report = result.report
    parts = [
        (1.0 - report.agreement) / max(1.0 - gate.min_agreement, _TINY),
        report.flip_rate / max(gate.max_flip_rate, _TINY),
    ]
    if report.auc_reference is not None and report.auc_compiled is not None:
        parts.append(max(0.0, report.auc_reference - report.auc_compiled) / max(gate.max_auc_drop, _TINY))
    return max(parts)


def _float_cap(requested: int | None, quantized_layers: int) -> int:
    if requested is not None:
        if requested < 0:
            raise ValueError(f"max_float_layers must be >= 0, got {requested}")
        return requested
    return max(1, math.ceil(FLOAT_LAYER_SHARE * quantized_layers))


def _result(files: dict[str, bytes], attempt: OpenVinoAttempt, attempts: list[OpenVinoAttempt]) -> OpenVinoInt8Result:
    reverted = attempt.settings.accuracy_control and any(
        reason != _NOT_QUANTIZED for reason in attempt.float_layers.values()
    )
    precision: Literal["int8", "mixed"] = "mixed" if reverted else "int8"
    method = f"{precision}: {attempt.settings.describe()}"
    if attempt.float_layers:
        method += f"; {len(attempt.float_layers)} layer(s) in float"
    notes = []
    if attempt.settings.fp16_weights and b'element_type="f16"' not in files["model.xml"]:
        # OpenVINO's compress_to_fp16 leaves every constant of an IR with FakeQuantize nodes in FP32.
        notes.append("fp16_weights had no effect: OpenVINO keeps the float constants of a quantized IR in FP32")
    log.info("OpenVINO %s passes the accuracy gate after %d attempt(s)", precision, len(attempts))
    return OpenVinoInt8Result(
        files=files,
        precision=precision,
        settings=attempt.settings,
        float_layers=dict(sorted(attempt.float_layers.items())),
        attempts=list(attempts),
        gate=attempt.gate,
        method=method,
        notes=notes,
    )


def _gate_error(
    onnx_path: Path,
    best: OpenVinoAttempt,
    attempts: list[OpenVinoAttempt],
    worst: dict[str, str],
    why: str,
) -> QuantizationGateError:
    tried = "; ".join(a.settings.describe() for a in attempts)
    message = (
        f"no OpenVINO INT8 candidate passes the accuracy gate ({why}); best: {'; '.join(best.gate.failures)}. "
        f"Tried: {tried}"
    )
    if worst:
        message += f". Costliest layers: {', '.join(worst)}"
    return QuantizationGateError(
        message,
        report=best.gate.report,
        failures=best.gate.failures,
        worst_layers=worst,
        attempts=[a.summary() for a in attempts],
        path=onnx_path,
    )


def _log_attempt(attempt: OpenVinoAttempt) -> None:
    report = attempt.gate.report
    log.info(
        "%s: agreement %.4f, flips %.4f, max |dp| %.4g, AUC %s -> %s, %s (%.1f s)",
        attempt.settings.describe(),
        report.agreement,
        report.flip_rate,
        report.max_abs_delta,
        report.auc_reference,
        report.auc_compiled,
        "passes" if attempt.gate.passed else "fails: " + "; ".join(attempt.gate.failures),
        attempt.seconds,
    )


def _check_array(name: str, array: np.ndarray, truth: np.ndarray | None, truth_name: str) -> None:
    if array.ndim != 4 or len(array) == 0:
        raise ValueError(f"{name} must be a non-empty (N, C, H, W) or (N, H, W, C) array, got {array.shape}")
    if array.dtype != np.float32:
        raise ValueError(f"{name} must be float32, got {array.dtype}")
    if truth is not None and len(truth) != len(array):
        raise ValueError(f"{truth_name} has {len(truth)} entries for {len(array)} slices")


def _nncf_device(target_device: str) -> str:
    """NNCF's name for an OpenVINO device (``GPU.1`` -> ``GPU``)."""
    family = target_device.split(".")[0].upper()
    if family not in {"CPU", "GPU", "NPU"}:
        raise ValueError(f"target_device must be CPU, GPU or NPU, got {target_device!r}")
    return family
