"""OpenVINO INT8/FP16 compilation: gate, float fall-back, determinism and size, on phantom CT slices.

The fixture network is small (a conv/BN/ReLU stem, a residual block and a conv
head), written directly as ONNX (``onnx_builders``), with random convolutions,
batch norms taking their statistics from the slices, and a linear read-out
fitted in closed form to a real image property (the lung fraction of the
slice), so its score follows the image like a trained model's does. The label
is "lung fraction above the widest gap between patients"; a network without
training has no decision margin of its own, so the read-out's bias puts the
decision (0.5) midway between the two classes' FP32 scores, as training does
for a real model. That margin is what lets plain INT8 pass whatever the random
weights: with the median lung fraction as label (one patient's slices on both
sides, a few pixels apart) the AUC gate on 40 slices passed or failed by luck.

The "outlier" variants scale one channel of a head activation by 300 and
undo it in the next convolution's weights: FP32 outputs are unchanged, but
the per-tensor activation range of that convolution's input is ruined for
INT8, so only keeping that layer in float can pass the gate.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import openvino as ov
import pytest

from quantization.errors import QuantizationGateError
from quantization.openvino_int8 import OpenVinoInt8Result, fp16_openvino, quantize_openvino
from quantization.openvino_ir import convert_to_openvino_ir
from runtime.engines.openvino_engine import OpenVinoEngine
from sdk.model_config import ModelConfig
from sdk.preprocess_spec import PreprocessSpec, Window
from sdk.preprocessing import preprocess
from sdk.testing import PhantomSpec, generate_series
from tests.quantization.onnx_builders import CnnGraph, channel_statistics

SPEC = PreprocessSpec(modalities=["CT"], window=Window(center=-600, width=1500), size=(128, 128))
N_CALIB = 80
OUTLIER_SCALE = 300.0


@pytest.fixture(scope="module")
def slices() -> tuple[np.ndarray, np.ndarray]:
    """120 phantom CT slices through the runtime's preprocessing, and a lung-fraction label per slice.

    20 slices from each of 6 patients, interleaved (slice 0 of every patient, then slice 1, ...) so
    that the held-back slices come from every patient. A slice is positive when its lung fraction
    lies above the widest gap between them: patients differ far more than one patient's slices.
    """
    series = [
        np.concatenate([preprocess(ds, SPEC) for ds in generate_series(PhantomSpec(slices=20), seed=seed).datasets])
        for seed in range(6)
    ]
    x = np.stack(series, axis=1).reshape(-1, *series[0].shape[1:])
    lung = _lung_fraction(x)
    return x, (lung > _widest_gap(lung)).astype(np.int8)


def _lung_fraction(x: np.ndarray) -> np.ndarray:
    """Share of each slice's pixels in the lung window's aerated range."""
    return ((x > 0.26) & (x < 0.45)).mean(axis=(1, 2, 3))


def _widest_gap(values: np.ndarray) -> float:
    """The middle of the widest gap between sorted ``values`` in their central 70 %: a threshold with a margin."""
    ordered = np.sort(values)
    low, high = int(0.15 * len(ordered)), int(0.85 * len(ordered))
    widest = low + int(np.argmax(np.diff(ordered[low:high])))
    return float(ordered[widest] + ordered[widest + 1]) / 2


def _export(folder: Path, x: np.ndarray, *, outliers: int, width: int = 64) -> tuple[Path, ModelConfig]:
    """The fixture network for slices ``x``, saved as ONNX opset 17, and its model config.

    A conv/BN/ReLU stem (two stride-2 layers), a residual block, ``outliers + 1`` conv/BN/ReLU head
    layers, average and max pooling concatenated, and a linear read-out (``prob``); the sigmoids of
    the first two pooled features stand in for a ``loc``. Each batch norm takes its statistics from
    ``x`` and is folded into its convolution. 64 channels, because the read-out averages INT8 noise
    over its features: with 32, that noise came close to the class margin for some seeds.
    """
    graph = CnnGraph("image", x.shape[1:], seed=0)
    data = {"image": x}  # activations for x, layer by layer: each layer runs on the one before

    def forward(out: str, *sources: str) -> str:
        data[out] = graph.run([out], {name: data[name] for name in sources})[0]
        return out

    def conv_bn(y: str, channels: int, name: str, stride: int = 1) -> str:
        conv = graph.conv(y, channels, name=name, stride=stride, bias=False)
        mean, var = channel_statistics(graph.run([conv], {y: data[y]})[0])
        return graph.batch_norm(conv, mean, var, name=name)

    def cbr(y: str, channels: int, prefix: str, stride: int = 1) -> str:
        return forward(graph.relu(conv_bn(y, channels, f"{prefix}.0/Conv", stride), name=f"{prefix}.2/Relu"), y)

    y = cbr(cbr("image", 16, "/stem/stem.0/stem.0", 2), width, "/stem/stem.1/stem.1", 2)
    r = forward(graph.relu(conv_bn(y, width, "/conv1/Conv"), name="/Relu"), y)
    trunk = forward(graph.relu(graph.add(y, conv_bn(r, width, "/conv2/Conv"), name="/Add"), name="/Relu_1"), y, r)
    y = trunk
    for k in range(outliers + 1):
        y = cbr(y, width, f"/head/head.{k}/head.{k}")
    average = graph.flatten(graph.global_average_pool(y, name="/GlobalAveragePool"), name="/Flatten")
    peak = graph.flatten(graph.global_max_pool(y, name="/MaxPool"), name="/Flatten_1")
    features = graph.concat([average, peak], name="/Concat")
    for k in range(outliers):
        # Channel 0 of head k's output x 300 (its ReLU commutes with the scale), undone by head k + 1.
        graph.params[f"/head/head.{k}/head.{k}.0/Conv.weight"][0] *= OUTLIER_SCALE
        graph.params[f"/head/head.{k}/head.{k}.0/Conv.bias"][0] *= OUTLIER_SCALE
        graph.params[f"/head/head.{k + 1}/head.{k + 1}.0/Conv.weight"][:, 0] /= OUTLIER_SCALE
    feats = graph.run([features], {trunk: data[trunk]})[0].astype(np.float64)

    lung = _lung_fraction(x)
    target = (lung - lung.mean()) / lung.std() * 3
    centred = feats - feats.mean(0)
    weights = np.linalg.solve(centred.T @ centred + 1e-3 * len(feats) * np.eye(feats.shape[1]), centred.T @ target)
    logits = centred @ weights
    positive = lung > _widest_gap(lung)
    middle = (logits[~positive].max() + logits[positive].min()) / 2
    logit = graph.gemm(features, weights[None], np.array([-(feats.mean(0) @ weights) - middle]), name="/fc/Gemm")
    graph.sigmoid(logit, name="/Sigmoid", output="prob")
    graph.sigmoid(graph.first_columns(features, 2, name="/Slice"), name="/Sigmoid_1", output="loc")
    path = folder / f"net-{outliers}.onnx"
    onnx.save(graph.model(["prob", "loc"]), str(path))
    config = ModelConfig(
        name="fixture-net",
        version="1.0.0",
        task="classification",
        labels=["finding"],
        thresholds={"finding": 0.5},
        input={"name": "image"},  # type: ignore[arg-type]
        outputs={"scores": "prob", "location": "loc"},  # type: ignore[arg-type]
        preprocessing=SPEC,
    )
    return path, config


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory, slices: tuple[np.ndarray, np.ndarray]) -> tuple[Path, ModelConfig]:
    return _export(tmp_path_factory.mktemp("plain"), slices[0], outliers=0)


@pytest.fixture(scope="module")
def one_outlier(
    tmp_path_factory: pytest.TempPathFactory, slices: tuple[np.ndarray, np.ndarray]
) -> tuple[Path, ModelConfig]:
    return _export(tmp_path_factory.mktemp("one-outlier"), slices[0], outliers=1)


@pytest.fixture(scope="module")
def plain_int8(plain: tuple[Path, ModelConfig], slices: tuple[np.ndarray, np.ndarray]) -> OpenVinoInt8Result:
    x, labels = slices
    path, config = plain
    return quantize_openvino(path, x[:N_CALIB], x[N_CALIB:], labels[N_CALIB:], config)


def _ir_ops(files: dict[str, bytes]) -> list[tuple[str, str, str]]:
    """(type, name, element type) of every node of an IR held in memory."""
    model = ov.Core().read_model(files["model.xml"].decode(), ov.Tensor(np.frombuffer(files["model.bin"], np.uint8)))
    return [
        (op.get_type_name(), op.get_friendly_name(), op.get_output_element_type(0).get_type_name())
        for op in model.get_ordered_ops()
    ]


def _weights_of(files: dict[str, bytes], layer: str) -> str:
    """Element type of the constant at the root of a convolution's weight input."""
    model = ov.Core().read_model(files["model.xml"].decode(), ov.Tensor(np.frombuffer(files["model.bin"], np.uint8)))
    conv = next(op for op in model.get_ordered_ops() if op.get_friendly_name() == f"{layer}/WithoutBiases")
    node = conv.input(1).get_source_output().get_node()
    while node.get_type_name() != "Constant":
        node = node.input(0).get_source_output().get_node()
    return node.get_output_element_type(0).get_type_name()


