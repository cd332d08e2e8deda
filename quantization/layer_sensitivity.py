"""Which layers cost a quantized model its accuracy, and the fewest to keep in float so that it passes.

Global settings cannot rescue a model whose accuracy is lost in one or two
places (a concatenation of features on very different scales, a classifier
whose small weights share a scale with a large one). Such layers are found by
measuring each one on its own: the model is quantized with only that layer
quantized and compared with FP32 on held-back slices. Measuring a layer alone,
rather than the full model minus that layer, also finds pairs that only help
together (a tensor stays quantized while its producer *or* its consumer is).

The costliest layers are then kept in float greedily, 1, 2, 4 ... at a time,
and the count is trimmed back by bisection to the fewest that pass, because
every float layer costs speed.

The functions here take the measuring as callables, so that they know nothing
of the engine; :func:`quantization.onnxruntime_int8.search_int8` provides them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from quantization.fidelity import GateResult

__all__ = ["LayerCost", "float_fallback", "rank_layers"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerCost:
    """What quantizing one layer alone does to the model's outputs against FP32.

    Attributes:
        node: the graph node's name.
        op_type: its operator.
        agreement: top-1 agreement with FP32 with only this layer quantized.
        flip_rate: decisions flipped at the clinical threshold.
        mean_abs_delta: mean |Δ probability|.
        max_abs_delta: max |Δ probability|.
        auc_drop: FP32 AUC minus this model's AUC, where ground truth was given.
    """

    node: str
    op_type: str
    agreement: float
    flip_rate: float
    mean_abs_delta: float
    max_abs_delta: float
    auc_drop: float | None = None

    @property
    def cost(self) -> float:
        """Disagreements, flips and AUC lost as fractions, plus the mean |Δp| (ranks layers that flip nothing yet)."""
        return (1.0 - self.agreement) + self.flip_rate + max(0.0, self.auc_drop or 0.0) + self.mean_abs_delta

    def reason(self) -> str:
        """Why the layer matters, in words, e.g. for ``CompileRecord.float_nodes``."""
        text = (
            f"{self.op_type} quantized alone costs {100 * (1 - self.agreement):.1f} % agreement, "
            f"{100 * self.flip_rate:.1f} % flipped decisions"
        )
        if self.auc_drop is not None:
            text += f", {self.auc_drop:.4f} AUC"
        return text + f" (mean |Δp| {self.mean_abs_delta:.4f})"


def rank_layers(nodes: Sequence[tuple[str, str]], measure: Callable[[str], GateResult]) -> list[LayerCost]:
    """Measure each layer alone and rank them worst first; layers that change nothing are left out.

    Args:
        nodes: ``(name, op_type)`` of every layer that may be quantized, in graph order.
        measure: gives the fidelity of the model with only the named layer quantized.
    """
    costs = []
    for name, op_type in nodes:
        report = measure(name).report
        cost = LayerCost(
            node=name,
            op_type=op_type,
            agreement=report.agreement,
            flip_rate=report.flip_rate,
            mean_abs_delta=float(report.details.get("mean_abs_delta", report.max_abs_delta)),
            max_abs_delta=report.max_abs_delta,
            auc_drop=report.details.get("auc_drop"),
        )
        log.debug("layer %s: %s", name, cost.reason())
        costs.append(cost)
    ranked = sorted(costs, key=lambda c: -c.cost)  # stable: equal costs keep graph order
    return [c for c in ranked if c.cost > 0]


def float_fallback(
    ranked: Sequence[LayerCost], check: Callable[[tuple[str, ...]], GateResult], max_nodes: int
) -> tuple[str, ...] | None:
    """The fewest of the costliest layers to keep in float for the gate to pass, or None if ``max_nodes`` do not do.

    Tries the worst 1, 2, 4 ... layers (capped at ``max_nodes``), then bisects
    between the last count that failed and the first that passed.

    Args:
        ranked: layers worst first, from :func:`rank_layers`.
        check: the gate's verdict on the model with the given layers in float.
        max_nodes: most layers that may stay in float.
    """
    names = [c.node for c in ranked][: max(0, max_nodes)]
    verdicts: dict[int, bool] = {}

    def passes(count: int) -> bool:
        if count not in verdicts:
            verdicts[count] = check(tuple(names[:count])).passed
        return verdicts[count]

    failing, count = 0, 1
    while count <= len(names):
        if passes(count):
            break
        failing = count
        if count == len(names):
            return None
        count = min(2 * count, len(names))
    else:
        return None
    passing = count
    while passing - failing > 1:
        middle = (failing + passing) // 2
        if passes(middle):
            passing = middle
        else:
            failing = middle
    return tuple(names[:passing])
