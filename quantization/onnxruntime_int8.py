"""Static INT8 quantization for ONNX Runtime profiles, and the settings search that makes it pass the gate.

Plain ``quantize_static`` fails silently: on a real medical CNN its defaults
agreed with FP32 on about two thirds of slices, and no other global setting
did better; keeping one sensitive node in float fixed it. So medge does not
trust one setting. :func:`search_int8` tries the settings that matter
(calibration method, activation symmetry, per-channel weights) in order of
speed, judges each against FP32 on held-back slices with
:func:`quantization.fidelity.compare`, and when none passes the model's
accuracy gate, measures what each layer costs on its own and keeps the
costliest few in float (:mod:`quantization.layer_sensitivity`). If that fails
too it raises :class:`~quantization.errors.QuantizationGateError` and nothing
ships.

The output is always QDQ (QuantizeLinear/DequantizeLinear around each
quantized op), which ONNX Runtime's CPU provider fuses into QLinearConv and
friends at load time and TensorRT reads as explicit INT8. TensorRT profiles
(``zero_point_zero``) get symmetric signed INT8 with zero points of 0,
per-channel weights and float biases; :func:`check_tensorrt_qdq` proves it on
the graph.

Calibration runs the FP32 model once over the calibration slices (twice when a
histogram method is needed) with every activation exposed, and derives the
ranges of all three methods from the same statistics, so trying a method costs
a quantization, not a calibration. Quantizing the same model with the same
slices and settings gives byte-identical files.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from onnxruntime.quantization.calibrate import CalibrationDataReader, CalibrationMethod, TensorData, TensorsData
from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
from onnxruntime.quantization.quant_utils import (
    QuantType,
    load_model_with_shape_infer,
    model_has_pre_process_metadata,
    update_opset_version,
)
from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
from onnxruntime.quantization.shape_inference import quant_pre_process
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from device_profiles import QuantizationScheme
from quantization.errors import QuantizationGateError
from quantization.fidelity import GateResult, compare
from quantization.layer_sensitivity import LayerCost, float_fallback, rank_layers
from sdk.errors import EngineError, MedgeError
from sdk.model_config import ModelConfig

__all__ = [
    "ArrayDataReader",
    "Int8Attempt",
    "Int8Result",
    "QuantSettings",
    "candidate_settings",
    "check_tensorrt_qdq",
    "enforce_scheme",
    "preprocess_graph",
    "quantize",
    "search_int8",
]

log = logging.getLogger(__name__)

CalibrationName = Literal["minmax", "entropy", "percentile"]
IntType = Literal["int8", "uint8"]

OP_TYPES_TO_QUANTIZE: tuple[str, ...] = tuple(sorted(set(QLinearOpsRegistry) | set(QDQRegistry)))
"""What ``quantize_static`` quantizes by default; medge quantizes the same, so it is never slower."""

HISTOGRAM_BINS = 2048
"""Bins of the |activation| histograms behind entropy and percentile calibration (TensorRT uses 2048)."""

ENTROPY_LEVELS = 128
"""Quantized bins per side when searching the KL-optimal threshold (int8: 128 levels)."""

PROBE_SAMPLES = 128
"""At most this many held-back slices are used to measure what each layer costs."""

FALLBACK_BASES = 2
"""Settings (of distinct calibration methods) the float fall-back is tried on, best first."""

_QTYPE = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
_CALIBRATION = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
_QUANTIZER_OPTIONS = frozenset(
    {
        "ActivationRestrictedAsymmetric",
        "AddQDQPairToWeight",
        "DedicatedQDQPair",
        "EnableSubgraph",
        "ForceQuantizeNoInputCheck",
        "MatMulConstBOnly",
        "MinimumRealRange",
        "OpTypesToExcludeOutputQuantization",
        "QDQDisableWeightAdjustForInt32Bias",
        "QDQKeepRemovableActivations",
        "QDQOpTypePerChannelSupportToAxis",
        "QuantizeBias",
        "TensorQuantOverrides",
        "UseQDQContribOps",
    }
)
"""``extra_options`` keys of ONNX Runtime's QDQ quantizer (onnxruntime/quantization/quantize.py) medge passes on."""

_CALIBRATION_OPTIONS = frozenset({"CalibMovingAverage"})
"""``extra_options`` keys medge's calibration honours: min-max as the mean of per-batch extremes."""

_TENSORRT_OPTIONS = {"QuantizeBias": False, "DedicatedQDQPair": True}
"""TensorRT folds float biases itself and wants one Q/DQ pair per consumer."""


# ----------------------------------------------------------------------------- settings


