"""ONNX Runtime and OpenVINO engines: load, warm-up, placement, loud fall-back (runtime/engines/)."""

from __future__ import annotations

import numpy as np
import pytest

from quantization.openvino_ir import convert_to_openvino_ir
from runtime.engines.onnxruntime_engine import OnnxRuntimeEngine
from runtime.engines.openvino_engine import OpenVinoEngine
from sdk.errors import EngineError
from sdk.reference_model import onnx_path

CPU = "CPUExecutionProvider"


@pytest.fixture(scope="module")
def onnx_bytes() -> bytes:
    return onnx_path().read_bytes()


def test_onnxruntime_on_cpu_counts_nodes_and_is_not_degraded(onnx_bytes: bytes) -> None:
    engine = OnnxRuntimeEngine(onnx_bytes, [CPU])
    assert not engine.placement.degraded
    assert engine.placement.nodes_by_provider[CPU] > 10
    out = engine.run({"image": np.zeros((2, 1, 256, 256), np.float32)})
    assert out["nodule_probability"].shape == (2, 1)


def test_missing_accelerator_is_loud(onnx_bytes: bytes, caplog: pytest.LogCaptureFixture) -> None:
    engine = OnnxRuntimeEngine(onnx_bytes, ["TensorrtExecutionProvider", "CUDAExecutionProvider", CPU], name="pkg")
    assert engine.placement.degraded
    assert "TensorrtExecutionProvider is not available" in str(engine.placement.reason)
    assert engine.placement.device == CPU
    assert any("not available" in record.message for record in caplog.records)


def test_no_wanted_provider_at_all_is_an_error(onnx_bytes: bytes) -> None:
    with pytest.raises(EngineError, match="none of the providers"):
        OnnxRuntimeEngine(onnx_bytes, ["TensorrtExecutionProvider"])


def test_garbage_model_is_an_engine_error() -> None:
    with pytest.raises(EngineError, match="cannot load"):
        OnnxRuntimeEngine(b"not a model", [CPU])


def test_openvino_falls_back_loudly_and_matches_onnxruntime(onnx_bytes: bytes) -> None:
    files = convert_to_openvino_ir(onnx_path())
    engine = OpenVinoEngine(files["model.xml"], files["model.bin"], ["NPU", "GPU", "CPU"])
    assert engine.placement.degraded and engine.placement.device == "CPU"
    sample = np.random.default_rng(0).random((1, 1, 256, 256), dtype=np.float32)
    got = engine.run({"image": sample})["nodule_probability"]
    expected = OnnxRuntimeEngine(onnx_bytes, [CPU]).run({"image": sample})["nodule_probability"]
    # FP32 pinned: OpenVINO must not silently run in bf16 on AVX-512/AMX CPUs.
    assert np.max(np.abs(got - expected)) < 1e-4
    with pytest.raises(EngineError, match="none of the OpenVINO devices"):
        OpenVinoEngine(files["model.xml"], files["model.bin"], ["NPU"])
