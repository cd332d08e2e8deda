"""Per-round paired latency ratios (benchmarks/timing.py), on real ONNX Runtime engines."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from benchmarks.timing import LatencyTable, time_alternating
from runtime.benchmark import ModelUnderTest
from runtime.engines.onnxruntime_engine import OnnxRuntimeEngine


def _engine(repeats: int) -> OnnxRuntimeEngine:
    """A model doing ``repeats`` chained MatMuls: more repeats, more time."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [64, 64], np.eye(64, dtype=np.float32).ravel())
    nodes, source = [], "x"
    for index in range(repeats):
        nodes.append(helper.make_node("MatMul", [source, "w"], [f"y{index}"]))
        source = f"y{index}"
    nodes.append(helper.make_node("Identity", [source], ["y"]))
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64, 64])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return OnnxRuntimeEngine(model.SerializeToString(), ["CPUExecutionProvider"], threads=1)


def test_ratio_is_the_median_of_paired_rounds() -> None:
    table = LatencyTable({"a": [1.0, 2.0, 4.0], "b": [2.0, 4.0, 2.0]})
    estimate = table.ratio("a", "b")
    assert estimate.ratio == pytest.approx(0.5)
    assert estimate.low <= estimate.ratio <= estimate.high
    assert estimate.rounds == 3
    assert table.p50("a") == 2.0


def test_alternating_rounds_time_every_model_and_rank_them() -> None:
    light, heavy = _engine(1), _engine(200)
    sample = np.ones((1, 64, 64), np.float32)
    models = [ModelUnderTest("light", light, "x"), ModelUnderTest("heavy", heavy, "x")]
    table = time_alternating(models, sample, rounds=3, iterations=5, settle=0.0)
    assert {k: len(v) for k, v in table.per_round.items()} == {"light": 3, "heavy": 3}
    assert table.ratio("light", "heavy").ratio < 1.0


def test_labels_must_be_unique() -> None:
    engine = _engine(1)
    with pytest.raises(ValueError):
        time_alternating(
            [ModelUnderTest("a", engine, "x")] * 2, np.ones((1, 64, 64), np.float32), rounds=1, iterations=1
        )
