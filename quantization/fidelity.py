"""How closely a compiled model follows its FP32 original, and whether that is close enough to ship.

A quantized model is judged against the FP32 model on held-back slices, the
way a clinician would notice a difference: does it pick the same label
(top-1 agreement), does it cross the clinical threshold where the FP32 model
did not (flips), by how much do probabilities move, and, where ground truth
exists, do AUC and sensitivity/specificity at the operating point hold up.
Label-based figures carry bootstrap confidence intervals, because a held-back
set of a few hundred slices gives noisy AUCs.

Numpy only: the metrics are small and exact, and the AUC handles ties by
mid-ranks (the Mann-Whitney statistic), as ``sklearn.metrics.roc_auc_score``
does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sdk.manifest import FidelityReport
from sdk.model_config import AccuracyGate

__all__ = ["GateResult", "auc", "bootstrap_ci", "compare", "sensitivity_specificity"]

log = logging.getLogger(__name__)

_EPS = 1e-12
"""Slack for comparing rates computed as count / N against gate limits."""


@dataclass(frozen=True)
class GateResult:
    """A fidelity report and the accuracy gate's verdict on it.

    Attributes:
        report: the figures that go into the package manifest.
        passed: True when every gate criterion holds.
        failures: one sentence per criterion that does not hold, e.g.
            ``"agreement 97.2 % < 99.0 %"``.
    """

    report: FidelityReport
    passed: bool
    failures: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- metrics


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (ties count one half).

    Returns:
        The AUC, or NaN when ``labels`` hold only one class.
    """
    scores, labels = _as_1d(scores, "scores"), _as_1d(labels, "labels")
    _same_length(scores, labels)
    return float(_auc_rows(scores[None, :], _binary(labels)[None, :])[0])


def sensitivity_specificity(scores: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float, float]:
    """Sensitivity and specificity of the decision ``score >= threshold`` (NaN where a class is absent)."""
    scores, labels = _as_1d(scores, "scores"), _as_1d(labels, "labels")
    _same_length(scores, labels)
    sens, spec = _sens_spec_rows(scores[None, :], _binary(labels)[None, :], threshold)
    return float(sens[0]), float(spec[0])


def bootstrap_ci(
    metric_fn: Callable[..., np.ndarray],
    *arrays: np.ndarray,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float] | None:
    """Percentile bootstrap confidence interval of a metric over paired samples.

    All resamples are drawn at once: every array is indexed along its first
    axis by the same ``(n, N)`` index matrix, so ``metric_fn`` is called once
    with arrays of shape ``(n, N, ...)`` and must return ``n`` values, one per
    resample (NaN where the metric is undefined, e.g. a resample with one class).
    The same seed gives the same interval.

    Returns:
        ``(low, high)`` of the ``1 - alpha`` interval, or None when no resample
        gives a defined value.
    """
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array")
    size = len(arrays[0])
    if any(len(a) != size for a in arrays):
        raise ValueError("bootstrap_ci arrays must have the same length")
    if size == 0 or n < 1:
        return None
    index = np.random.default_rng(seed).integers(0, size, size=(n, size))
    values = np.asarray(metric_fn(*(np.asarray(a)[index] for a in arrays)), dtype=np.float64).reshape(-1)
    if values.shape[0] != n:
        raise ValueError(f"metric_fn returned {values.shape[0]} values for {n} resamples")
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    low, high = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high)


# ----------------------------------------------------------------------------- comparison