class QuantSettings(BaseModel):
    """One way of quantizing a model statically to INT8 (QDQ).

    Attributes:
        calibrate_method: how activation ranges are estimated from the calibration slices.
        percentile: the percentile of |activation| kept by ``percentile`` calibration.
        activation_type: ``uint8`` (the x86 VNNI fast path) or ``int8``.
        weight_type: ``int8`` or ``uint8``.
        activation_symmetric: activation ranges centred on 0.
        weight_symmetric: weight ranges centred on 0 (per-channel weights always are).
        per_channel: one weight scale per output channel.
        reduce_range: 7-bit weights, for CPUs without VNNI.
        nodes_to_exclude: nodes kept in float.
        extra_options: further ONNX Runtime QDQ quantizer options (see ``_QUANTIZER_OPTIONS``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    calibrate_method: CalibrationName = "minmax"
    percentile: float = Field(default=99.999, gt=90.0, le=100.0)
    activation_type: IntType = "uint8"
    weight_type: IntType = "int8"
    activation_symmetric: bool = False
    weight_symmetric: bool = True
    per_channel: bool = True
    reduce_range: bool = False
    nodes_to_exclude: tuple[str, ...] = ()
    extra_options: dict[str, Any] = {}

    @field_validator("extra_options")
    @classmethod
    def _known_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - _QUANTIZER_OPTIONS - _CALIBRATION_OPTIONS)
        if unknown:
            fields = {"ActivationSymmetric": "activation_symmetric", "WeightSymmetric": "weight_symmetric"}
            hints = [f"{k} (use the field {fields[k]!r})" if k in fields else k for k in unknown]
            raise ValueError(f"unsupported extra_options {', '.join(hints)}")
        return value

    @model_validator(mode="after")
    def _supported_pair(self) -> QuantSettings:
        if self.activation_type == "int8" and self.weight_type == "uint8":
            raise ValueError("ONNX Runtime cannot run int8 activations with uint8 weights")
        return self

    @classmethod
    def from_scheme(cls, scheme: QuantizationScheme) -> QuantSettings:
        """The settings a device profile's quantization scheme asks for."""
        if scheme.format == "FakeQuantize":
            raise ValueError("a FakeQuantize scheme is OpenVINO's; ONNX Runtime profiles quantize to QDQ")
        settings = cls(
            calibrate_method=scheme.calibration_method,
            percentile=scheme.percentile,
            activation_type=scheme.activation_dtype,
            weight_type=scheme.weight_dtype,
            activation_symmetric=scheme.activation_symmetric,
            weight_symmetric=scheme.weight_symmetric,
            per_channel=scheme.weight_per_channel,
        )
        return enforce_scheme(settings, scheme)

    def describe(self) -> str:
        """A short human description, e.g. for the compile report."""
        symmetry = "symmetric" if self.activation_symmetric else "asymmetric"
        weights = "per-channel" if self.per_channel else "per-tensor"
        method = f"percentile {self.percentile:g}" if self.calibrate_method == "percentile" else self.calibrate_method
        text = (
            f"{method} calibration, {symmetry} {self.activation_type} activations, {weights} {self.weight_type} weights"
        )
        if self.nodes_to_exclude:
            text += f", {len(self.nodes_to_exclude)} node{'s' if len(self.nodes_to_exclude) > 1 else ''} in float"
        return text


def enforce_scheme(settings: QuantSettings, scheme: QuantizationScheme | None) -> QuantSettings:
    """Force what the profile's engine requires: for TensorRT (zero points of 0) signed symmetric per-channel INT8."""
    if scheme is None or not scheme.zero_point_zero:
        return settings
    return settings.model_copy(
        update={
            "activation_type": "int8",
            "weight_type": "int8",
            "activation_symmetric": True,
            "weight_symmetric": True,
            "per_channel": True,
            "extra_options": {**settings.extra_options, **_TENSORRT_OPTIONS},
        }
    )


def candidate_settings(scheme: QuantizationScheme) -> list[QuantSettings]:
    """The settings :func:`search_int8` tries, in order: the profile's own first, then the variants it allows.

    Calibration methods vary slowest (each new one costs a statistics pass),
    then activation symmetry (not for TensorRT, which needs symmetric), then
    per-channel weights where the profile asks for per-tensor ones.
    """
    base = QuantSettings.from_scheme(scheme)
    methods = [base.calibrate_method, *(m for m in _CALIBRATION if m != base.calibrate_method)]
    symmetries = [base.activation_symmetric] + ([] if scheme.zero_point_zero else [not base.activation_symmetric])
    channels = [base.per_channel] + ([] if base.per_channel else [True])
    return [
        base.model_copy(update={"calibrate_method": m, "activation_symmetric": s, "per_channel": c})
        for m in methods
        for s in symmetries
        for c in channels
    ]


# ----------------------------------------------------------------------------- graph preparation


def preprocess_graph(model_path: str | Path, out_path: str | Path) -> None:
    """Prepare an FP32 model for quantization with ONNX Runtime's ``quant_pre_process``.

    That is symbolic shape inference, ONNX Runtime's basic optimisations
    (constant folding, Conv+BatchNorm and other fusions) and ONNX shape
    inference. Fused graphs quantize better (one scale for Conv+BN instead of two) and
    every activation gets a known type, which quantization needs.

    Raises:
        EngineError: ONNX Runtime cannot load or optimise the model.
    """
    with _translated("prepare the model for quantization", model_path):
        quant_pre_process(str(model_path), str(out_path))
        if not Path(out_path).is_file():
            raise EngineError("ONNX Runtime wrote no pre-processed model", path=model_path)


