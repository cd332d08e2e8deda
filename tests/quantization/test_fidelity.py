"""Fidelity metrics and the accuracy gate: hand-computed cases, sklearn as the AUC reference, determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from quantization.fidelity import GateResult, auc, bootstrap_ci, compare, sensitivity_specificity
from sdk.manifest import FidelityReport
from sdk.model_config import AccuracyGate

GATE = AccuracyGate()


# ----------------------------------------------------------------------------- AUC


def test_auc_hand_computed() -> None:
    # Positives 0.35 and 0.8 against negatives 0.1 and 0.4: 3 of 4 pairs ordered right.
    assert auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)


def test_auc_counts_ties_as_half() -> None:
    assert auc(np.array([0.5, 0.5]), np.array([0, 1])) == pytest.approx(0.5)
    # One positive tied with one of two negatives, above the other: (1 + 0.5) / 2.
    assert auc(np.array([0.2, 0.6, 0.6]), np.array([0, 0, 1])) == pytest.approx(0.75)


def test_auc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(7)
    for _ in range(200):
        size = int(rng.integers(2, 60))
        scores = rng.integers(0, 6, size) / 5.0  # few distinct values: many ties
        labels = rng.integers(0, 2, size)
        if labels.min() == labels.max():
            continue
        assert auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auc_of_one_class_is_nan() -> None:
    assert np.isnan(auc(np.array([0.1, 0.9]), np.array([1, 1])))


def test_auc_rejects_non_binary_labels() -> None:
    with pytest.raises(ValueError, match="0 or 1"):
        auc(np.array([0.1, 0.9]), np.array([0, 2]))


# ----------------------------------------------------------------------------- sensitivity / specificity


def test_sensitivity_specificity_at_threshold() -> None:
    scores = np.array([0.9, 0.6, 0.3, 0.7, 0.2, 0.1])
    labels = np.array([1, 1, 1, 0, 0, 0])
    sens, spec = sensitivity_specificity(scores, labels, 0.5)
    assert sens == pytest.approx(2 / 3)  # 0.3 missed
    assert spec == pytest.approx(2 / 3)  # 0.7 called
    # The decision is score >= threshold, as the runtime makes it.
    assert sensitivity_specificity(scores, labels, 0.6)[0] == pytest.approx(2 / 3)
    assert sensitivity_specificity(scores, labels, 0.3)[0] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- bootstrap


def test_bootstrap_is_vectorised_and_deterministic() -> None:
    rng = np.random.default_rng(3)
    scores = rng.random(300)
    labels = (scores + rng.normal(0, 0.3, 300) > 0.5).astype(int)
    calls = []

    def metric(s: np.ndarray, y: np.ndarray) -> np.ndarray:
        calls.append(s.shape)
        return np.array([auc(row, truth) for row, truth in zip(s, y, strict=True)])

    first = bootstrap_ci(metric, scores, labels, n=200, seed=11)
    second = bootstrap_ci(metric, scores, labels, n=200, seed=11)
    other = bootstrap_ci(metric, scores, labels, n=200, seed=12)
    assert calls[0] == (200, 300)  # every resample in one call
    assert first == second
    assert first != other
    assert first is not None
    low, high = first
    assert low < auc(scores, labels) < high
    assert high - low < 0.2


def test_bootstrap_ci_none_when_metric_never_defined() -> None:
    assert bootstrap_ci(lambda s: np.full(len(s), np.nan), np.arange(5.0), n=10) is None
    assert bootstrap_ci(lambda s: s.mean(axis=1), np.arange(5.0), n=0) is None


def test_bootstrap_rejects_wrong_metric_shape() -> None:
    with pytest.raises(ValueError, match="values for 10 resamples"):
        bootstrap_ci(lambda s: s.mean(), np.arange(5.0), n=10)


# ----------------------------------------------------------------------------- compare and the gate


def test_compare_hand_computed_single_label() -> None:
    reference = np.array([0.2, 0.6, 0.7, 0.45])
    candidate = np.array([0.3, 0.4, 0.71, 0.55])
    result = compare(reference, candidate, threshold=0.5, labels=None, gate=GATE, bootstrap=0)
    report = result.report
    assert isinstance(result, GateResult)
    assert isinstance(report, FidelityReport)
    assert report.samples == 4
    assert report.agreement == pytest.approx(0.5)  # sides of 0.5 differ for 0.6/0.4 and 0.45/0.55
    assert report.flip_rate == pytest.approx(0.5)
    assert report.max_abs_delta == pytest.approx(0.2)
    assert report.details["mean_abs_delta"] == pytest.approx((0.1 + 0.2 + 0.01 + 0.1) / 4)
    assert report.auc_reference is None and report.auc_compiled is None
    assert not result.passed
    assert result.failures == [
        "agreement 50.0 % < 99.0 %",
        "decisions flipped at the threshold 50.0 % > 1.0 % (2 of 4)",
    ]


def test_flips_are_counted_at_the_clinical_threshold_not_at_one_half() -> None:
    reference = np.array([0.2, 0.6, 0.7, 0.45])
    candidate = np.array([0.3, 0.4, 0.71, 0.55])
    report = compare(reference, candidate, threshold=0.65, labels=None, gate=GATE, bootstrap=0).report
    assert report.flip_rate == 0.0
    assert report.agreement == pytest.approx(0.5)


def test_identical_outputs_pass() -> None:
    scores = np.linspace(0.01, 0.99, 50)
    labels = (scores > 0.4).astype(int)
    result = compare(scores, scores.copy(), threshold=0.4, labels=labels, gate=GATE, bootstrap=100)
    assert result.passed and result.failures == []
    assert result.report.agreement == 1.0
    assert result.report.details["auc_drop"] == 0.0


def test_failure_sentences_never_print_equal_numbers() -> None:
    reference = np.r_[np.full(1990, 0.9), np.full(10, 0.1)]
    candidate = reference.copy()
    candidate[:21] = 0.1  # 21 of 2000 disagree: 98.95 %
    result = compare(reference, candidate, threshold=0.5, labels=None, gate=GATE, bootstrap=0)
    assert result.failures[0] == "agreement 98.95 % < 99.00 %"


def test_auc_drop_fails_the_gate_with_labels() -> None:
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 400)
    reference = np.clip(0.5 + 0.3 * (labels - 0.5) + rng.normal(0, 0.15, 400), 0, 1)
    # Same decisions at 0.5 and 0.3, but the ranking inside each side is scrambled.
    candidate = np.where(reference > 0.5, 0.75 + 0.2 * rng.random(400), 0.1 + 0.15 * rng.random(400))
    result = compare(reference, candidate, threshold=0.5, labels=labels, gate=GATE, bootstrap=200)
    report = result.report
    assert report.auc_reference == pytest.approx(roc_auc_score(labels, reference))
    assert report.auc_compiled == pytest.approx(roc_auc_score(labels, candidate))
    drop = report.auc_reference - report.auc_compiled
    assert drop > 0.01
    assert result.failures == [f"AUC drop {drop:.4f} > 0.0100"]
    low, high = report.details["auc_drop_ci"]
    assert low <= drop <= high
    for key in ("sensitivity_reference", "specificity_reference", "sensitivity_compiled", "specificity_compiled"):
        assert 0.0 <= report.details[key] <= 1.0
        ci = report.details[f"{key}_ci"]
        assert ci[0] <= report.details[key] <= ci[1]


def test_report_is_reproducible_and_json_ready() -> None:
    rng = np.random.default_rng(9)
    reference = rng.random(120)
    candidate = np.clip(reference + rng.normal(0, 0.01, 120), 0, 1)
    labels = (reference > 0.5).astype(int)
    first = compare(reference, candidate, threshold=0.5, labels=labels, gate=GATE)
    second = compare(reference, candidate, threshold=0.5, labels=labels, gate=GATE)
    assert first.report == second.report
    json.dumps(first.report.model_dump(mode="json"))  # goes into the manifest as is


def test_multi_label_agreement_is_argmax_and_flips_any_label() -> None:
    reference = {"nodule": np.array([0.9, 0.2, 0.6]), "mass": np.array([0.1, 0.7, 0.5])}
    candidate = {"nodule": np.array([0.8, 0.3, 0.4]), "mass": np.array([0.1, 0.7, 0.55])}
    result = compare(reference, candidate, threshold=[0.5, 0.6], labels=None, gate=GATE, bootstrap=0)
    report = result.report
    assert report.agreement == pytest.approx(2 / 3)  # third slice: nodule -> mass
    assert report.flip_rate == pytest.approx(1 / 3)  # third slice: nodule 0.6 -> 0.4 crosses 0.5
    assert report.details["labels"] == ["nodule", "mass"]


def test_multi_label_auc_is_the_macro_mean() -> None:
    rng = np.random.default_rng(2)
    truth = rng.integers(0, 2, (80, 2))
    scores = np.clip(truth * 0.4 + rng.random((80, 2)) * 0.6, 0, 1)
    report = compare(scores, scores, threshold=0.5, labels=truth, gate=GATE, bootstrap=50).report
    expected = np.mean([roc_auc_score(truth[:, i], scores[:, i]) for i in range(2)])
    assert report.auc_reference == pytest.approx(expected)
    assert len(report.details["sensitivity_reference"]) == 2


def test_one_class_ground_truth_reports_no_auc() -> None:
    scores = np.array([0.2, 0.7, 0.9])
    result = compare(scores, scores, threshold=0.5, labels=np.ones(3, dtype=int), gate=GATE, bootstrap=20)
    assert result.passed
    assert result.report.auc_reference is None
    assert "one class" in result.report.details["auc"]


def test_compare_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        compare(np.zeros(3), np.zeros(4), threshold=0.5, labels=None, gate=GATE)
    with pytest.raises(ValueError, match="labels must have shape"):
        compare(np.zeros(3), np.zeros(3), threshold=0.5, labels=np.zeros(4, dtype=int), gate=GATE)
    with pytest.raises(ValueError, match="differ from candidate labels"):
        compare({"a": np.zeros(2)}, {"b": np.zeros(2)}, threshold=0.5, labels=None, gate=GATE)
    with pytest.raises(ValueError, match="no samples"):
        compare(np.zeros(0), np.zeros(0), threshold=0.5, labels=None, gate=GATE)
