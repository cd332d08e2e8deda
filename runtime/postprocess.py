"""Post-processing: raw model outputs → a labelled, thresholded result with a location.

Classification models give one score per label; a location output (a
normalised ``(row, column)`` over the model input) is mapped back to the
source image's pixels and, with the image plane attributes, to patient
coordinates in millimetres. A device maker's postprocess plugin
(:mod:`sdk.plugins`) may then change each image's result
(:func:`apply_plugin`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
from pydicom import Dataset

from sdk.errors import EngineError
from sdk.model_config import ModelConfig
from sdk.plugins import Classification, PostprocessEvent, PostprocessPlugin

__all__ = ["Classification", "apply_plugin", "classify", "pixel_to_patient", "series_result"]


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-values))


def pixel_to_patient(ds: Dataset, row: float, column: float) -> tuple[float, float, float] | None:
    """Patient coordinates (mm) of a pixel position, or ``None`` without image-plane attributes.

    PS3.3 C.7.6.2.1.1: P = S + X·Δc·column + Y·Δr·row, with X and Y the row
    and column direction cosines and (Δr, Δc) the pixel spacing.
    """
    try:
        origin = np.asarray(ds.ImagePositionPatient, dtype=float)
        cosines = np.asarray(ds.ImageOrientationPatient, dtype=float)
        spacing_row, spacing_col = (float(v) for v in ds.PixelSpacing)
    except (AttributeError, ValueError, TypeError):
        return None
    if origin.shape != (3,) or cosines.shape != (6,):
        return None
    point = origin + cosines[:3] * spacing_col * column + cosines[3:] * spacing_row * row
    return (round(float(point[0]), 2), round(float(point[1]), 2), round(float(point[2]), 2))


def classify(outputs: Mapping[str, np.ndarray], config: ModelConfig, index: int, ds: Dataset) -> Classification:
    """The result for image ``index`` of a batch.

    Raises:
        EngineError: an output the config names is missing or has the wrong shape.
    """
    try:
        raw = np.asarray(outputs[config.outputs.scores][index], dtype=np.float64).reshape(-1)
    except (KeyError, IndexError) as exc:
        raise EngineError(f"model output {config.outputs.scores!r} missing or too short: {exc}") from exc
    if raw.size != len(config.labels):
        raise EngineError(f"output {config.outputs.scores!r} has {raw.size} scores for {len(config.labels)} labels")
    probabilities = _sigmoid(raw) if config.outputs.score_kind == "logit" else raw
    scores = {label: float(p) for label, p in zip(config.labels, probabilities, strict=True)}
    label = max(scores, key=lambda name: scores[name])
    threshold = config.thresholds[label]
    positive = scores[label] >= threshold
    row = column = None
    patient = None
    if config.outputs.location and config.outputs.location in outputs:
        where = np.asarray(outputs[config.outputs.location][index], dtype=np.float64).reshape(-1)
        rows, columns = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
        if where.size >= 2 and rows and columns:
            # The location is normalised over the image extent; pixel centres sit at half-pixel offsets.
            row = float(np.clip(where[0], 0, 1) * rows - 0.5)
            column = float(np.clip(where[1], 0, 1) * columns - 0.5)
            patient = pixel_to_patient(ds, row, column) if positive else None
    return Classification(label, scores[label], scores, threshold, positive, row, column, patient)


def apply_plugin(hook: PostprocessPlugin, name: str, event: PostprocessEvent) -> Classification:
    """Run a postprocess plugin on one image's result and hold what it returns to the contract.

    Raises:
        EngineError: the plugin raised, or returned something other than a
            :class:`Classification` with a label, finite scores and a threshold within [0, 1].
    """
    try:
        result = hook(event)
    except Exception as exc:  # the plugin's failure is this instance's failure, not the service's
        raise EngineError(f"postprocess plugin {name!r} failed: {exc!r}", field="postprocessing.plugin") from exc
    problem = _contract_problem(result)
    if problem:
        raise EngineError(f"postprocess plugin {name!r} returned {problem}", field="postprocessing.plugin")
    return result


def _contract_problem(result: object) -> str | None:
    if not isinstance(result, Classification):
        return f"{type(result).__name__}, not a Classification"
    if not isinstance(result.label, str) or not result.label:
        return f"a Classification without a label ({result.label!r})"
    numbers = [result.score, result.threshold, *result.scores.values()]
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in numbers):
        return "a Classification whose score, scores or threshold are not finite Python floats"
    if not 0.0 <= result.threshold <= 1.0:
        return f"a threshold of {result.threshold}, outside [0, 1]"
    return None


def series_result(results: Sequence[Classification]) -> tuple[int, Classification]:
    """A series' result from its images' results, and the index of the image that decides it.

    The deciding image is a positive one if any is, the one furthest above
    (or least below) its label's threshold; the series takes its label,
    decision and location (so a reader can go to that slice), with each
    label's score the maximum over the series.

    Raises:
        ValueError: no results.
    """
    if not results:
        raise ValueError("a series result needs at least one image result")
    index = max(range(len(results)), key=lambda i: (results[i].positive, results[i].score - results[i].threshold))
    best = results[index]
    scores = {label: max(r.scores.get(label, 0.0) for r in results) for label in best.scores}
    return index, replace(best, scores=scores)