class ArrayDataReader(CalibrationDataReader):
    """Feeds an in-memory ``(N, C, H, W)`` array to ONNX Runtime calibration, ``batch_size`` slices at a time."""

    def __init__(self, array: np.ndarray, input_name: str, batch_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self._array = np.ascontiguousarray(array, dtype=np.float32)
        self._input_name = input_name
        self._batch_size = batch_size
        self._start, self._end = 0, len(self._array)
        self._position = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next batch as an input feed, or None when the range is exhausted."""
        if self._position >= self._end:
            return None
        stop = min(self._position + self._batch_size, self._end)
        batch = {self._input_name: self._array[self._position : stop]}
        self._position = stop
        return batch

    def __len__(self) -> int:
        return math.ceil((self._end - self._start) / self._batch_size)

    def set_range(self, start_index: int, end_index: int) -> None:
        """Restrict reading to slices ``[start_index, end_index)`` (ORT's strided min-max calls this)."""
        self._start = max(0, start_index)
        self._end = min(len(self._array), end_index)
        self._position = self._start

    def rewind(self) -> None:
        """Start again from the beginning of the current range."""
        self._position = self._start


# ----------------------------------------------------------------------------- calibration


class _ActivationStatistics:
    """Statistics of every activation to quantize over the calibration slices, and the ranges derived from them.

    The first pass records each batch's minimum and maximum (min-max
    calibration); a second pass, only when entropy or percentile calibration is
    asked for, fills a histogram of |activation| over ``[0, max |activation|]``.
    """

    def __init__(self, model: onnx.ModelProto, input_name: str, calib: np.ndarray) -> None:
        if calib.ndim < 2 or len(calib) == 0:
            raise ValueError(f"calibration array must be (N, ...) with N >= 1, got shape {calib.shape}")
        self.tensors = _tensors_to_calibrate(model)
        augmented = copy.deepcopy(model)
        known = {o.name for o in augmented.graph.output}
        infos = _value_infos(augmented)
        augmented.graph.output.extend(infos[name] for name in self.tensors if name not in known)
        self._session = _session(augmented.SerializeToString(), "run the model for calibration")
        self._input_name = input_name
        self._calib = np.ascontiguousarray(calib, dtype=np.float32)
        self._batching = _batching(model, input_name)
        self._extremes: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
        self._histograms: dict[str, tuple[np.ndarray, float]] | None = None
        self._cache: dict[tuple[str, float, bool], dict[str, TensorData]] = {}

    def _outputs(self) -> Iterator[dict[str, np.ndarray]]:
        size, fixed = self._batching
        for start in range(0, len(self._calib), size):
            chunk = self._calib[start : start + size]
            with _translated("run the model for calibration", None):
                values = self._session.run(self.tensors, {self._input_name: _padded(chunk, size) if fixed else chunk})
            if fixed and len(chunk) < size:  # leave the padding out where the batch axis is visible
                values = [v[: len(chunk)] if v.ndim and v.shape[0] == size else v for v in values]
            yield dict(zip(self.tensors, values, strict=True))

    def extremes(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per tensor: the minimum and the maximum of each calibration batch."""
        if self._extremes is None:
            lows: dict[str, list[float]] = {name: [] for name in self.tensors}
            highs: dict[str, list[float]] = {name: [] for name in self.tensors}
            for outputs in self._outputs():
                for name, value in outputs.items():
                    lows[name].append(float(np.min(value)) if value.size else 0.0)
                    highs[name].append(float(np.max(value)) if value.size else 0.0)
            self._extremes = {name: (np.array(lows[name]), np.array(highs[name])) for name in self.tensors}
        return self._extremes

    def histograms(self) -> dict[str, tuple[np.ndarray, float]]:
        """Per tensor: a histogram of |activation| in ``HISTOGRAM_BINS`` bins over ``[0, amax]``, and ``amax``."""
        if self._histograms is None:
            extremes = self.extremes()
            amax = {name: max(abs(float(lo.min())), abs(float(hi.max()))) for name, (lo, hi) in extremes.items()}
            counts = {name: np.zeros(HISTOGRAM_BINS, dtype=np.int64) for name in self.tensors}
            for outputs in self._outputs():
                for name, value in outputs.items():
                    if amax[name] > 0 and value.size:
                        index = (np.abs(value.ravel()) * (HISTOGRAM_BINS / amax[name])).astype(np.int64)
                        np.minimum(index, HISTOGRAM_BINS - 1, out=index)
                        counts[name] += np.bincount(index, minlength=HISTOGRAM_BINS)
            self._histograms = {name: (counts[name], amax[name]) for name in self.tensors}
        return self._histograms

    def ranges(self, settings: QuantSettings) -> TensorsData:
        """Activation ranges for ``settings``' calibration method, as ONNX Runtime's quantizer takes them.

        A fresh object each call: the quantizer rewrites ranges in place.
        """
        moving_average = bool(settings.extra_options.get("CalibMovingAverage", False))
        key = (settings.calibrate_method, settings.percentile, moving_average)
        if key not in self._cache:
            self._cache[key] = self._compute(settings.calibrate_method, settings.percentile, moving_average)
        return TensorsData(_CALIBRATION[settings.calibrate_method], dict(self._cache[key]))

    def _compute(self, method: str, percentile: float, moving_average: bool) -> dict[str, TensorData]:
        ranges = {}
        histograms = self.histograms() if method != "minmax" else {}
        for name, (lows, highs) in self.extremes().items():
            low, high = (lows.mean(), highs.mean()) if moving_average else (lows.min(), highs.max())
            if method != "minmax":
                hist, amax = histograms[name]
                threshold = _kl_threshold(hist, amax) if method == "entropy" else _percentile(hist, amax, percentile)
                low, high = max(low, -threshold), min(high, threshold)
            ranges[name] = TensorData(lowest=np.array(low, dtype=np.float32), highest=np.array(high, dtype=np.float32))
        return ranges


def _kl_threshold(hist: np.ndarray, amax: float) -> float:
    """The |activation| clipping threshold that loses least information at 8 bits (KL divergence, TensorRT style).

    For each candidate threshold from ``ENTROPY_LEVELS`` bins up, the clipped
    distribution (outliers folded into the last bin) is compared with its
    quantization to ``ENTROPY_LEVELS`` levels; the threshold with the smallest
    KL divergence wins.
    """
    total = float(hist.sum())
    if total == 0 or amax <= 0:
        return amax
    counts = hist.astype(np.float64)
    beyond = total - np.cumsum(counts)
    best_bins, best_divergence = len(counts), math.inf
    for bins in range(ENTROPY_LEVELS, len(counts) + 1):
        clipped = counts[:bins]
        reference = clipped.copy()
        reference[-1] += beyond[bins - 1]
        nonzero = clipped != 0
        width = bins // ENTROPY_LEVELS
        starts = np.arange(ENTROPY_LEVELS) * width
        merged = np.add.reduceat(clipped, starts)
        occupied = np.add.reduceat(nonzero.astype(np.float64), starts)
        group = np.minimum(np.arange(bins) // width, ENTROPY_LEVELS - 1)
        spread = np.where(occupied > 0, merged / np.maximum(occupied, 1.0), 0.0)
        candidate = np.where(nonzero, spread[group], 0.0)
        divergence = _kl_divergence(reference, candidate)
        if divergence < best_divergence:
            best_bins, best_divergence = bins, divergence
    return amax * best_bins / len(counts)


def _kl_divergence(p: np.ndarray, q: np.ndarray, eps: float = 1e-4) -> float:
    """KL(p || q) of two unnormalised histograms, with empty bins smoothed as ONNX Runtime and MXNet do."""
    smooth_p, smooth_q = _smooth(p, eps), _smooth(q, eps)
    if smooth_p is None or smooth_q is None:
        return math.inf
    p, q = smooth_p / smooth_p.sum(), smooth_q / smooth_q.sum()
    return float(np.sum(p * np.log(p / q)))


def _smooth(x: np.ndarray, eps: float) -> np.ndarray | None:
    zeros = x == 0
    nonzero = x.size - int(zeros.sum())
    if nonzero == 0:
        return None
    smoothed = x + np.where(zeros, eps, -eps * (x.size - nonzero) / nonzero)
    return smoothed if (smoothed > 0).all() else None


def _percentile(hist: np.ndarray, amax: float, percentile: float) -> float:
    """The |activation| below which ``percentile`` % of the values lie (upper edge of its bin)."""
    total = hist.sum()
    if total == 0 or amax <= 0:
        return amax
    index = int(np.searchsorted(np.cumsum(hist) / total, percentile / 100.0))
    return amax * min(index + 1, len(hist)) / len(hist)


def _tensors_to_calibrate(model: onnx.ModelProto) -> list[str]:
    """Float activations read or written by an op the quantizer may quantize (what ORT's calibrators select)."""
    infos = _value_infos(model)
    initializers = {init.name for init in model.graph.initializer}
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    found: dict[str, None] = {}
    for node in model.graph.node:
        if node.op_type not in OP_TYPES_TO_QUANTIZE:
            continue
        for name in [*node.input, *node.output]:
            info = infos.get(name)
            if (
                info is not None
                and name not in initializers
                and info.type.HasField("tensor_type")
                and info.type.tensor_type.elem_type in floats
            ):
                found[name] = None
    return list(found)


def _value_infos(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    infos = {vi.name: vi for vi in model.graph.value_info}
    infos.update({vi.name: vi for vi in model.graph.output})
    infos.update({vi.name: vi for vi in model.graph.input})
    return infos


# ----------------------------------------------------------------------------- quantization


def quantize(
    model_path: str | Path,
    calib_array: np.ndarray,
    settings: QuantSettings,
    profile_scheme: QuantizationScheme | None = None,
    *,
    input_name: str | None = None,
) -> bytes:
    """Quantize an FP32 ONNX model statically to INT8 QDQ and return the serialized model.

    The model is pre-processed first unless :func:`preprocess_graph` already
    did. ``profile_scheme`` forces what the profile's engine requires (see
    :func:`enforce_scheme`). The same inputs give byte-identical output.

    Args:
        model_path: the FP32 ONNX model.
        calib_array: calibration slices ``(N, C, H, W)`` for the model's image input.
        settings: how to quantize.
        profile_scheme: the target profile's quantization scheme, if any.
        input_name: the input the slices feed; needed only for models with several inputs.

    Raises:
        EngineError: ONNX Runtime cannot load, run or quantize the model.
    """
    settings = enforce_scheme(settings, profile_scheme)
    model = _load_prepared(Path(model_path))
    name = input_name or _single_input(model, model_path)
    statistics = _ActivationStatistics(model, name, np.asarray(calib_array))
    return _quantize_model(model, statistics.ranges(settings), settings)


def _load_prepared(model_path: Path) -> onnx.ModelProto:
    """The model at ``model_path`` pre-processed for quantization, shape-inferred and with every node named."""
    with tempfile.TemporaryDirectory(prefix="medge-int8-") as tmp:
        source = model_path
        with _translated("load the model", model_path):
            header = onnx.load(str(model_path), load_external_data=False)
        if not model_has_pre_process_metadata(header):
            source = Path(tmp) / "preprocessed.onnx"
            preprocess_graph(model_path, source)
        with _translated("infer the model's shapes", model_path):
            model = load_model_with_shape_infer(source)
    taken = {node.name for node in model.graph.node}
    for index, node in enumerate(model.graph.node):
        if not node.name:  # float fall-back and reports go by node name
            node.name = f"{node.op_type}_{index}"
            while node.name in taken:
                node.name += "_"
            taken.add(node.name)
    return model


def _quantize_model(
    model: onnx.ModelProto,
    ranges: TensorsData,
    settings: QuantSettings,
    *,
    nodes_to_quantize: Sequence[str] = (),
) -> bytes:
    """Insert Q/DQ for ``settings`` with precomputed activation ranges; the serialized QDQ model."""
    options = {k: v for k, v in settings.extra_options.items() if k in _QUANTIZER_OPTIONS}
    options["ActivationSymmetric"] = settings.activation_symmetric
    options["WeightSymmetric"] = settings.weight_symmetric
    weight_type, activation_type = _QTYPE[settings.weight_type], _QTYPE[settings.activation_type]
    with _translated("quantize the model", None):
        work = update_opset_version(copy.deepcopy(model), weight_type, activation_type)
        quantizer = QDQQuantizer(
            work,
            settings.per_channel,
            settings.reduce_range,
            weight_type,
            activation_type,
            ranges,
            list(nodes_to_quantize),
            list(settings.nodes_to_exclude),
            list(OP_TYPES_TO_QUANTIZE),
            options,
        )
        quantizer.quantize_model()
        quantizer.model.topological_sort()  # Q/DQ nodes are appended; ONNX wants graph order (as ORT's save does)
    quantized = quantizer.model.model
    _compact(quantized, keep=_names(model))
    return quantized.SerializeToString()


def _names(model: onnx.ModelProto) -> set[str]:
    """Every node, tensor and initializer name of ``model``'s main graph."""
    graph = model.graph
    names = {node.name for node in graph.node}
    names.update(name for node in graph.node for name in (*node.input, *node.output))
    names.update(init.name for init in graph.initializer)
    names.update(value.name for value in (*graph.input, *graph.output))
    return names


def _compact(model: onnx.ModelProto, keep: set[str]) -> None:
    """Give the quantizer's generated names short ids and drop value_info, in place.

    A package ships the model file uncompressed, and on a small CNN the names
    ONNX Runtime generates for Q/DQ nodes, scales and zero points (``<tensor>_
    DequantizeLinear_Output`` ...) and the shape annotations take a sixth of
    the file. Names from the FP32 model are kept, so its nodes and tensors
    stay recognisable; ONNX Runtime re-infers shapes at load.
    """
    graph = model.graph
    if any(
        attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for attr in n.attribute
    ):
        return  # subgraphs may refer to outer names: leave such models as they are
    renamed: dict[str, str] = {}
    counter = iter(range(1 << 62))

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        if name not in renamed:
            candidate = f"q{next(counter)}"
            while candidate in keep:
                candidate = f"q{next(counter)}"
            renamed[name] = candidate
        return renamed[name]

    for node in graph.node:
        node.name = short(node.name)
        node.input[:] = [short(name) for name in node.input]
        node.output[:] = [short(name) for name in node.output]
    for init in graph.initializer:
        init.name = short(init.name)
    del graph.value_info[:]


# ----------------------------------------------------------------------------- TensorRT check


_WEIGHTED = {"Conv": 0, "ConvTranspose": 1}
"""Weighted ops and the output-channel axis of their weight (Gemm and MatMul depend on attributes)."""


def check_tensorrt_qdq(model_bytes: bytes) -> list[str]:
    """What stops TensorRT from reading a QDQ model as explicit INT8; an empty list when nothing does.

    Checks that every QuantizeLinear/DequantizeLinear has an explicit int8 zero
    point of 0, that the weights of Conv/ConvTranspose/Gemm/MatMul are
    quantized per channel, and that every input of a quantized op (except
    biases) comes through a DequantizeLinear, fed by a QuantizeLinear for
    activations.
    """
    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    problems = []

    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        label = f"{node.op_type} {node.name!r} of {_quantized_tensor(node, graph)!r}"
        if len(node.input) < 3 or not node.input[2]:
            problems.append(f"{label} has no zero point (defaults to uint8); TensorRT needs int8 zero points of 0")
            continue
        zero_point = initializers.get(node.input[2])
        if zero_point is None:
            problems.append(f"{label}: zero point {node.input[2]!r} is not a constant")
            continue
        if zero_point.data_type != onnx.TensorProto.INT8:
            kind = onnx.TensorProto.DataType.Name(zero_point.data_type).lower()
            problems.append(f"{label}: zero point {node.input[2]!r} is {kind}; TensorRT needs int8")
        if np.any(numpy_helper.to_array(zero_point) != 0):
            problems.append(f"{label}: zero point {node.input[2]!r} is not 0")

    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        sources = [producers.get(name) for name in node.input]
        if not any(p is not None and p.op_type == "DequantizeLinear" for p in sources):
            continue  # a float node
        label = f"{node.op_type} {node.name!r}"
        for index, (name, producer) in enumerate(zip(node.input, sources, strict=True)):
            if not name or (index == 2 and node.op_type in ("Conv", "ConvTranspose", "Gemm")):
                continue  # absent, or a bias (TensorRT folds float biases)
            if producer is None or producer.op_type != "DequantizeLinear":
                if name in initializers and initializers[name].data_type not in (onnx.TensorProto.FLOAT,):
                    continue  # shapes, axes and other integer constants
                problems.append(f"{label}: input {name!r} is not quantized (no DequantizeLinear)")
                continue
            feeding = producer.input[0]
            if feeding not in initializers and producers.get(feeding, onnx.NodeProto()).op_type != "QuantizeLinear":
                problems.append(f"{label}: input {name!r} is dequantized without a QuantizeLinear before it")
        axis = _weight_axis(node)
        if axis is None:
            continue
        dequantize = sources[1]
        if dequantize is None or dequantize.op_type != "DequantizeLinear":
            continue
        scale = initializers.get(dequantize.input[1])
        weight = initializers.get(dequantize.input[0])
        if scale is None or weight is None:
            continue
        channels = weight.dims[axis] if len(weight.dims) > axis else 1
        declared = next((a.i for a in dequantize.attribute if a.name == "axis"), 1)  # the ONNX default axis is 1
        if len(scale.dims) != 1 or scale.dims[0] != channels:
            problems.append(
                f"{label}: weight {node.input[1]!r} is quantized per tensor; TensorRT INT8 wants per-channel"
            )
        elif channels > 1 and declared % len(weight.dims) != axis:
            problems.append(f"{label}: weight {node.input[1]!r} is quantized along axis {declared}, not {axis}")
    return problems


def _quantized_tensor(node: onnx.NodeProto, graph: onnx.GraphProto) -> str:
    """The FP32 tensor a Q or DQ node stands for: a Q node's input, or what a DQ's output feeds."""
    if node.op_type == "QuantizeLinear":
        return node.input[0]
    consumers = [n for n in graph.node if node.output[0] in n.input]
    if consumers and consumers[0].op_type != "QuantizeLinear":
        return f"input of {consumers[0].op_type} {consumers[0].name}"
    return node.output[0]


def _weight_axis(node: onnx.NodeProto) -> int | None:
    """The output-channel axis of ``node``'s weight input, or None when it has no constant weight."""
    if node.op_type in _WEIGHTED:
        return _WEIGHTED[node.op_type]
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op_type == "MatMul" and len(node.input) > 1:
        return 1  # a constant B is (K, N): one scale per output column
    return None


# ----------------------------------------------------------------------------- the search


@dataclass(frozen=True)
class Int8Attempt:
    """One quantized model tried by :func:`search_int8` and how it fared against FP32."""

    settings: QuantSettings
    gate: GateResult
    seconds: float

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures for the compile report."""
        report = self.gate.report
        return {
            "settings": self.settings.describe(),
            "nodes_in_float": list(self.settings.nodes_to_exclude),
            "agreement": report.agreement,
            "flip_rate": report.flip_rate,
            "max_abs_delta": report.max_abs_delta,
            "mean_abs_delta": report.details.get("mean_abs_delta"),
            "auc_drop": report.details.get("auc_drop"),
            "passed": self.gate.passed,
            "failures": list(self.gate.failures),
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class Int8Result:
    """The model :func:`search_int8` chose and how it got there.

    Attributes:
        model: the serialized INT8 QDQ ONNX model.
        settings: the settings that made it (``nodes_to_exclude`` are kept in float).
        gate: its fidelity against FP32 on the held-back slices, with confidence intervals.
        float_nodes: node -> why it stays in float (for ``CompileRecord.float_nodes``).
        attempts: every model tried, in order (the chosen one among them).
        layer_costs: what each layer cost on its own, worst first (empty when no fall-back was needed).
    """

    model: bytes
    settings: QuantSettings
    gate: GateResult
    float_nodes: dict[str, str]
    attempts: list[Int8Attempt]
    layer_costs: list[LayerCost] = field(default_factory=list)

    @property
    def method(self) -> str:
        """How the model was made, in words (for ``CompileRecord.method``)."""
        return f"int8 QDQ (onnxruntime): {self.settings.describe()}"


def search_int8(
    model_path: str | Path,
    calib: np.ndarray,
    evaluation: np.ndarray,
    labels: np.ndarray | None,
    config: ModelConfig,
    scheme: QuantizationScheme,
    *,
    progress: Callable[[str], None] | None = None,
    max_float_nodes: int = 8,
) -> Int8Result:
    """Find INT8 settings under which ``model_path`` passes ``config.gate`` against FP32, keeping float minimal.

    The profile's own settings are tried first, then the other calibration
    methods and activation symmetries (:func:`candidate_settings`); the first
    that passes wins. When none does, the best (then the second best
    calibration method) is taken, each layer's cost is measured by quantizing
    it alone (:func:`~quantization.layer_sensitivity.rank_layers`), and the
    costliest 1, 2, 4 ... up to ``max_float_nodes`` layers are kept in float
    until the gate passes, then trimmed to the fewest that still pass.

    Args:
        model_path: the FP32 ONNX model (its image input named ``config.input.name``).
        calib: calibration slices ``(N, C, H, W)``, preprocessed as the runtime does.
        evaluation: held-back slices, same form, never used for calibration.
        labels: ground truth of the held-back slices, ``(M,)`` or ``(M, L)``, or None.
        config: the model config (labels, thresholds, outputs, gate).
        scheme: the target profile's quantization scheme.
        progress: called with one line per step, for the CLI.
        max_float_nodes: most layers the fall-back may keep in float.

    Raises:
        QuantizationGateError: nothing passes the gate; carries the best report and the costliest layers.
        EngineError: ONNX Runtime cannot load, run or quantize the model.
    """
    path = Path(model_path)
    started = time.monotonic()

    def say(message: str) -> None:
        log.info("%s", message)
        if progress is not None:
            progress(message)

    evaluation = np.ascontiguousarray(evaluation, dtype=np.float32)
    if len(evaluation) == 0 or len(calib) == 0:
        raise ValueError("search_int8 needs calibration and held-back slices")
    if labels is not None and len(labels) != len(evaluation):
        raise ValueError(f"{len(labels)} labels for {len(evaluation)} held-back slices")
    model = _load_prepared(path)
    input_name = config.input.name
    batching = _batching(model, input_name)
    outputs = [config.outputs.scores] + ([config.outputs.location] if config.outputs.location else [])
    thresholds = [config.thresholds[label] for label in config.labels]
    with _translated("load the model", path):
        original = path.read_bytes()
    reference = _predict(original, input_name, evaluation, outputs, batching, config)
    say(f"FP32 reference outputs for {len(evaluation)} held-back slices")

    say(f"calibrating activation ranges on {len(calib)} slices")
    statistics = _ActivationStatistics(model, input_name, np.asarray(calib))

    def evaluate(
        settings: QuantSettings,
        nodes_to_quantize: Sequence[str] = (),
        subset: np.ndarray | None = None,
        bootstrap: int = 0,
    ) -> tuple[bytes, GateResult, dict[str, np.ndarray]]:
        blob = _quantize_model(model, statistics.ranges(settings), settings, nodes_to_quantize=nodes_to_quantize)
        slices = evaluation if subset is None else evaluation[subset]
        predicted = _predict(blob, input_name, slices, outputs, batching, config)
        expected = reference if subset is None else {k: v[subset] for k, v in reference.items()}
        truth = None if labels is None else (labels if subset is None else np.asarray(labels)[subset])
        result = compare(
            expected[config.outputs.scores],
            predicted[config.outputs.scores],
            threshold=thresholds,
            labels=truth,
            gate=config.gate,
            bootstrap=bootstrap,
        )
        return blob, result, predicted

    attempts: list[Int8Attempt] = []

    def attempt(settings: QuantSettings) -> Int8Attempt:
        t0 = time.monotonic()
        _, result, _ = evaluate(settings)
        tried = Int8Attempt(settings, result, time.monotonic() - t0)
        attempts.append(tried)
        verdict = "passes" if result.passed else "fails: " + "; ".join(result.failures)
        say(
            f"{settings.describe()}: agreement {result.report.agreement:.1%}, flips {result.report.flip_rate:.1%}, "
            f"max |Δp| {result.report.max_abs_delta:.4f} — {verdict}"
        )
        return tried

    def finish(settings: QuantSettings, float_nodes: dict[str, str], costs: list[LayerCost]) -> Int8Result:
        blob, result, predicted = evaluate(settings, bootstrap=1000)
        if not result.passed:  # cannot happen: the same model passed without intervals
            raise EngineError("the chosen INT8 model no longer passes the gate", path=path)
        details = dict(result.report.details)
        if config.outputs.location:
            # Not gated (AccuracyGate has no location criterion) but reported: INT8 can move it a lot.
            name = config.outputs.location
            moved = np.abs(reference[name] - predicted[name]).reshape(len(evaluation), -1).max(axis=1)
            positive = np.any(reference[config.outputs.scores] >= np.asarray(thresholds), axis=1)
            details["location_max_abs_delta"] = float(moved.max())
            details["location_max_abs_delta_positive"] = float(moved[positive].max()) if positive.any() else None
        details["search_seconds"] = round(time.monotonic() - started, 2)
        report = result.report.model_copy(update={"details": details})
        final = GateResult(report=report, passed=True, failures=[])
        say(f"chosen: {settings.describe()} ({time.monotonic() - started:.0f} s)")
        return Int8Result(blob, settings, final, float_nodes, attempts, costs)

    for settings in candidate_settings(scheme):
        if attempt(settings).gate.passed:
            return finish(settings, {}, [])

    subset = _probe_subset(len(evaluation))
    layers = [(node.name, node.op_type) for node in model.graph.node if node.op_type in OP_TYPES_TO_QUANTIZE]
    worst: dict[str, str] = {}
    for base in _fallback_bases(attempts):
        say(f"no setting passes the gate; measuring what each layer costs under {base.describe()}")
        costs = rank_layers(layers, functools.partial(_measure_alone, evaluate, base, subset))
        if not worst:
            worst = {cost.node: cost.reason() for cost in costs[:5]}
        if costs:
            say("costliest layers: " + "; ".join(f"{c.node} ({c.reason()})" for c in costs[:5]))
        chosen = float_fallback(costs, functools.partial(_with_float, attempt, base), max_float_nodes)
        if chosen is not None:
            reasons = {cost.node: cost.reason() for cost in costs}
            settings = base.model_copy(update={"nodes_to_exclude": chosen})
            return finish(settings, {node: reasons[node] for node in chosen}, costs)

    final = max(attempts, key=lambda a: _fidelity_key(a.gate))
    message = (
        f"the INT8 model fails the accuracy gate ({'; '.join(final.gate.failures)}) with every setting tried "
        f"and up to {max_float_nodes} layers kept in float; best: {final.settings.describe()}"
    )
    if worst:
        message += "; layers costing most: " + "; ".join(f"{node!r} ({why})" for node, why in worst.items())
    raise QuantizationGateError(
        message,
        report=final.gate.report,
        failures=final.gate.failures,
        worst_layers=worst,
        attempts=[a.summary() for a in attempts],
        path=path,
    )


def _measure_alone(
    evaluate: Callable[..., tuple[bytes, GateResult, dict[str, np.ndarray]]],
    settings: QuantSettings,
    subset: np.ndarray | None,
    node: str,
) -> GateResult:
    """The model with only ``node`` quantized, against FP32 on the probe slices."""
    return evaluate(settings, nodes_to_quantize=[node], subset=subset)[1]


def _with_float(
    attempt: Callable[[QuantSettings], Int8Attempt], settings: QuantSettings, nodes: tuple[str, ...]
) -> GateResult:
    """The gate's verdict on ``settings`` with ``nodes`` kept in float (recorded as an attempt)."""
    return attempt(settings.model_copy(update={"nodes_to_exclude": nodes})).gate


def _fallback_bases(attempts: Sequence[Int8Attempt]) -> list[QuantSettings]:
    """The settings to build a float fall-back on: the best two calibration methods.

    Ties go to min-max, which clips nothing (a model failing everywhere usually
    fails on outliers), then to the order tried.
    """
    order = {id(a): i for i, a in enumerate(attempts)}
    ranked = sorted(
        attempts,
        key=lambda a: (_fidelity_key(a.gate), a.settings.calibrate_method == "minmax", -order[id(a)]),
        reverse=True,
    )
    bases: list[QuantSettings] = []
    for tried in ranked:
        if tried.settings.calibrate_method not in {b.calibrate_method for b in bases}:
            bases.append(tried.settings)
    return bases[:FALLBACK_BASES]


def _fidelity_key(result: GateResult) -> tuple[float, float, float, float]:
    """Orders results best last: agreement, then fewer flips, smaller AUC drop, smaller mean |Δp|."""
    report = result.report
    auc_drop = report.details.get("auc_drop") or 0.0
    return (report.agreement, -report.flip_rate, -auc_drop, -report.details.get("mean_abs_delta", 0.0))


def _probe_subset(size: int) -> np.ndarray | None:
    """Evenly spaced held-back slices for per-layer probes, or None for all of them."""
    if size <= PROBE_SAMPLES:
        return None
    return np.unique(np.linspace(0, size - 1, PROBE_SAMPLES).round().astype(np.int64))


# ----------------------------------------------------------------------------- running models


def _predict(
    model: bytes,
    input_name: str,
    slices: np.ndarray,
    outputs: list[str],
    batching: tuple[int, bool],
    config: ModelConfig,
) -> dict[str, np.ndarray]:
    """Run ``model`` on the CPU over ``slices``; scores as probabilities ``(N, L)``."""
    session = _session(model, "run the model")
    size, fixed = batching
    parts: list[list[np.ndarray]] = []
    for start in range(0, len(slices), size):
        chunk = slices[start : start + size]
        with _translated("run the model", None):
            values = session.run(outputs, {input_name: _padded(chunk, size) if fixed else chunk})
        parts.append([v[: len(chunk)] for v in values])
    result = {name: np.concatenate([p[i] for p in parts]) for i, name in enumerate(outputs)}
    scores = result[config.outputs.scores].astype(np.float64).reshape(len(slices), -1)
    if config.outputs.score_kind == "logit":
        scores = 1.0 / (1.0 + np.exp(-scores))
    result[config.outputs.scores] = scores
    return result


def _session(model: bytes, what: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    with _translated(what, None):
        return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def _batching(model: onnx.ModelProto, input_name: str) -> tuple[int, bool]:
    """How many slices to run at once, and whether the model insists on exactly that many.

    A symbolic batch dimension runs 16 slices at a time; a fixed one runs its
    size, the last batch padded.
    """
    for value in model.graph.input:
        if value.name == input_name:
            dims = value.type.tensor_type.shape.dim
            if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
                return int(dims[0].dim_value), True
            return 16, False
    raise EngineError(f"the model has no input named {input_name!r}")


def _padded(chunk: np.ndarray, batch: int) -> np.ndarray:
    """``chunk`` padded to a fixed batch size by repeating its last slice (outputs are cut back after)."""
    if len(chunk) >= batch:
        return chunk
    pad = np.repeat(chunk[-1:], batch - len(chunk), axis=0)
    return np.concatenate([chunk, pad])


def _single_input(model: onnx.ModelProto, path: str | Path) -> str:
    initializers = {init.name for init in model.graph.initializer}
    names = [value.name for value in model.graph.input if value.name not in initializers]
    if len(names) != 1:
        raise EngineError(f"the model has inputs {names}: name the one the calibration slices feed", path=path)
    return names[0]


@contextlib.contextmanager
def _translated(what: str, path: str | Path | None) -> Iterator[None]:
    """Turn ONNX / ONNX Runtime failures into :class:`EngineError` naming what medge was doing."""
    try:
        yield
    except MedgeError:
        raise
    except Exception as exc:  # ORT and its quantizer raise RuntimeError, ValueError, AssertionError, ...
        raise EngineError(f"ONNX Runtime could not {what}: {exc}", path=path) from exc