def test_int8_ir_passes_the_gate_with_int8_weights_and_a_small_bin(
    plain: tuple[Path, ModelConfig], plain_int8: OpenVinoInt8Result, slices: tuple[np.ndarray, np.ndarray]
) -> None:
    x, labels = slices
    path, _ = plain
    result = plain_int8
    assert result.gate.passed, result.gate.failures
    assert result.precision == "int8"
    assert not result.settings.accuracy_control
    assert [a.settings.preset for a in result.attempts] == ["performance"]
    assert result.float_layers == {}

    kinds = {(kind, dtype) for kind, _, dtype in _ir_ops(result.files)}
    assert ("FakeQuantize", "f32") in kinds
    assert ("Constant", "i8") in kinds
    assert _weights_of(result.files, "/head/head.0/head.0.0/Conv") == "i8"

    fp32 = convert_to_openvino_ir(path)
    assert len(fp32["model.bin"]) / len(result.files["model.bin"]) >= 3.5

    # The report is what the shipped bytes do: rerun them through the runtime's engine against ONNX Runtime.
    engine = OpenVinoEngine(result.files["model.xml"], result.files["model.bin"], ["CPU"], precision="int8")
    try:
        compiled = np.concatenate([engine.run({"image": x[i : i + 8]})["prob"] for i in range(N_CALIB, len(x), 8)])
    finally:
        engine.close()
    reference = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        ["prob"], {"image": x[N_CALIB:]}
    )[0]
    agreement = np.mean((compiled[:, 0] > 0.5) == (reference[:, 0] > 0.5))
    assert agreement == pytest.approx(result.gate.report.agreement)
    assert result.gate.report.max_abs_delta == pytest.approx(float(np.abs(compiled - reference).max()), abs=1e-6)
    assert result.gate.report.auc_reference is not None  # labels were given, so the AUC was gated
    assert result.gate.report.samples == len(x) - N_CALIB == len(labels) - N_CALIB


