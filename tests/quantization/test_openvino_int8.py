"""OpenVINO INT8/FP16 compilation: gate, float fall-back, determinism and size, on phantom CT slices.

The fixture network is small (a conv/BN/ReLU stem, a residual block and a conv
head) with random convolutions and a linear read-out fitted in closed form to
a real image property (the lung fraction of the slice), so its score follows
the image like a trained model's does. A network without training has no
decision margin of its own, so the read-out's bias puts the decision (0.5) in
the widest gap of the FP32 scores, as training does for a real model.

The "outlier" variants scale one channel of a head activation by 300 and
undo it in the next convolution's weights: FP32 outputs are unchanged, but
the per-tensor activation range of that convolution's input is ruined for
INT8, so only keeping that layer in float can pass the gate.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import openvino as ov
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quantization.errors import QuantizationGateError
from quantization.openvino_int8 import OpenVinoInt8Result, fp16_openvino, quantize_openvino
from quantization.openvino_ir import convert_to_openvino_ir
from runtime.engines.openvino_engine import OpenVinoEngine
from sdk.model_config import ModelConfig
from sdk.preprocess_spec import PreprocessSpec, Window
from sdk.preprocessing import preprocess
from sdk.testing import PhantomSpec, generate_series

SPEC = PreprocessSpec(modalities=["CT"], window=Window(center=-600, width=1500), size=(128, 128))
N_CALIB = 80
OUTLIER_SCALE = 300.0


class _Net(nn.Module):
    def __init__(self, width: int, outliers: int) -> None:
        super().__init__()

        def cbr(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.stem = nn.Sequential(cbr(1, 16, 2), cbr(16, width, 2))
        self.conv1 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.head = nn.Sequential(*[cbr(width, width) for _ in range(outliers + 1)])
        self.fc = nn.Linear(2 * width, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        y = F.relu(y + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(y))))))
        y = self.head(y)
        return torch.cat([F.adaptive_avg_pool2d(y, 1).flatten(1), F.adaptive_max_pool2d(y, 1).flatten(1)], 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return torch.sigmoid(self.fc(f)), torch.sigmoid(f[:, :2])


@pytest.fixture(scope="module")
def slices() -> tuple[np.ndarray, np.ndarray]:
    """120 phantom CT slices through the runtime's preprocessing, and a lung-fraction label per slice."""
    x = np.concatenate(
        [
            preprocess(ds, SPEC)
            for seed in range(6)
            for ds in generate_series(PhantomSpec(slices=20), seed=seed).datasets
        ]
    )
    lung = ((x > 0.26) & (x < 0.45)).mean(axis=(1, 2, 3))
    return x, (lung > np.median(lung)).astype(np.int8)


def _export(folder: Path, x: np.ndarray, *, outliers: int, width: int = 32) -> tuple[Path, ModelConfig]:
    torch.manual_seed(0)
    net = _Net(width, outliers)
    images = torch.from_numpy(x)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net.features(images)  # batch-norm statistics from the data
    net.eval()
    with torch.no_grad():
        for k in range(outliers):
            bn = net.head[k][1]
            bn.weight[0] *= OUTLIER_SCALE
            bn.bias[0] *= OUTLIER_SCALE
            net.head[k + 1][0].weight[:, 0] /= OUTLIER_SCALE
        feats = net.features(images).double().numpy()
    lung = ((x > 0.26) & (x < 0.45)).mean(axis=(1, 2, 3))
    target = (lung - lung.mean()) / lung.std() * 3
    centred = feats - feats.mean(0)
    weights = np.linalg.solve(centred.T @ centred + 1e-3 * len(feats) * np.eye(feats.shape[1]), centred.T @ target)
    logits = np.sort(centred @ weights)
    low, high = int(0.15 * len(logits)), int(0.85 * len(logits))
    widest = low + int(np.argmax(np.diff(logits[low:high])))
    middle = (logits[widest] + logits[widest + 1]) / 2
    with torch.no_grad():
        net.fc.weight.copy_(torch.from_numpy(weights[None]).float())
        net.fc.bias.fill_(float(-(feats.mean(0) @ weights) - middle))
    path = folder / f"net-{outliers}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter announces its retirement
        torch.onnx.export(
            net,
            (torch.zeros(1, *x.shape[1:]),),
            str(path),
            input_names=["image"],
            output_names=["prob", "loc"],
            dynamic_axes={"image": {0: "N"}, "prob": {0: "N"}, "loc": {0: "N"}},
            opset_version=17,
            dynamo=False,
        )
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
    tmp_path: Path, slices: tuple[np.ndarray, np.ndarray]
) -> None:
    x, labels = slices
    path, config = _export(tmp_path, x, outliers=1)
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


def test_profile_constraints_limit_the_search(tmp_path: Path, slices: tuple[np.ndarray, np.ndarray]) -> None:
    # Symmetric activations only, no float fall-back: one attempt, then the gate error without layers.
    x = slices[0]
    path, config = _export(tmp_path, x, outliers=1)
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
