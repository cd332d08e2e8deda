"""Ranking layers by what they cost alone, and the fewest kept in float for the gate to pass.

The verdicts come from :func:`quantization.fidelity.compare` on made-up
outputs: a layer "costs" as many flipped decisions as its outputs are moved
across the threshold.
"""

from __future__ import annotations

import numpy as np

from quantization.fidelity import GateResult, compare
from quantization.layer_sensitivity import LayerCost, float_fallback, rank_layers
from sdk.model_config import AccuracyGate

REFERENCE = np.linspace(0.05, 0.95, 100)
GATE = AccuracyGate(min_agreement=0.99, max_flip_rate=0.01, max_auc_drop=0.01)


def _with_flips(count: int, nudge: float = 0.0) -> GateResult:
    """FP32 outputs with ``count`` of them pushed across 0.5 and all moved by ``nudge``."""
    candidate = np.clip(REFERENCE + nudge, 0, 1)
    candidate[:count] = 1.0 - REFERENCE[:count]
    return compare(REFERENCE, candidate, threshold=0.5, labels=None, gate=GATE, bootstrap=0)


def test_rank_layers_worst_first_and_drops_harmless_ones() -> None:
    effects = {"conv1": (0, 0.001), "gemm": (30, 0.0), "concat": (30, 0.002), "flatten": (0, 0.0), "conv2": (5, 0.0)}
    measured: list[str] = []

    def measure(node: str) -> GateResult:
        measured.append(node)
        return _with_flips(*effects[node])

    nodes = [(name, "Op") for name in effects]
    ranked = rank_layers(nodes, measure)
    assert measured == list(effects)
    assert [c.node for c in ranked] == ["concat", "gemm", "conv2", "conv1"]
    assert all(isinstance(c, LayerCost) for c in ranked)
    assert ranked[0].flip_rate == 0.3
    assert "costs 30.0 % agreement, 30.0 % flipped decisions" in ranked[0].reason()


def _ranked(*names: str) -> list[LayerCost]:
    return [LayerCost(name, "Conv", 0.5, 0.5, 0.1, 0.5) for name in names]


def test_float_fallback_doubles_then_trims_to_the_fewest() -> None:
    tried: list[tuple[str, ...]] = []

    def check(nodes: tuple[str, ...]) -> GateResult:
        tried.append(nodes)
        return _with_flips(0 if len(nodes) >= 3 else 10)  # passes with the worst three in float

    chosen = float_fallback(_ranked("a", "b", "c", "d", "e", "f"), check, max_nodes=8)
    assert chosen == ("a", "b", "c")
    assert [len(t) for t in tried] == [1, 2, 4, 3]


def test_float_fallback_gives_up_at_the_cap() -> None:
    tried: list[int] = []

    def check(nodes: tuple[str, ...]) -> GateResult:
        tried.append(len(nodes))
        return _with_flips(0 if len(nodes) >= 4 else 10)

    assert float_fallback(_ranked("a", "b", "c", "d", "e"), check, max_nodes=3) is None
    assert tried == [1, 2, 3]


def test_float_fallback_with_nothing_to_keep() -> None:
    assert float_fallback([], lambda nodes: _with_flips(0), max_nodes=8) is None
