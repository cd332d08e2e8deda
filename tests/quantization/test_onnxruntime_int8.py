"""ONNX Runtime INT8: pre-processing, calibration, determinism, TensorRT structure, CPU fusion and the settings search.

The fixture networks are small CNNs (conv/BN/ReLU, a residual block, global
pooling, a linear read-out) written directly as ONNX (``onnx_builders``), on
nodule-like images: a bright disc on a noisy background in half of them. The
convolutions are random; the read-out is fitted by logistic regression to the
disc label on the pooled features, so the score follows the image as a
trained model's does.

- ``detector`` pools by max (the strongest evidence anywhere): INT8 keeps up
  with FP32, except that entropy calibration clips the bright discs away.
- ``pooled`` pools by average: its read-out leans on small differences of
  averaged features, the kind of classifier no global setting can save; only
  keeping the pooling and the read-out in float does.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnxruntime.quantization import QuantFormat, quantize_static
from pydantic import ValidationError

from device_profiles import QuantizationScheme
from quantization.errors import QuantizationGateError
from quantization.onnxruntime_int8 import (
    ArrayDataReader,
    QuantSettings,
    candidate_settings,
    check_tensorrt_qdq,
    enforce_scheme,
    preprocess_graph,
    quantize,
    search_int8,
)
from sdk.errors import EngineError
from sdk.model_config import AccuracyGate, ModelConfig
from tests.quantization.onnx_builders import CnnGraph, fit_logistic

SIZE = 32
X86 = QuantizationScheme(
    format="QDQ",
    activation_dtype="uint8",
    weight_dtype="int8",
    activation_symmetric=False,
    weight_symmetric=True,
    weight_per_channel=True,
    zero_point_zero=False,
    calibration_method="minmax",
)
TENSORRT = QuantizationScheme(
    format="QDQ",
    activation_dtype="int8",
    weight_dtype="int8",
    activation_symmetric=True,
    weight_symmetric=True,
    weight_per_channel=True,
    zero_point_zero=True,
    calibration_method="entropy",
)


def _images(count: int, seed: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(0.2, 0.05, (count, 1, size, size)).astype(np.float32)
    rows, cols = np.mgrid[:size, :size]
    labels = rng.integers(0, 2, count)
    for i in np.flatnonzero(labels):
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        radius = rng.integers(2, size // 6)
        x[i, 0][(rows - cy) ** 2 + (cols - cx) ** 2 < radius**2] += 0.5
    return x, labels


def _export(pool: str, path: Path, size: int = SIZE, *, fold: bool = True, batch: int | None = None) -> Path:
    """A network with random convolutions and a read-out fitted to the disc label, saved as ONNX opset 17.

    Two conv/BN/ReLU layers, a residual block, global max or average pooling and a linear read-out on
    the pooled features (``probability``), whose first two sigmoids stand in for a ``location``.
    ``fold=False`` keeps the batch norms as separate nodes, as some exporters leave them;
    ``batch`` fixes the batch dimension instead of leaving it symbolic.
    """
    graph = CnnGraph("image", (1, size, size), batch=batch, seed=0)
    rng = np.random.default_rng(1)

    def conv_bn(x: str, channels: int, conv: str, norm: str, stride: int = 1) -> str:
        y = graph.conv(x, channels, name=conv, stride=stride)
        mean, var = rng.uniform(-0.1, 0.1, channels), rng.uniform(0.5, 1.5, channels)
        return graph.batch_norm(y, mean, var, name=norm, fold=fold)

    y = graph.relu(conv_bn("image", 8, "/c1/c1.0/Conv", "/c1/c1.1/BatchNormalization"), name="/c1/c1.2/Relu")
    y = graph.relu(conv_bn(y, 16, "/c2/c2.0/Conv", "/c2/c2.1/BatchNormalization", 2), name="/c2/c2.2/Relu")
    r = graph.relu(conv_bn(y, 16, "/r1/Conv", "/b1/BatchNormalization"), name="/Relu")
    y = graph.relu(graph.add(y, conv_bn(r, 16, "/r2/Conv", "/b2/BatchNormalization"), name="/Add"), name="/Relu_1")
    if pool == "max":
        pooled = graph.global_max_pool(y, name="/MaxPool")
    else:
        pooled = graph.global_average_pool(y, name="/GlobalAveragePool")
    features = graph.flatten(pooled, name="/Flatten")
    train, labels = _images(256, seed=0, size=size)
    weights, bias = fit_logistic(graph.run([features], {"image": train})[0], labels)
    logit = graph.gemm(features, weights[None], np.array([bias]), name="/fc/Gemm")
    graph.sigmoid(logit, name="/Sigmoid", output="probability")
    graph.sigmoid(graph.first_columns(features, 2, name="/Slice"), name="/Sigmoid_1", output="location")
    onnx.save(graph.model(["probability", "location"]), str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("int8-models")
    return {pool: _export(name, folder / f"{pool}.onnx") for pool, name in (("detector", "max"), ("pooled", "avg"))}


@pytest.fixture(scope="module")
def calib() -> np.ndarray:
    return _images(96, seed=1)[0]


@pytest.fixture(scope="module")
def held_back() -> tuple[np.ndarray, np.ndarray]:
    return _images(200, seed=2)


def _config(gate: AccuracyGate | None = None) -> ModelConfig:
    return ModelConfig.model_validate(
        {
            "name": "tiny-nodule",
            "version": "1.0.0",
            "task": "classification",
            "labels": ["nodule"],
            "thresholds": {"nodule": 0.5},
            "input": {"name": "image"},
            "outputs": {"scores": "probability", "location": "location"},
            "preprocessing": {"modalities": ["CT"], "size": [SIZE, SIZE]},
            "gate": (gate or AccuracyGate()).model_dump(),
        }
    )


def _run(model: bytes | str, x: np.ndarray, optimized: Path | None = None) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x})[0][:, 0]


# ----------------------------------------------------------------------------- graph preparation and settings


def test_preprocess_graph_folds_batchnorm(tmp_path: Path) -> None:
    model = _export("max", tmp_path / "unfolded.onnx", fold=False)
    out = tmp_path / "pre.onnx"
    preprocess_graph(model, out)
    prepared = onnx.load(str(out))
    assert "BatchNormalization" in {n.op_type for n in onnx.load(str(model)).graph.node}
    assert "BatchNormalization" not in {n.op_type for n in prepared.graph.node}
    assert all(value.type.tensor_type.elem_type for value in prepared.graph.value_info)  # shapes inferred
    assert {p.key for p in prepared.metadata_props} >= {"onnx.quant.pre_process"}


def test_preprocess_graph_names_the_file_it_cannot_read(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(EngineError, match=r"broken\.onnx"):
        preprocess_graph(broken, tmp_path / "out.onnx")


def test_array_data_reader_batches_and_ranges() -> None:
    data = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1)
    reader = ArrayDataReader(data, "image", batch_size=4)
    assert len(reader) == 3
    assert [len(batch["image"]) for batch in reader] == [4, 4, 2]
    assert reader.get_next() is None
    reader.set_range(2, 7)
    assert len(reader) == 2
    assert [batch["image"][:, 0, 0, 0].tolist() for batch in reader] == [[2, 3, 4, 5], [6]]
    reader.rewind()
    assert reader.get_next()["image"][0, 0, 0, 0] == 2


def test_settings_refuse_what_ort_would_ignore_or_reject() -> None:
    with pytest.raises(ValidationError, match="CalibSomething"):
        QuantSettings(extra_options={"CalibSomething": 1})
    with pytest.raises(ValidationError, match="use the field 'activation_symmetric'"):
        QuantSettings(extra_options={"ActivationSymmetric": True})
    with pytest.raises(ValidationError, match="int8 activations with uint8 weights"):
        QuantSettings(activation_type="int8", weight_type="uint8")
    assert QuantSettings(extra_options={"QDQKeepRemovableActivations": True}).extra_options


def test_tensorrt_scheme_forces_symmetric_signed_per_channel() -> None:
    loose = QuantSettings(activation_type="uint8", activation_symmetric=False, per_channel=False)
    forced = enforce_scheme(loose, TENSORRT)
    assert (forced.activation_type, forced.weight_type) == ("int8", "int8")
    assert forced.activation_symmetric and forced.weight_symmetric and forced.per_channel
    assert forced.extra_options["QuantizeBias"] is False
    assert enforce_scheme(loose, X86) == loose


def test_candidates_start_with_the_profile_and_vary_what_it_allows() -> None:
    x86 = candidate_settings(X86)
    assert x86[0] == QuantSettings.from_scheme(X86)
    assert [(s.calibrate_method, s.activation_symmetric) for s in x86] == [
        ("minmax", False),
        ("minmax", True),
        ("entropy", False),
        ("entropy", True),
        ("percentile", False),
        ("percentile", True),
    ]
    trt = candidate_settings(TENSORRT)
    assert [s.calibrate_method for s in trt] == ["entropy", "minmax", "percentile"]
    assert all(s.activation_symmetric and s.activation_type == "int8" for s in trt)


# ----------------------------------------------------------------------------- quantization


def test_quantize_is_deterministic_and_valid(models: dict[str, Path], calib: np.ndarray) -> None:
    settings = QuantSettings.from_scheme(X86)
    first = quantize(models["detector"], calib, settings, X86)
    second = quantize(models["detector"], calib, settings, X86)
    assert first == second
    model = onnx.load_from_string(first)
    onnx.checker.check_model(model)
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in model.graph.node}
    # Weights shrink four-fold; generated names stay short, so even this 6k-parameter model halves.
    assert len(first) < models["detector"].stat().st_size / 2
    assert not model.graph.value_info
    kept = {n.name for n in onnx.load(str(models["detector"])).graph.node if n.op_type not in ("Constant", "Relu")}
    assert kept <= {n.name for n in model.graph.node}  # FP32 nodes keep their names (ReLUs fold into ranges)


def test_calibration_methods_give_different_models(models: dict[str, Path], calib: np.ndarray) -> None:
    blobs = {
        method: quantize(models["detector"], calib, QuantSettings(calibrate_method=method))
        for method in ("minmax", "entropy", "percentile")
    }
    assert len(set(blobs.values())) == 3


def test_tensorrt_check_passes_for_the_tensorrt_scheme(models: dict[str, Path], calib: np.ndarray) -> None:
    blob = quantize(models["detector"], calib, QuantSettings.from_scheme(TENSORRT), TENSORRT)
    assert check_tensorrt_qdq(blob) == []


def test_tensorrt_check_fails_for_asymmetric_uint8(models: dict[str, Path], calib: np.ndarray) -> None:
    problems = check_tensorrt_qdq(quantize(models["detector"], calib, QuantSettings.from_scheme(X86), X86))
    assert any("is uint8; TensorRT needs int8" in p for p in problems)
    assert any("is not 0" in p for p in problems)
    assert any("'image'" in p for p in problems)  # names the tensor, not only a generated node id


def test_tensorrt_check_flags_per_tensor_weights(models: dict[str, Path], calib: np.ndarray) -> None:
    settings = QuantSettings(activation_type="int8", activation_symmetric=True, per_channel=False)
    settings = settings.model_copy(update={"extra_options": {"QuantizeBias": False}})
    problems = check_tensorrt_qdq(quantize(models["detector"], calib, settings))
    assert any("Conv '/c1/c1.0/Conv'" in p and "per tensor" in p for p in problems)


def test_cpu_runs_integer_kernels(models: dict[str, Path], calib: np.ndarray, tmp_path: Path) -> None:
    blob = quantize(models["detector"], calib, QuantSettings.from_scheme(X86), X86)
    optimized = tmp_path / "optimized.onnx"
    _run(blob, calib[:2], optimized=optimized)
    ops = {n.op_type for n in onnx.load(str(optimized)).graph.node}
    assert "QLinearConv" in ops
    assert "Conv" not in ops  # no convolution left in float


# ----------------------------------------------------------------------------- the search


def test_search_keeps_the_profile_settings_when_they_pass(
    models: dict[str, Path], calib: np.ndarray, held_back: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = held_back
    result = search_int8(models["detector"], calib, images, labels, _config(), X86)
    assert result.gate.passed
    assert result.settings == QuantSettings.from_scheme(X86)
    assert len(result.attempts) == 1 and result.float_nodes == {}
    report = result.gate.report
    assert report.samples == len(images)
    assert report.agreement >= 0.99
    assert report.auc_reference is not None and report.auc_compiled is not None
    assert report.details["auc_reference_ci"][0] <= report.auc_reference <= report.details["auc_reference_ci"][1]
    assert "minmax" in result.method
    assert 0 <= report.details["location_max_abs_delta_positive"] <= report.details["location_max_abs_delta"] < 0.05
    # The bytes are the model it judged, and the same inputs give the same bytes.
    fp32 = _run(str(models["detector"]), images)
    assert np.mean((_run(result.model, images) > 0.5) == (fp32 > 0.5)) == report.agreement
    again = search_int8(models["detector"], calib, images, labels, _config(), X86)
    assert again.model == result.model


def test_search_goes_beyond_the_profile_default(
    models: dict[str, Path], calib: np.ndarray, held_back: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = held_back
    lines: list[str] = []
    result = search_int8(models["detector"], calib, images, labels, _config(), TENSORRT, progress=lines.append)
    first = result.attempts[0]
    assert first.settings.calibrate_method == "entropy"  # the profile's choice clips the discs away
    assert not first.gate.passed
    assert result.gate.passed and result.settings.calibrate_method != "entropy"
    assert check_tensorrt_qdq(result.model) == []
    assert any("entropy calibration" in line and "fails" in line for line in lines)
    summary = first.summary()
    assert summary["passed"] is False and summary["failures"]


def test_search_keeps_the_costliest_layers_in_float(
    models: dict[str, Path], calib: np.ndarray, held_back: tuple[np.ndarray, np.ndarray]
) -> None:
    images, labels = held_back
    gate = AccuracyGate(min_agreement=0.97, max_flip_rate=0.03, max_auc_drop=0.02)
    result = search_int8(models["pooled"], calib, images, labels, _config(gate), X86)
    global_attempts = [a for a in result.attempts if not a.settings.nodes_to_exclude]
    assert len(global_attempts) == len(candidate_settings(X86))
    assert not any(a.gate.passed for a in global_attempts)
    assert result.gate.passed
    assert {"/fc/Gemm", "/GlobalAveragePool"} <= set(result.float_nodes)
    assert len(result.float_nodes) <= 4
    assert set(result.settings.nodes_to_exclude) == set(result.float_nodes)
    assert all("quantized alone costs" in why for why in result.float_nodes.values())
    costs = [c.cost for c in result.layer_costs]
    assert costs == sorted(costs, reverse=True)
    assert result.layer_costs[0].node in result.float_nodes
    assert "in float" in result.method


def test_search_fails_with_the_worst_layers_and_writes_nothing(
    models: dict[str, Path],
    calib: np.ndarray,
    held_back: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    images, labels = held_back
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    before = sorted(p.name for p in models["pooled"].parent.iterdir())
    gate = AccuracyGate(min_agreement=0.97, max_flip_rate=0.03, max_auc_drop=0.02)
    with pytest.raises(QuantizationGateError) as caught:
        search_int8(models["pooled"], calib, images, labels, _config(gate), X86, max_float_nodes=1)
    error = caught.value
    assert "fails the accuracy gate" in str(error) and "agreement" in str(error)
    assert "up to 1 layers kept in float" in str(error)
    assert set(error.worst_layers) & {"/fc/Gemm", "/GlobalAveragePool"}
    assert all("quantized alone costs" in why for why in error.worst_layers.values())
    assert error.failures and error.report.agreement < 0.97
    fallbacks = error.attempts[len(candidate_settings(X86)) :]
    assert fallbacks and all(len(a["nodes_in_float"]) == 1 and not a["passed"] for a in fallbacks)
    assert error.path == models["pooled"]
    assert sorted(p.name for p in models["pooled"].parent.iterdir()) == before
    assert list(scratch.iterdir()) == []


def test_fixed_batch_models_are_padded_not_refused(tmp_path: Path, calib: np.ndarray) -> None:
    model = _export("max", tmp_path / "batch3.onnx", batch=3)
    images, labels = _images(20, seed=4)  # 3 + 3 + ... + 2: the last batch is padded
    result = search_int8(model, calib[:10], images, labels, _config(), X86)
    assert result.gate.report.samples == 20
    per_slice = np.concatenate(
        [_run(result.model, _pad3(images[i : i + 3]))[: len(images[i : i + 3])] for i in range(0, 20, 3)]
    )
    fp32 = np.concatenate(
        [_run(str(model), _pad3(images[i : i + 3]))[: len(images[i : i + 3])] for i in range(0, 20, 3)]
    )
    assert np.mean((per_slice > 0.5) == (fp32 > 0.5)) == result.gate.report.agreement


def _pad3(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x, np.repeat(x[-1:], 3 - len(x), axis=0)]) if len(x) < 3 else x


def test_latency_not_worse_than_plain_quantize_static(tmp_path: Path) -> None:
    """medge's INT8 model must run at least as fast as ``quantize_static`` defaults (QDQ, per-channel)."""
    model = _export("max", tmp_path / "detector128.onnx", size=128)
    calib = _images(32, seed=1, size=128)[0]
    images, labels = _images(64, seed=2, size=128)
    plain = tmp_path / "plain.onnx"
    quantize_static(
        str(model), str(plain), ArrayDataReader(calib, "image"), quant_format=QuantFormat.QDQ, per_channel=True
    )
    config = _config().model_copy(
        update={"preprocessing": _config().preprocessing.model_copy(update={"size": (128, 128)})}
    )
    ours = search_int8(model, calib, images, labels, config, X86).model

    def latency(blob: bytes | str) -> float:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
        x = images[:1]
        for _ in range(5):
            session.run(None, {"image": x})
        times = []
        for _ in range(40):
            start = time.perf_counter()
            session.run(None, {"image": x})
            times.append(time.perf_counter() - start)
        return float(np.median(times))

    plain_s, ours_s = latency(str(plain)), latency(ours)
    assert ours_s <= 1.1 * plain_s, f"medge INT8 {ours_s * 1e3:.2f} ms vs quantize_static {plain_s * 1e3:.2f} ms"
