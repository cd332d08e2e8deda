"""The ResNet-50 built with onnx.helper is the standard network: its cost, its shapes, its determinism."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from benchmarks.resnet50_onnx import build_resnet50, measure


def _run(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x})[0]


def test_standard_resnet50_has_torchvisions_cost_and_runs() -> None:
    model = build_resnet50(seed=0)
    figures = measure(model)
    # torchvision resnet50: 4.09 GMAC and 25,557,032 parameters, whose 53,120 batch-norm scales and shifts
    # fold into 26,560 convolution biases.
    assert 4.08e9 <= figures.macs <= 4.10e9
    assert figures.parameters == 25_557_032 - 53_120 + 26_560
    assert sum(node.op_type == "Conv" for node in model.graph.node) == 53
    assert model.opset_import[0].version == 17
    x = np.random.default_rng(0).random((2, 3, 224, 224), dtype=np.float32)
    logits = _run(model.SerializeToString(), x)
    assert logits.shape == (2, 1000)
    assert np.isfinite(logits).all() and logits.std() > 0


def test_the_seed_fixes_the_weights() -> None:
    def small(seed: int) -> bytes:
        return build_resnet50(seed, base_width=8, image_size=64, num_classes=10).SerializeToString()

    assert small(3) == small(3)
    assert small(4) != small(3)


def test_smaller_widths_keep_the_architecture() -> None:
    model = build_resnet50(0, base_width=8, image_size=64, num_classes=10)
    full = build_resnet50(0)
    assert [n.op_type for n in model.graph.node] == [n.op_type for n in full.graph.node]
    assert _run(model.SerializeToString(), np.zeros((1, 3, 64, 64), np.float32)).shape == (1, 10)


@pytest.mark.parametrize(("width", "size", "classes"), [(0, 224, 1000), (64, 16, 1000), (64, 224, 0)])
def test_bad_sizes_are_refused(width: int, size: int, classes: int) -> None:
    with pytest.raises(ValueError):
        build_resnet50(0, base_width=width, image_size=size, num_classes=classes)
