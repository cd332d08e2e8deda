"""``medge compile`` end to end on the reference model (quantization/compile.py, sdk/cli/compile.py)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from device_profiles import get_profile, list_profiles
from quantization.calibration import labels_from_phantom_truth
from quantization.compile import CompileOptions, compile_package
from quantization.errors import QuantizationGateError
from quantization.onnxruntime_int8 import check_tensorrt_qdq
from runtime.analyzer import Analyzer
from sdk.cli.main import app
from sdk.model_config import load_model_config
from sdk.package import verify_package
from sdk.reference_model import config_path, onnx_path
from sdk.signing import generate_keypair, load_private_key, load_public_key
from sdk.testing import PhantomSpec, generate_studies
from sdk.trust import TrustStore

runner = CliRunner()


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("calib")
    generate_studies(folder, 12, PhantomSpec(slices=24), seed=4242)
    return folder


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory):
    pair = generate_keypair(tmp_path_factory.mktemp("keys"))
    return pair, load_private_key(pair.private_path), TrustStore.from_keys([load_public_key(pair.public_path)])


def _compile(profile_id: str, calib_dir: Path, keys, out: Path, **options):
    _, private, _ = keys
    return compile_package(
        onnx_path(),
        load_model_config(config_path()),
        get_profile(profile_id),
        calib_dir,
        private,
        out,
        CompileOptions(labels=labels_from_phantom_truth(calib_dir) or None, **options),
    )


@pytest.mark.slow
@pytest.mark.parametrize("profile_id", [profile.id for profile in list_profiles()])
def test_every_profile_compiles_the_reference_model(profile_id: str, calib_dir: Path, keys, tmp_path: Path) -> None:
    profile = get_profile(profile_id)
    out = tmp_path / f"{profile_id}.medge"
    result = _compile(profile_id, calib_dir, keys, out)
    package = verify_package(out, keys[2])
    manifest = package.manifest
    assert manifest.engine.profile == profile_id
    assert manifest.engine.name == profile.engine
    assert manifest.compile.calibration is not None
    assert manifest.compile.calibration.sha256 == result.calibration.sha256
    assert manifest.input_statistics is not None
    assert len(manifest.golden) == 3
    if profile.default_precision != "fp32":
        assert result.gate is not None and result.gate.passed, result.gate and result.gate.failures
        assert manifest.fidelity is not None and manifest.fidelity.agreement >= 0.99
        assert manifest.engine.precision in {"int8", "mixed", "fp16"}
    if profile.engine == "onnxruntime" and profile.quantization and profile.quantization.zero_point_zero:
        # Jetson/TensorRT: symmetric INT8 QDQ, zero points 0, per-channel weights; checked structurally.
        assert check_tensorrt_qdq(package.read("model.onnx")) == []
        assert manifest.engine.required_accelerator_nodes, "the accelerator placement must be recorded"
    # Runs here on the CPU (ONNX Runtime CPU for Jetson packages, OpenVINO CPU for Intel ones) and accepts.
    cpu = ["CPUExecutionProvider"] if profile.engine == "onnxruntime" else ["CPU"]
    analyzer = Analyzer(package, cpu)
    try:
        report = analyzer.check_golden()
        assert report.ok, report
    finally:
        analyzer.close()


@pytest.mark.slow
def test_compiling_twice_gives_identical_engine_files(calib_dir: Path, keys, tmp_path: Path) -> None:
    engines = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.medge"
        _compile("generic-x86_64-cpu", calib_dir, keys, out)
        with zipfile.ZipFile(out) as archive:
            engines.append(archive.read("model.onnx"))
    assert engines[0] == engines[1]


def _pixel_difference_model(path: Path) -> Path:
    """A model whose answer is the sign of the difference of two neighbouring pixels, amplified.

    Neighbouring CT pixels differ by about one noise step; INT8 input quantization (1/255 of the
    window) erases many of those differences, so fully quantized it must flip a large share of
    decisions: a model and a tolerance where INT8 cannot pass.
    """
    weights = helper.make_tensor("w", TensorProto.FLOAT, [1, 1, 1, 2], [1000.0, -1000.0])
    starts = helper.make_tensor("starts", TensorProto.INT64, [2], [128, 128])
    ends = helper.make_tensor("ends", TensorProto.INT64, [2], [129, 130])
    axes = helper.make_tensor("axes", TensorProto.INT64, [2], [2, 3])
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 1])
    nodes = [
        helper.make_node("Slice", ["image", "starts", "ends", "axes"], ["patch"], name="crop"),
        helper.make_node("Conv", ["patch", "w"], ["difference"], name="difference"),
        helper.make_node("Reshape", ["difference", "shape"], ["logit"], name="flatten"),
        helper.make_node("Sigmoid", ["logit"], ["nodule_probability"], name="probability"),
    ]
    graph = helper.make_graph(
        nodes,
        "pixel-difference",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 256, 256])],
        [helper.make_tensor_value_info("nodule_probability", TensorProto.FLOAT, ["N", 1])],
        [weights, starts, ends, axes, shape],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.slow
def test_a_gate_int8_cannot_meet_writes_nothing_and_names_layers(calib_dir: Path, keys, tmp_path: Path) -> None:
    config = load_model_config(config_path())
    fragile = config.model_copy(
        update={"thresholds": {"nodule": 0.5}, "outputs": config.outputs.model_copy(update={"location": None})}
    )
    out = tmp_path / "never.medge"
    with pytest.raises(QuantizationGateError) as caught:
        compile_package(
            _pixel_difference_model(tmp_path / "fragile.onnx"),
            fragile,
            get_profile("generic-x86_64-cpu"),
            calib_dir,
            keys[1],
            out,
            CompileOptions(max_float_nodes=0),
        )
    assert not out.exists()
    assert "difference" in caught.value.worst_layers
    assert any("agreement" in failure or "flips" in failure for failure in caught.value.failures)


# --- the command line and its bad inputs -------------------------------------------------------------------------


def _cli(args: list[str]):
    return runner.invoke(app, ["compile", *args])


def _base_args(model: Path, calib: Path, keys, out: Path, profile: str = "generic-x86_64-cpu") -> list[str]:
    pair = keys[0]
    return [
        str(model),
        "--config",
        str(config_path()),
        "--profile",
        profile,
        "--calib",
        str(calib),
        "--key",
        str(pair.private_path),
        "-o",
        str(out),
    ]


@pytest.mark.slow
def test_cli_compiles_and_prints_the_summary(calib_dir: Path, keys, tmp_path: Path) -> None:
    out = tmp_path / "cli.medge"
    result = _cli(_base_args(onnx_path(), calib_dir, keys, out))
    assert result.exit_code == 0, result.output
    for words in ("compiled chest-ct-nodule", "fidelity", "agreement", "kept in float", "calibration"):
        assert words in result.output
    assert out.exists()


def test_cli_refuses_a_file_that_is_not_onnx(calib_dir: Path, keys, tmp_path: Path) -> None:
    bogus = tmp_path / "model.onnx"
    bogus.write_text("definitely not protobuf")
    result = _cli(_base_args(bogus, calib_dir, keys, tmp_path / "x.medge"))
    assert result.exit_code == 2
    assert "not an ONNX model" in result.output and "Traceback" not in result.output


def _model_with(nodes: list[onnx.NodeProto], tmp_path: Path, *, dims: list[int | str], opset: list) -> Path:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, dims)],
        [
            helper.make_tensor_value_info("nodule_probability", TensorProto.FLOAT, ["N", 1]),
            helper.make_tensor_value_info("nodule_location", TensorProto.FLOAT, ["N", 2]),
        ],
    )
    path = tmp_path / "odd.onnx"
    onnx.save(helper.make_model(graph, opset_imports=opset), path)
    return path


def test_cli_names_an_unsupported_operator_and_its_node(calib_dir: Path, keys, tmp_path: Path) -> None:
    node = helper.make_node(
        "MagicNoduleFinder", ["image"], ["nodule_probability", "nodule_location"], name="magic", domain="com.vendor"
    )
    model = _model_with(
        [node],
        tmp_path,
        dims=["N", 1, 256, 256],
        opset=[helper.make_opsetid("", 17), helper.make_opsetid("com.vendor", 1)],
    )
    result = _cli(_base_args(model, calib_dir, keys, tmp_path / "x.medge"))
    assert result.exit_code == 2
    assert "magic" in result.output and "com.vendor" in result.output


def test_cli_refuses_a_dynamic_shape_nothing_can_size(calib_dir: Path, keys, tmp_path: Path) -> None:
    # A rank-5 input with open dimensions: the config's (N, C, H, W) cannot size it.
    nodes = [
        helper.make_node("Identity", ["image"], ["nodule_probability"], name="id"),
        helper.make_node("Identity", ["image"], ["nodule_location"], name="id2"),
    ]
    model = _model_with(nodes, tmp_path, dims=["N", "C", "D", "H", "W"], opset=[helper.make_opsetid("", 17)])
    result = _cli(_base_args(model, calib_dir, keys, tmp_path / "x.medge"))
    assert result.exit_code == 2
    assert "image" in result.output and "Traceback" not in result.output


def test_cli_refuses_a_folder_without_usable_dicom(keys, tmp_path: Path) -> None:
    empty = tmp_path / "calib"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    result = _cli(_base_args(onnx_path(), empty, keys, tmp_path / "x.medge"))
    assert result.exit_code == 2
    assert "no DICOM files found" in result.output


def test_cli_refuses_a_modality_mismatch(keys, tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    folder = tmp_path / "mr"
    folder.mkdir()
    source = Path(str(get_testdata_file("MR_small.dcm", download=False)))
    for index in range(3):
        (folder / f"{index}.dcm").write_bytes(source.read_bytes())
    result = _cli(_base_args(onnx_path(), folder, keys, tmp_path / "x.medge"))
    assert result.exit_code == 2
    assert "MR" in result.output and "CT" in result.output


def test_cli_refuses_an_unknown_profile_and_precision(calib_dir: Path, keys, tmp_path: Path) -> None:
    result = _cli(_base_args(onnx_path(), calib_dir, keys, tmp_path / "x.medge", profile="toaster"))
    assert result.exit_code == 2 and "toaster" in result.output
    result = _cli([*_base_args(onnx_path(), calib_dir, keys, tmp_path / "x.medge"), "--precision", "int4"])
    assert result.exit_code == 2 and "int4" in result.output
    result = _cli(
        [*_base_args(onnx_path(), calib_dir, keys, tmp_path / "x.medge", profile="intel-xeon"), "--precision", "fp16"]
    )
    assert result.exit_code in {0, 2}  # intel-xeon lists fp16: this one compiles


def test_golden_inputs_hold_both_answers(calib_dir: Path, keys, tmp_path: Path) -> None:
    out = tmp_path / "fp32.medge"
    _compile("generic-arm64-cpu", calib_dir, keys, out, precision="fp32")
    package = verify_package(out, keys[2])
    probabilities = []
    for sample in package.manifest.golden:
        import gzip
        import io

        raw = gzip.decompress(package.read(sample.outputs["nodule_probability"]))
        probabilities.append(float(np.load(io.BytesIO(raw)).reshape(-1)[0]))
    assert max(probabilities) > 0.35 > min(probabilities)
