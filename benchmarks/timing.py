"""Latency of several engines measured side by side, as per-round paired ratios.

On a shared machine the load changes from second to second, so a ratio is
only as good as the pairing. Every round times each model once, with
:func:`runtime.benchmark.bench_side_by_side` (its warm-up runs, then
``iterations`` timed runs), in an order shuffled each round (seeded), so that
no model always runs first or always follows the same neighbour; each model's
median latency is taken per round, and a ratio is the median over rounds of
the per-round ratio, with a bootstrap interval over rounds. That interval
assumes rounds are independent, which a drifting load on a shared machine
breaks; the benchmark therefore also times one model twice (an A/A control)
and reads the control's ratio as the noise floor.

Models are timed one call at a time, with a pause between them, because the
engines disturb each other on a 2-core machine: after each run ONNX Runtime's
intra-op threads spin-wait for work (its default), holding a core for tens
of milliseconds, so whatever runs next is slowed. Measured here: an OpenVINO
INT8 model timed right after an ONNX Runtime model took 2.0-2.3 ms instead of
1.2-1.4 ms (1.25 ms with ONNX Runtime's spinning switched off). Timing all
models inside one ``bench_side_by_side`` call would charge that to whichever
model follows an ONNX Runtime one.
"""

from __future__ import annotations

import logging
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from runtime.benchmark import ModelUnderTest, bench_side_by_side

__all__ = ["LatencyTable", "RatioEstimate", "time_alternating"]

log = logging.getLogger(__name__)

BOOTSTRAP_RESAMPLES = 2000

SETTLE_SECONDS = 0.1
"""Pause before timing each model: ONNX Runtime's spinning threads go to sleep well within it."""


@dataclass(frozen=True)
class RatioEstimate:
    """Median per-round latency ratio of two models and its 95 % bootstrap interval."""

    ratio: float
    low: float
    high: float
    rounds: int


@dataclass(frozen=True)
class LatencyTable:
    """Per-round median latencies (ms, batch 1) of every model, rounds in order."""

    per_round: dict[str, list[float]]

    def p50(self, label: str) -> float:
        """The model's median over rounds of its per-round median latency."""
        return statistics.median(self.per_round[label])

    def ratio(self, label: str, reference: str, *, seed: int = 0) -> RatioEstimate:
        """``label``'s latency over ``reference``'s: median of the per-round ratios, with a 95 % interval."""
        ratios = np.asarray(self.per_round[label]) / np.asarray(self.per_round[reference])
        rng = np.random.default_rng(seed)
        resampled = np.median(rng.choice(ratios, size=(BOOTSTRAP_RESAMPLES, len(ratios))), axis=1)
        low, high = np.percentile(resampled, [2.5, 97.5])
        return RatioEstimate(float(np.median(ratios)), float(low), float(high), len(ratios))


def time_alternating(
    models: Sequence[ModelUnderTest],
    sample: np.ndarray,
    *,
    rounds: int,
    iterations: int,
    settle: float = SETTLE_SECONDS,
    seed: int = 0,
) -> LatencyTable:
    """Time ``models`` at batch 1 on ``sample``: ``rounds`` shuffled alternations, ``iterations`` runs per model each.

    Args:
        models: the engines, with unique labels.
        sample: one preprocessed input ``(1, ...)``.
        rounds: alternations; the order is shuffled each round.
        iterations: timed runs per model and round (after ``bench_side_by_side``'s warm-up runs).
        settle: seconds to pause before each model, so that the previous engine's threads are idle.
        seed: seeds the shuffles.
    """
    if rounds < 1 or iterations < 1:
        raise ValueError("rounds and iterations must be at least 1")
    per_round: dict[str, list[float]] = {model.label: [] for model in models}
    if len(per_round) != len(models):
        raise ValueError("model labels must be unique")
    shuffler = random.Random(seed)
    for index in range(rounds):
        order = list(models)
        shuffler.shuffle(order)
        for model in order:
            time.sleep(settle)
            (figure,) = bench_side_by_side([model], sample, batch_sizes=[1], rounds=1, iterations=iterations)
            per_round[model.label].append(figure.p50_ms)
        log.debug("round %d: %s", index + 1, {k: round(v[-1], 2) for k, v in per_round.items()})
    return LatencyTable(per_round)