def test_compiling_twice_gives_byte_identical_ir(
    plain: tuple[Path, ModelConfig], plain_int8: OpenVinoInt8Result, slices: tuple[np.ndarray, np.ndarray]
) -> None:
    # By now the process has converted and quantized other models, so OpenVINO's node counters have moved on.
    x, labels = slices
    path, config = plain
    ov.convert_model(str(path))
    again = quantize_openvino(path, x[:N_CALIB], x[N_CALIB:], labels[N_CALIB:], config)
    assert again.files["model.bin"] == plain_int8.files["model.bin"]
    assert again.files["model.xml"] == plain_int8.files["model.xml"]
    assert b"conversion_parameters" not in again.files["model.xml"]
    assert str(path.parent).encode() not in again.files["model.xml"]


def test_fp16_weights_halve_the_bin_and_pass_the_gate(
    plain: tuple[Path, ModelConfig], plain_int8: OpenVinoInt8Result, slices: tuple[np.ndarray, np.ndarray]
) -> None:
    x, labels = slices
    path, config = plain
    result = fp16_openvino(path, x[N_CALIB:], labels[N_CALIB:], config)
    assert result.gate.passed, result.gate.failures
    assert result.device == "CPU"
    fp32 = convert_to_openvino_ir(path)
    assert len(result.files["model.bin"]) / len(fp32["model.bin"]) == pytest.approx(0.5, abs=0.02)
    assert _weights_of(result.files, "/head/head.0/head.0.0/Conv") == "f16"
    assert fp16_openvino(path, x[N_CALIB:], labels[N_CALIB:], config).files == result.files

    # INT8 asking for FP16 float constants: never larger, same verdict, and the record tells when
    # OpenVINO declined (it keeps every constant of an IR with FakeQuantize nodes in FP32).
    int8 = quantize_openvino(path, x[:N_CALIB], x[N_CALIB:], labels[N_CALIB:], config, fp16_weights=True)
    assert int8.gate.passed and int8.settings.fp16_weights
    assert len(int8.files["model.bin"]) <= len(plain_int8.files["model.bin"])
    if "f16" not in {dtype for kind, _, dtype in _ir_ops(int8.files) if kind == "Constant"}:
        assert any("fp16_weights had no effect" in note for note in int8.notes)
    assert plain_int8.notes == []