def compare(
    reference: Mapping[str, np.ndarray] | np.ndarray,
    candidate: Mapping[str, np.ndarray] | np.ndarray,
    *,
    threshold: float | Sequence[float] | np.ndarray,
    labels: np.ndarray | None,
    gate: AccuracyGate,
    bootstrap: int = 1000,
    seed: int = 0,
) -> GateResult:
    """Compare a compiled model's probabilities with the FP32 model's and apply the accuracy gate.

    Args:
        reference: FP32 probabilities, ``(N, L)`` (or ``(N,)`` for one label),
            or a mapping label -> ``(N,)`` probabilities.
        candidate: the compiled model's probabilities, same form and labels.
        threshold: the clinical decision threshold, one for all labels or one
            per label; a decision is ``probability >= threshold``.
        labels: ground truth, ``(N,)`` or ``(N, L)`` of 0/1, or None.
        gate: the limits the compiled model must meet.
        bootstrap: resamples for the confidence intervals.
        seed: seed of the resampling, so that a report is reproducible.

    Top-1 agreement is the argmax over labels; with one sigmoid label it is the
    argmax over ``[1 - p, p]``, i.e. the side of 0.5. A slice counts as flipped
    when any of its label decisions at the threshold differs. The AUC drop is
    reference minus compiled AUC (macro mean over labels), and gates only when
    ground truth with both classes is given.
    """
    names, ref = _scores(reference, "reference")
    cand_names, cand = _scores(candidate, "candidate")
    if names and cand_names and names != cand_names:
        raise ValueError(f"reference labels {names} differ from candidate labels {cand_names}")
    if ref.shape != cand.shape:
        raise ValueError(f"reference scores {ref.shape} and candidate scores {cand.shape} differ in shape")
    samples, width = ref.shape
    if samples == 0:
        raise ValueError("no samples to compare")
    thresholds = np.broadcast_to(np.asarray(threshold, dtype=np.float64).reshape(-1), (width,)).copy()

    top_ref, top_cand = _top1(ref), _top1(cand)
    disagreements = int(np.count_nonzero(top_ref != top_cand))
    flipped = np.any((ref >= thresholds) != (cand >= thresholds), axis=1)
    delta = np.abs(ref - cand)
    agreement = 1.0 - disagreements / samples
    flip_rate = float(np.count_nonzero(flipped)) / samples
    details: dict[str, Any] = {
        "disagreements": disagreements,
        "flips": int(np.count_nonzero(flipped)),
        "thresholds": [float(t) for t in thresholds],
        "mean_abs_delta": float(delta.mean()),
        "gate": gate.model_dump(),
    }
    if names:
        details["labels"] = list(names)
    auc_reference = auc_compiled = auc_drop = None
    if labels is not None:
        truth = _truth(labels, samples, width)
        auc_reference, auc_compiled, auc_drop = _label_metrics(ref, cand, truth, thresholds, details, bootstrap, seed)

    failures = []
    if agreement + _EPS < gate.min_agreement:
        failures.append(f"agreement {_pair(agreement, gate.min_agreement, '<')}")
    if flip_rate > gate.max_flip_rate + _EPS:
        failures.append(
            f"decisions flipped at the threshold {_pair(flip_rate, gate.max_flip_rate, '>')}"
            f" ({details['flips']} of {samples})"
        )
    if auc_drop is not None and auc_drop > gate.max_auc_drop + _EPS:
        failures.append(f"AUC drop {auc_drop:.4f} > {gate.max_auc_drop:.4f}")

    report = FidelityReport(
        samples=samples,
        agreement=agreement,
        flip_rate=flip_rate,
        max_abs_delta=float(delta.max()),
        auc_reference=auc_reference,
        auc_compiled=auc_compiled,
        details=details,
    )
    return GateResult(report=report, passed=not failures, failures=failures)


