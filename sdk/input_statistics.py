"""What a model's inputs looked like at calibration, and how far a study drifts from it.

The quantization toolchain records :class:`InputStatistics` of the
preprocessed calibration slices in the package; the runtime compares each
study's preprocessed input with them (:func:`drift_score`), so a protocol
change on a scanner is seen before it silently degrades results.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from sdk.preprocess_spec import PreprocessSpec

__all__ = [
    "DRIFT_THRESHOLD",
    "PERCENTILES",
    "ChannelStatistics",
    "InputStatistics",
    "drift_score",
    "drift_scores",
    "input_statistics",
]

DRIFT_THRESHOLD = 0.5
"""Suggested :func:`drift_score` above which a study does not look like the calibration data.

Measured on phantom chest CT under a lung window: held-back slices of other
patients score 0.08-0.2; the same slices under a soft-tissue or bone window
score about 0.9, and MR images 0.8 or more.
"""

PERCENTILES = (1, 5, 50, 95, 99)
"""Percentiles recorded per channel by :func:`input_statistics`."""


class ChannelStatistics(BaseModel):
    """Intensity statistics of one input channel over the calibration slices."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mean: float
    std: float
    percentiles: dict[str, float]
    histogram: list[float]


class InputStatistics(BaseModel):
    """What the model's inputs looked like at calibration, to compare each study against.

    Attributes:
        layout: ``NCHW`` or ``NHWC``, telling which axis is the channel.
        bin_edges: the histogram's fixed bin edges (values outside fall into the end bins).
        range_source: ``spec`` when the edges come from the preprocessing spec's
            output range, ``data`` when from the calibration data's 0.1/99.9 percentiles.
        samples: how many slices the statistics cover.
        channels: per channel: mean, std, percentiles (1, 5, 50, 95, 99) and the
            histogram as fractions summing to 1.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    layout: Literal["NCHW", "NHWC"]
    bin_edges: list[float]
    range_source: Literal["spec", "data"]
    samples: int
    channels: list[ChannelStatistics]


def input_statistics(tensors: np.ndarray, spec: PreprocessSpec, *, bins: int = 64) -> InputStatistics:
    """Per-channel histograms, mean, std and percentiles of preprocessed slices.

    Args:
        tensors: slices as :func:`~sdk.preprocessing.preprocess` returns them, ``(N, C, H, W)`` or ``(N, H, W, C)``.
        spec: the preprocessing spec that made them (layout and expected value range).
        bins: number of histogram bins.
    """
    channels = _channels_first(tensors, spec.layout)
    low_high = _spec_range(spec)
    source: Literal["spec", "data"] = "spec"
    if low_high is None:
        source = "data"
        low, high = (float(v) for v in np.percentile(channels, (0.1, 99.9)))
        if high <= low:
            high = low + 1.0
        low_high = (low, high)
    edges = np.linspace(low_high[0], low_high[1], bins + 1)
    stats = []
    for channel in channels:
        flat = channel.reshape(-1)
        values = np.percentile(flat, PERCENTILES)
        stats.append(
            ChannelStatistics(
                mean=float(flat.mean(dtype=np.float64)),
                std=float(flat.std(dtype=np.float64)),
                percentiles={str(p): float(v) for p, v in zip(PERCENTILES, values, strict=True)},
                histogram=_histogram(flat, edges).tolist(),
            )
        )
    return InputStatistics(
        layout=spec.layout,
        bin_edges=edges.tolist(),
        range_source=source,
        samples=int(channels.shape[1]),
        channels=stats,
    )


def drift_score(stats: InputStatistics, tensor: np.ndarray) -> float:
    """How different ``tensor``'s intensities are from the calibration data's, in [0, 1].

    The Jensen-Shannon distance (base 2) between the tensor's histogram and the
    calibration histogram, on the same bins, worst channel: 0 for the same
    distribution, 1 for disjoint ones. Symmetric and bounded, unlike KL or PSI,
    so a single threshold (:data:`DRIFT_THRESHOLD`) serves every model.

    Args:
        stats: the calibration statistics.
        tensor: one slice ``(C, H, W)``/``(H, W, C)`` or several ``(N, ...)``, in ``stats.layout``.
    """
    array = np.asarray(tensor, dtype=np.float32)
    if array.ndim == 3:
        array = array[np.newaxis]
    channels = _channels_first(array, stats.layout)
    if channels.shape[0] != len(stats.channels):
        raise ValueError(f"tensor has {channels.shape[0]} channel(s), the statistics {len(stats.channels)}")
    edges = np.asarray(stats.bin_edges)
    worst = 0.0
    for channel, reference in zip(channels, stats.channels, strict=True):
        worst = max(worst, _js_distance(_histogram(channel.reshape(-1), edges), np.asarray(reference.histogram)))
    return worst


def drift_scores(stats: InputStatistics, batch: np.ndarray) -> list[float]:
    """:func:`drift_score` of each slice of a batch, the histograms of all slices binned in one pass.

    The same values as calling :func:`drift_score` slice by slice, for a
    fraction of the cost on multi-frame instances.

    Args:
        stats: the calibration statistics.
        batch: slices ``(N, ...)`` (or one slice ``(C, H, W)``/``(H, W, C)``), in ``stats.layout``.
    """
    array = np.asarray(batch, dtype=np.float32)
    if array.ndim == 3:
        array = array[np.newaxis]
    channels = _channels_first(array, stats.layout)
    if channels.shape[0] != len(stats.channels):
        raise ValueError(f"tensor has {channels.shape[0]} channel(s), the statistics {len(stats.channels)}")
    slices = channels.shape[1]
    edges = np.asarray(stats.bin_edges)
    worst = [0.0] * slices
    for channel, reference in zip(channels, stats.channels, strict=True):
        histograms = _histograms(channel.reshape(slices, -1), edges)
        calibration = np.asarray(reference.histogram)
        for index in range(slices):
            worst[index] = max(worst[index], _js_distance(histograms[index], calibration))
    return worst


def _channels_first(tensors: np.ndarray, layout: str) -> np.ndarray:
    """``(C, N, H, W)`` view-or-copy of a batch, whatever its layout."""
    if tensors.ndim != 4:
        raise ValueError(f"expected a batch of slices (rank 4), got shape {tensors.shape}")
    return np.moveaxis(tensors, 1 if layout == "NCHW" else 3, 0)


def _spec_range(spec: PreprocessSpec) -> tuple[float, float] | None:
    """The output range ``spec`` guarantees, if it guarantees one (``unit`` maps onto [0, 1] before mean/std)."""
    if spec.normalization.mode != "unit":
        return None
    mean, std = spec.normalization.mean, spec.normalization.std
    return (0.0 - mean) / std, (1.0 - mean) / std


def _histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Fractions per bin; values outside the edges count in the end bins (bincount: ~10x np.histogram)."""
    bins = len(edges) - 1
    scale = bins / (edges[-1] - edges[0])
    index = ((values.astype(np.float64, copy=False) - edges[0]) * scale).astype(np.int64)
    np.clip(index, 0, bins - 1, out=index)
    counts = np.bincount(index, minlength=bins).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def _histograms(rows: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """:func:`_histogram` of each row of ``rows`` ``(N, values)``, with one ``bincount`` for all of them."""
    count, bins = rows.shape[0], len(edges) - 1
    scale = bins / (edges[-1] - edges[0])
    index = ((rows.astype(np.float64, copy=False) - edges[0]) * scale).astype(np.int64)
    np.clip(index, 0, bins - 1, out=index)
    index += (np.arange(count, dtype=np.int64) * bins)[:, np.newaxis]
    counts = np.bincount(index.reshape(-1), minlength=count * bins).astype(np.float64).reshape(count, bins)
    return counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0)


def _js_distance(p: np.ndarray, q: np.ndarray) -> float:
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / m[mask])))

    return math.sqrt(max(0.0, 0.5 * kl(p) + 0.5 * kl(q)))
