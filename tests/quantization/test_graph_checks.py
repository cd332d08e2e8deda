"""quantization.graph_checks: a model that cannot compile for a profile is refused early, naming node and op.

Small ONNX models are built with onnx.helper in each test; the checks run the
real ONNX checker, a real ONNX Runtime session and OpenVINO's real ONNX frontend.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from device_profiles import DeviceProfile, get_profile
from quantization.errors import ModelCheckError
from quantization.graph_checks import check_model, engine_opset_range
from sdk.model_config import ModelConfig

ORT_PROFILE = get_profile("generic-x86_64-cpu")
OPENVINO_PROFILE = get_profile("intel-xeon")


def _config(*, size: tuple[int, int] = (32, 32), channels: int = 1, location: str | None = "loc") -> ModelConfig:
    return ModelConfig.model_validate(
        {
            "name": "tiny",
            "version": "1.0.0",
            "task": "classification",
            "labels": ["nodule"],
            "thresholds": {"nodule": 0.5},
            "input": {"name": "image"},
            "outputs": {"scores": "prob", "location": location},
            "preprocessing": {"modalities": ["CT"], "size": list(size), "channels": channels},
        }
    )


CONFIG = _config()


def _model(
    *,
    input_shape: Sequence[int | str | None] | None = ("N", 1, 32, 32),
    input_name: str = "image",
    opset: int = 17,
    extra_nodes: Sequence[onnx.NodeProto] = (),
    extra_outputs: Sequence[onnx.ValueInfoProto] = (),
    extra_inputs: Sequence[onnx.ValueInfoProto] = (),
    extra_opsets: Sequence[tuple[str, int]] = (),
    outputs: Sequence[str] = ("prob", "loc"),
) -> onnx.ModelProto:
    """conv -> relu -> global pool -> two heads: ``prob`` (N, 1) and ``loc`` (N, 2)."""
    rng = np.random.default_rng(0)
    weights = {
        "w": rng.normal(size=(4, 1, 3, 3)),
        "b": np.zeros(4),
        "w_prob": rng.normal(size=(4, 1)),
        "w_loc": rng.normal(size=(4, 2)),
    }
    initializers = [numpy_helper.from_array(value.astype(np.float32), name) for name, value in weights.items()]
    nodes = [
        helper.make_node("Conv", [input_name, "w", "b"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"], name="pool"),
        helper.make_node("Flatten", ["pool"], ["features"], name="flatten"),
        helper.make_node("MatMul", ["features", "w_prob"], ["logit"], name="head_prob"),
        helper.make_node("Sigmoid", ["logit"], ["prob"], name="sigmoid_prob"),
        helper.make_node("MatMul", ["features", "w_loc"], ["loc_logit"], name="head_loc"),
        helper.make_node("Sigmoid", ["loc_logit"], ["loc"], name="sigmoid_loc"),
        *extra_nodes,
    ]
    shapes = {"prob": ["N", 1], "loc": ["N", 2]}
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, input_shape), *extra_inputs],
        [
            *(helper.make_tensor_value_info(name, TensorProto.FLOAT, shapes[name]) for name in outputs),
            *extra_outputs,
        ],
        initializers,
    )
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(domain, v) for domain, v in extra_opsets)]
    return helper.make_model(graph, opset_imports=opsets)


def _save(model: onnx.ModelProto, tmp_path: Path, name: str = "model.onnx") -> Path:
    path = tmp_path / name
    onnx.save(model, path)
    return path


def _refused(path: Path, config: ModelConfig = CONFIG, profile: DeviceProfile = ORT_PROFILE) -> ModelCheckError:
    with pytest.raises(ModelCheckError) as info:
        check_model(path, config, profile)
    return info.value


# --- models that pass -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", [ORT_PROFILE, OPENVINO_PROFILE], ids=lambda p: p.id)
def test_a_good_model_passes_unchanged(tmp_path: Path, profile: DeviceProfile) -> None:
    path = _save(_model(), tmp_path)
    checked = check_model(path, CONFIG, profile)

    assert checked.source == path and not checked.changed and checked.engine == profile.engine
    assert checked.opset == 17
    assert checked.op_histogram == {
        "MatMul": 2,
        "Sigmoid": 2,
        "Conv": 1,
        "Flatten": 1,
        "GlobalAveragePool": 1,
        "Relu": 1,
    }
    assert checked.input.name == "image" and checked.input.shape == ["N", 1, 32, 32]
    assert [(o.name, o.shape) for o in checked.outputs] == [("prob", ["N", 1]), ("loc", ["N", 2])]
    assert checked.load().graph.node[0].name == "conv"


def test_open_spatial_dimensions_are_fixed_from_the_config(tmp_path: Path) -> None:
    path = _save(_model(input_shape=("batch", "C", "height", None)), tmp_path)
    checked = check_model(path, CONFIG, ORT_PROFILE)

    assert checked.changed
    assert checked.input.shape == ["batch", 1, 32, 32]
    assert check_model(path, CONFIG, ORT_PROFILE).model_bytes == checked.model_bytes  # same input, same bytes
    assert any("dimension 2 (rows) was 'height'; fixed to 32" in note for note in checked.notes)
    assert any("dimension 3 (columns) was unknown; fixed to 32" in note for note in checked.notes)
    # the fixed model is what gets compiled: it runs, with a dynamic batch
    session = ort.InferenceSession(
        checked.save(tmp_path / "fixed.onnx").read_bytes(), providers=["CPUExecutionProvider"]
    )
    assert session.get_inputs()[0].shape == ["batch", 1, 32, 32]
    (prob, loc) = session.run(None, {"image": np.zeros((3, 1, 32, 32), np.float32)})
    assert prob.shape == (3, 1) and loc.shape == (3, 2)
    assert onnx.load(path).graph.input[0].type.tensor_type.shape.dim[2].dim_param == "height"  # source untouched


def test_unnamed_batch_is_named_and_a_fixed_batch_is_noted(tmp_path: Path) -> None:
    checked = check_model(_save(_model(input_shape=(None, 1, 32, 32)), tmp_path), CONFIG, ORT_PROFILE)
    assert checked.input.shape == ["N", 1, 32, 32] and checked.changed

    fixed = check_model(_save(_model(input_shape=(1, 1, 32, 32)), tmp_path, "b1.onnx"), CONFIG, OPENVINO_PROFILE)
    assert not fixed.changed
    assert any("fixed batch of 1" in note and "batches 8" in note for note in fixed.notes)


# --- files that are not models ----------------------------------------------------------------------------------------


def test_a_text_file_is_not_an_onnx_model(tmp_path: Path) -> None:
    text = tmp_path / "model.onnx"
    text.write_text("name,version\nmy-model,1.0\n" * 20)
    assert "not an ONNX model" in str(_refused(text)) and str(text) in str(_refused(text))

    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    assert "not an ONNX model" in _refused(empty).message

    assert "not found" in _refused(tmp_path / "absent.onnx").message


def test_an_unknown_standard_operator_is_named_with_its_node(tmp_path: Path) -> None:
    odd = helper.make_node("Sigmoidal", ["logit"], ["odd"], name="the_odd_one")
    model = _model(extra_nodes=[odd], extra_outputs=[helper.make_tensor_value_info("odd", TensorProto.FLOAT, [])])
    error = _refused(_save(model, tmp_path))
    assert error.node == "the_odd_one" and error.op == "Sigmoidal"
    assert "not an ONNX operator at opset 17" in error.message


# --- opsets and operators ---------------------------------------------------------------------------------------------


def test_opset_outside_the_engine_range_is_refused(tmp_path: Path) -> None:
    oldest, newest = engine_opset_range("onnxruntime")  # the checker accepts opsets it does not know yet
    error = _refused(_save(_model(opset=newest + 1), tmp_path))
    assert f"opset {newest + 1}, newer than onnxruntime supports opsets {oldest} to {newest}" in error.message

    error = _refused(_save(_model(opset=6), tmp_path, "old.onnx"))
    assert f"opset 6, older than onnxruntime supports opsets {oldest} to {newest}" in error.message


def test_openvino_accepts_a_newer_opset_only_when_no_operator_changed(tmp_path: Path) -> None:
    _, newest = engine_opset_range("openvino")
    if newest >= onnx.defs.onnx_opset_version():
        pytest.skip("this onnx knows no opset newer than OpenVINO's frontend")
    newer = newest + 1
    checked = check_model(_save(_model(opset=newer), tmp_path), CONFIG, OPENVINO_PROFILE)
    assert any(f"opset {newer} is newer than OpenVINO's ONNX frontend (opset {newest})" in n for n in checked.notes)

    changed = [
        schema.name
        for schema in onnx.defs.get_all_schemas_with_history()
        if schema.domain == "" and schema.since_version == newer and schema.name in ("Cast", "Flatten", "Identity")
    ]
    if not changed:
        pytest.skip(f"no simple operator changed at opset {newer}")
    node = helper.make_node(
        changed[0], ["features"], ["extra"], name="newer_node", **({"to": 1} if changed[0] == "Cast" else {})
    )
    model = _model(
        opset=newer,
        extra_nodes=[node],
        extra_outputs=[helper.make_tensor_value_info("extra", TensorProto.FLOAT, ["N", 4])],
    )
    error = _refused(_save(model, tmp_path, "changed.onnx"), profile=OPENVINO_PROFILE)
    assert error.node == "newer_node" and f"'newer_node' ({changed[0]}-{newer})" in error.message


@pytest.mark.parametrize("profile", [ORT_PROFILE, OPENVINO_PROFILE], ids=lambda p: p.id)
def test_custom_domain_operator_names_node_and_domain(tmp_path: Path, profile: DeviceProfile) -> None:
    custom = helper.make_node("FancyNorm", ["logit"], ["fancy"], name="fancy_norm", domain="com.acme.ops")
    model = _model(
        extra_nodes=[custom],
        extra_outputs=[helper.make_tensor_value_info("fancy", TensorProto.FLOAT, ["N", 1])],
        extra_opsets=[("com.acme.ops", 1)],
    )
    error = _refused(_save(model, tmp_path), profile=profile)
    assert error.node == "fancy_norm" and error.op == "com.acme.ops:FancyNorm"
    assert "custom domain 'com.acme.ops'" in error.message and profile.engine in error.message


def test_operator_without_an_onnxruntime_kernel_names_op_and_node(tmp_path: Path) -> None:
    # ImageDecoder is standard ONNX (opset 20) but ONNX Runtime has no kernel for it.
    nodes = [
        helper.make_node("Cast", ["features"], ["bytes"], name="to_bytes", to=TensorProto.UINT8),
        helper.make_node("Flatten", ["bytes"], ["stream2d"], name="flat_bytes", axis=0),
        helper.make_node("Squeeze", ["stream2d", "zero"], ["stream"], name="squeeze"),
        helper.make_node("ImageDecoder", ["stream"], ["picture"], name="decode_picture"),
    ]
    model = _model(
        opset=20,
        extra_nodes=[helper.make_node("Constant", [], ["zero"], name="zero", value_ints=[0]), *nodes],
        extra_outputs=[helper.make_tensor_value_info("picture", TensorProto.UINT8, ["h", "w", "c"])],
    )
    error = _refused(_save(model, tmp_path))
    assert error.node == "decode_picture" and error.op == "ImageDecoder"
    assert (
        "ONNX Runtime has no CPU implementation of ImageDecoder (version 20) for node 'decode_picture'" in error.message
    )


def test_operator_openvino_cannot_convert_names_op_and_node(tmp_path: Path) -> None:
    # Det is standard ONNX that ONNX Runtime runs but OpenVINO's ONNX frontend has no rule for.
    model = _model(
        extra_nodes=[helper.make_node("Det", ["conv"], ["det"], name="determinant")],
        extra_outputs=[helper.make_tensor_value_info("det", TensorProto.FLOAT, ["N", 4])],
    )
    path = _save(model, tmp_path)
    check_model(path, CONFIG, ORT_PROFILE)  # fine for ONNX Runtime
    error = _refused(path, profile=OPENVINO_PROFILE)
    assert error.node == "determinant" and error.op == "Det"
    assert "OpenVINO cannot convert node(s) 'determinant' (Det: no conversion rule)" in error.message


# --- inputs and outputs -----------------------------------------------------------------------------------------------


def test_missing_input_lists_the_model_inputs(tmp_path: Path) -> None:
    error = _refused(_save(_model(input_name="pixels"), tmp_path))
    assert error.field == "input.name"
    assert "no input 'image'" in error.message and "['pixels']" in error.message


def test_a_second_input_is_refused(tmp_path: Path) -> None:
    extra = helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 1])
    add = helper.make_node("Add", ["logit", "mask"], ["masked"], name="add_mask")
    masked = helper.make_tensor_value_info("masked", TensorProto.FLOAT, ["N", 1])
    model = _model(extra_inputs=[extra], extra_nodes=[add], extra_outputs=[masked])
    assert "inputs ['mask'] besides 'image'" in _refused(_save(model, tmp_path)).message


def test_fixed_size_that_differs_from_the_config_names_both(tmp_path: Path) -> None:
    error = _refused(_save(_model(input_shape=("N", 1, 28, 28)), tmp_path))
    assert "fixed at 1x28x28" in error.message and "produces CHW = 1x32x32" in error.message
    assert "dimension 2 (rows) is 28 in the model and 32 in the config" in error.message

    error = _refused(_save(_model(input_shape=("N", 1, 32, 32)), tmp_path, "gray.onnx"), _config(channels=3))
    assert "dimension 1 (channels) is 1 in the model and 3 in the config" in error.message

    error = _refused(_save(_model(input_shape=("N", 32, 32)), tmp_path, "rank3.onnx"))
    assert "rank 3" in error.message


def test_missing_outputs_list_the_model_outputs(tmp_path: Path) -> None:
    model = _model(outputs=("prob",))
    error = _refused(_save(model, tmp_path))
    assert error.field == "outputs.location"
    assert "no output 'loc'" in error.message and "['prob']" in error.message
    check_model(_save(model, tmp_path, "no_loc.onnx"), _config(location=None), ORT_PROFILE)


def test_score_output_must_have_one_score_per_label(tmp_path: Path) -> None:
    model = _model()
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 3
    error = _refused(_save(model, tmp_path))
    assert "output 'prob' has shape ['N', 3]" in error.message and "last dimension of 1" in error.message
