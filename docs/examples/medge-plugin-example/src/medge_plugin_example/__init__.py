"""Example medge plugins: a percentile contrast stretch (preprocess) and a label renaming (postprocess).

Each entry point names a *factory*: medge calls it once with the plugin's
``settings`` from the model config and keeps the hook it returns. A factory
checks its settings and raises ``ValueError`` on a bad one, so a mistake
stops ``medge compile`` (and an appliance refuses the package) instead of
failing on every study. Hooks are shared by the runtime's threads, so they
keep no per-call state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from sdk.plugins import Classification, PostprocessEvent, PostprocessPlugin, PreprocessEvent, PreprocessPlugin

__all__ = ["contrast_stretch", "rename_labels"]


def contrast_stretch(settings: Mapping[str, Any]) -> PreprocessPlugin:
    """Stretch each image's intensities between two of its own percentiles onto [0, 1].

    Settings:
        low: the percentile mapped to 0 (default 1).
        high: the percentile mapped to 1 (default 99).

    A simple stand-in for a vendor's detector-specific contrast step. It runs
    after medge's own windowing, resizing and normalization, on the tensor the
    model will see, identically in calibration and on the appliance.
    """
    unknown = set(settings) - {"low", "high"}
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)} (known: high, low)")
    low, high = float(settings.get("low", 1.0)), float(settings.get("high", 99.0))
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"need 0 <= low < high <= 100, got low={low}, high={high}")

    def hook(event: PreprocessEvent) -> np.ndarray:
        x = event.tensor
        spatial = (2, 3) if event.spec.layout == "NCHW" else (1, 2)
        lo, hi = np.percentile(x, [low, high], axis=spatial, keepdims=True)
        span = hi - lo
        stretched = (x - lo) / np.where(span > 0, span, 1.0)
        return np.clip(stretched, 0.0, 1.0).astype(np.float32)

    return hook


def rename_labels(settings: Mapping[str, Any]) -> PostprocessPlugin:
    """Report the model's labels under the names the site's systems use.

    Settings:
        labels: a table of model label -> reported label, e.g.
            ``{ nodule = "pulmonary-nodule" }``; labels not in it keep their name.
    """
    mapping = settings.get("labels", {})
    if not isinstance(mapping, Mapping) or not all(
        isinstance(key, str) and isinstance(value, str) and value for key, value in mapping.items()
    ):
        raise ValueError('labels must be a table of label = "new name"')
    if len(set(mapping.values())) != len(mapping):
        raise ValueError("labels maps two labels onto one name")
    renamed = dict(mapping)

    def hook(event: PostprocessEvent) -> Classification:
        result = event.result
        scores = {renamed.get(label, label): score for label, score in result.scores.items()}
        if len(scores) != len(result.scores):
            raise ValueError(f"renaming {sorted(result.scores)} with {renamed} makes two labels one")
        return replace(result, label=renamed.get(result.label, result.label), scores=scores)

    return hook