def test_accuracy_control_keeps_the_outlier_layer_in_float(
    one_outlier: tuple[Path, ModelConfig], slices: tuple[np.ndarray, np.ndarray]
) -> None:
    x, labels = slices
    path, config = one_outlier
    result = quantize_openvino(path, x[:N_CALIB], x[N_CALIB:], labels[N_CALIB:], config, calib_labels=labels[:N_CALIB])

    # Full INT8 cannot pass with either preset ...
    assert [(a.settings.preset, a.gate.passed) for a in result.attempts[:2]] == [
        ("performance", False),
        ("mixed", False),
    ]
    # ... keeping the costly layer in float does.
    assert result.gate.passed, result.gate.failures
    assert len(result.attempts) == 3
    assert result.precision == "mixed"
    assert result.settings.accuracy_control
    assert result.attempts[-1].settings == result.settings
    consumer = "/head/head.1/head.1.0/Conv"  # reads the activation with the outlier channel
    assert consumer in result.float_layers
    assert "accuracy control" in result.float_layers[consumer]
    assert set(result.float_layers) == {consumer}  # and nothing else
    assert _weights_of(result.files, consumer) == "f32"
    assert _weights_of(result.files, "/head/head.0/head.0.0/Conv") == "i8"  # the rest stays INT8
    assert "mixed" in result.method and consumer in result.float_layers


def test_gate_that_cannot_be_met_raises_with_the_costliest_layers(
    tmp_path: Path, slices: tuple[np.ndarray, np.ndarray]
) -> None:
    # Two outlier layers, and room for only one in float.
    x, labels = slices
    path, config = _export(tmp_path, x, outliers=2)
    before = set(Path(tempfile.gettempdir()).glob("medge-ir-*"))
    with pytest.raises(QuantizationGateError) as caught:
        quantize_openvino(
            path, x[:N_CALIB], x[N_CALIB:], labels[N_CALIB:], config, max_float_layers=1, symmetric_activations=True
        )
    error = caught.value
    assert set(Path(tempfile.gettempdir()).glob("medge-ir-*")) == before  # nothing left behind
    assert len(error.worst_layers) == 1
    assert set(error.worst_layers) <= {"/head/head.1/head.1.0/Conv", "/head/head.2/head.2.0/Conv"}
    assert error.failures and error.report.samples == len(x) - N_CALIB
    assert [a["passed"] for a in error.attempts] == [False, False]
    assert "accuracy control" in error.attempts[-1]["settings"]
    assert error.path == path
    assert "Costliest layers" in str(error)


def test_profile_constraints_limit_the_search(
    one_outlier: tuple[Path, ModelConfig], slices: tuple[np.ndarray, np.ndarray]
) -> None:
    # Symmetric activations only, no float fall-back: one attempt, then the gate error without layers.
    x = slices[0]
    path, config = one_outlier
    with pytest.raises(QuantizationGateError) as caught:
        quantize_openvino(path, x[:N_CALIB], x[N_CALIB:], None, config, symmetric_activations=True, max_float_layers=0)
    assert len(caught.value.attempts) == 1
    assert caught.value.attempts[0]["settings"].startswith("NNCF performance preset")
    assert caught.value.worst_layers == {}
    assert caught.value.report.auc_reference is None  # no labels, no AUC


def test_bad_arrays_are_refused(plain: tuple[Path, ModelConfig], slices: tuple[np.ndarray, np.ndarray]) -> None:
    x, labels = slices
    path, config = plain
    with pytest.raises(ValueError, match="labels has 3 entries"):
        quantize_openvino(path, x[:N_CALIB], x[N_CALIB:], labels[:3], config)
    with pytest.raises(ValueError, match="float32"):
        quantize_openvino(path, x[:N_CALIB].astype(np.float64), x[N_CALIB:], None, config)
    with pytest.raises(ValueError, match="target_device"):
        quantize_openvino(path, x[:N_CALIB], x[N_CALIB:], None, config, target_device="TPU")