def _label_metrics(
    ref: np.ndarray,
    cand: np.ndarray,
    truth: np.ndarray,
    thresholds: np.ndarray,
    details: dict[str, Any],
    n: int,
    seed: int,
) -> tuple[float | None, float | None, float | None]:
    """AUCs, AUC drop, sensitivity/specificity and their intervals, into ``details``."""
    details["positives"] = [int(v) for v in truth.sum(axis=0)]
    details["bootstrap"] = {"resamples": n, "seed": seed, "confidence": 0.95}

    def macro_auc(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
        # (B, N, L) -> (B,): AUC per label, averaged over labels.
        per_label = [_auc_rows(scores[..., i], y[..., i]) for i in range(scores.shape[-1])]
        return np.mean(per_label, axis=0)

    auc_ref = float(macro_auc(ref[None], truth[None])[0])
    auc_cand = float(macro_auc(cand[None], truth[None])[0])
    for role, scores in (("reference", ref), ("compiled", cand)):
        for which, name in ((0, "sensitivity"), (1, "specificity")):
            values, intervals = [], []
            for i, t in enumerate(thresholds):
                values.append(_finite(_sens_spec_rows(scores[None, :, i], truth[None, :, i], t)[which][0]))
                intervals.append(_ci(bootstrap_ci(_sens_spec_metric(i, t, which), scores, truth, n=n, seed=seed)))
            details[f"{name}_{role}"] = _maybe_list(values)
            details[f"{name}_{role}_ci"] = _maybe_list(intervals)
    if not (np.isfinite(auc_ref) and np.isfinite(auc_cand)):
        details["auc"] = "undefined: the ground truth holds one class only"
        return None, None, None
    drop = auc_ref - auc_cand
    details["auc_drop"] = drop
    details["auc_reference_ci"] = _ci(bootstrap_ci(macro_auc, ref, truth, n=n, seed=seed))
    details["auc_compiled_ci"] = _ci(bootstrap_ci(macro_auc, cand, truth, n=n, seed=seed))
    details["auc_drop_ci"] = _ci(
        bootstrap_ci(lambda r, c, y: macro_auc(r, y) - macro_auc(c, y), ref, cand, truth, n=n, seed=seed)
    )
    return auc_ref, auc_cand, drop


# ----------------------------------------------------------------------------- row-wise kernels


def _auc_rows(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AUC of each row of ``scores`` (B, N) against ``labels`` (B, N) by mid-ranks; NaN without both classes."""
    rows, size = scores.shape
    order = np.argsort(scores, axis=1, kind="stable")
    ordered = np.take_along_axis(scores, order, axis=1)
    positions = np.broadcast_to(np.arange(size), (rows, size))
    starts = np.ones((rows, size), dtype=bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends = np.ones((rows, size), dtype=bool)
    ends[:, :-1] = starts[:, 1:]
    first = np.maximum.accumulate(np.where(starts, positions, 0), axis=1)
    last = np.minimum.accumulate(np.where(ends, positions, size - 1)[:, ::-1], axis=1)[:, ::-1]
    ranks = (first + last) / 2.0 + 1.0  # mid-rank of each tie group, 1-based
    positive = np.take_along_axis(labels, order, axis=1).astype(bool)
    n_pos = positive.sum(axis=1).astype(np.float64)
    n_neg = size - n_pos
    rank_sum = np.where(positive, ranks, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        result = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), result, np.nan)


def _sens_spec_metric(label: int, threshold: float, which: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """A bootstrap metric: sensitivity (``which`` 0) or specificity (1) of one label."""

    def metric(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
        return _sens_spec_rows(scores[..., label], truth[..., label], threshold)[which]

    return metric


def _sens_spec_rows(scores: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Sensitivity and specificity per row of (B, N) arrays at ``score >= threshold``."""
    positive = labels.astype(bool)
    called = scores >= threshold
    n_pos = positive.sum(axis=-1)
    n_neg = positive.shape[-1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        sens = np.where(n_pos > 0, (called & positive).sum(axis=-1) / n_pos, np.nan)
        spec = np.where(n_neg > 0, (~called & ~positive).sum(axis=-1) / n_neg, np.nan)
    return sens, spec


# ----------------------------------------------------------------------------- helpers


def _scores(value: Mapping[str, np.ndarray] | np.ndarray, role: str) -> tuple[tuple[str, ...], np.ndarray]:
    """Scores as (label names or (), float64 array (N, L))."""
    if isinstance(value, Mapping):
        if not value:
            raise ValueError(f"{role} holds no labels")
        names = tuple(value)
        columns = [_as_1d(value[name], f"{role}[{name!r}]") for name in names]
        if len({len(c) for c in columns}) != 1:
            raise ValueError(f"{role} labels hold different numbers of samples")
        return names, np.stack(columns, axis=1).astype(np.float64)
    array = np.asarray(value, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"{role} scores must be (N,) or (N, L), got shape {array.shape}")
    return (), array


def _truth(labels: np.ndarray, samples: int, width: int) -> np.ndarray:
    truth = np.asarray(labels)
    if truth.ndim == 1:
        truth = truth[:, None]
    if truth.shape != (samples, width):
        raise ValueError(f"labels must have shape ({samples},) or ({samples}, {width}), got {np.shape(labels)}")
    return _binary(truth)


def _binary(labels: np.ndarray) -> np.ndarray:
    values = np.asarray(labels)
    if values.size and not np.isin(values, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return values.astype(np.int8)


def _top1(scores: np.ndarray) -> np.ndarray:
    if scores.shape[1] == 1:
        return (scores[:, 0] > 0.5).astype(np.int64)  # argmax over [1 - p, p]
    return np.argmax(scores, axis=1)


def _as_1d(value: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array


def _same_length(a: np.ndarray, b: np.ndarray) -> None:
    if len(a) != len(b):
        raise ValueError(f"scores ({len(a)}) and labels ({len(b)}) differ in length")


def _ci(interval: tuple[float, float] | None) -> list[float] | None:
    return list(interval) if interval is not None else None


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _maybe_list(values: list[Any]) -> Any:
    """One label: the value itself; several: the list, so single-label reports stay flat."""
    return values[0] if len(values) == 1 else values


def _pair(value: float, limit: float, sign: str) -> str:
    """``value`` and ``limit`` as percentages, with enough decimals that they never print equal."""
    for decimals in (1, 2, 3, 4):
        left, right = f"{100 * value:.{decimals}f}", f"{100 * limit:.{decimals}f}"
        if left != right:
            break
    return f"{left} % {sign} {right} %"
