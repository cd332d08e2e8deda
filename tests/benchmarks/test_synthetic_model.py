"""The runtime benchmark's inference-heavy stand-in model (benchmarks/synthetic_model.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from benchmarks.synthetic_model import build_heavy_model
from sdk.reference_model import onnx_path


def _io(path: Path) -> tuple[list[tuple[str, list[int | str]]], list[str]]:
    model = onnx.load(path)
    inputs = [(i.name, [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim]) for i in model.graph.input]
    return inputs, [o.name for o in model.graph.output]


def test_it_has_the_reference_models_interface_and_is_deterministic(tmp_path: Path) -> None:
    small = build_heavy_model(onnx_path(), tmp_path / "a.onnx", width=8, blocks=(1, 1, 1, 1))
    again = build_heavy_model(onnx_path(), tmp_path / "b.onnx", width=8, blocks=(1, 1, 1, 1))
    other = build_heavy_model(onnx_path(), tmp_path / "c.onnx", width=8, blocks=(1, 1, 1, 1), seed=7)
    assert small.path.read_bytes() == again.path.read_bytes() != other.path.read_bytes()
    assert _io(small.path) == _io(onnx_path())
    assert small.parameters > 0 and small.macs > 0
    onnx.checker.check_model(onnx.load(small.path))

    session = ort.InferenceSession(str(small.path), providers=["CPUExecutionProvider"])
    reference = ort.InferenceSession(str(onnx_path()), providers=["CPUExecutionProvider"])
    (name, shape), *_ = _io(small.path)[0]
    batch = np.random.default_rng(0).random([2 if isinstance(d, str) else d for d in shape], dtype=np.float32)
    ours, theirs = session.run(None, {name: batch}), reference.run(None, {name: batch})
    assert [o.shape for o in ours] == [t.shape for t in theirs]
    assert all(np.isfinite(o).all() for o in ours)


def test_the_default_is_much_heavier_than_the_reference(tmp_path: Path) -> None:
    heavy = build_heavy_model(onnx_path(), tmp_path / "heavy.onnx")
    assert heavy.parameters > 10_000_000  # ResNet-18 class: inference dominates the per-instance cost
