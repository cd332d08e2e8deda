"""Drift scores against calibration statistics (sdk/input_statistics.py)."""

from __future__ import annotations

import numpy as np
import pytest

from sdk.input_statistics import ChannelStatistics, InputStatistics, drift_score, drift_scores


def _statistics(layout: str, channels: int, rng: np.random.Generator) -> InputStatistics:
    return InputStatistics(
        layout=layout,  # type: ignore[arg-type]
        bin_edges=np.linspace(-2.0, 3.0, 65).tolist(),
        range_source="spec",
        samples=10,
        channels=[
            ChannelStatistics(mean=0.0, std=1.0, percentiles={}, histogram=rng.dirichlet(np.ones(64)).tolist())
            for _ in range(channels)
        ],
    )


@pytest.mark.parametrize(("layout", "shape"), [("NCHW", (7, 2, 24, 20)), ("NHWC", (7, 24, 20, 3))])
def test_drift_scores_of_a_batch_are_the_per_slice_scores(layout: str, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(5)
    stats = _statistics(layout, shape[1] if layout == "NCHW" else shape[3], rng)
    batch = rng.normal(0.5, 1.5, size=shape).astype(np.float32)  # values beyond both end bins too
    batch[0] = batch[0] * 0 + 0.25  # one constant slice
    batch[1].reshape(-1)[:65] = np.asarray(stats.bin_edges, dtype=np.float32)  # values on the bin edges
    expected = [drift_score(stats, batch[index : index + 1]) for index in range(len(batch))]
    assert drift_scores(stats, batch) == expected
    assert drift_scores(stats, batch[2]) == [drift_score(stats, batch[2])]  # one slice without the batch axis


def test_drift_scores_refuse_a_channel_mismatch() -> None:
    stats = _statistics("NCHW", 1, np.random.default_rng(1))
    with pytest.raises(ValueError, match="channel"):
        drift_scores(stats, np.zeros((2, 3, 8, 8), dtype=np.float32))
