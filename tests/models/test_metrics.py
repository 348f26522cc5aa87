"""Metrics against scikit-learn on known vectors, and the subject-level bootstrap."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    brier_score_loss,
    confusion_matrix,
    roc_auc_score,
)

from oaimodels import metrics as M

# A hand-checkable case: scores 0.9 (pos), 0.8 (neg), 0.7 (pos), 0.1 (neg)
# AP = 1/2 * 1 + 1/2 * 2/3 = 0.8333..., AUC = 3 of 4 pairs ordered = 0.75
Y_SMALL = np.array([1, 0, 1, 0])
S_SMALL = np.array([0.9, 0.8, 0.7, 0.1])


def test_ap_and_auc_hand_computed() -> None:
    assert M.average_precision(Y_SMALL, S_SMALL) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert M.roc_auc(Y_SMALL, S_SMALL) == pytest.approx(0.75)


def test_ap_with_tied_scores_matches_sklearn_hand_value() -> None:
    # Two knees tie at 0.5 (one pos, one neg): they form one threshold.
    y = np.array([1, 1, 0, 0])
    s = np.array([0.9, 0.5, 0.5, 0.1])
    # thresholds: 0.9 -> P=1 R=.5 ; 0.5 -> P=2/3 R=1  => AP = .5*1 + .5*2/3
    assert M.average_precision(y, s) == pytest.approx(0.5 + 0.5 * 2 / 3)
    # AUC: pairs (pos, neg): (0.9,0.5)=1 (0.9,0.1)=1 (0.5,0.5)=0.5 (0.5,0.1)=1 -> 3.5/4
    assert M.roc_auc(y, s) == pytest.approx(3.5 / 4)


@pytest.mark.parametrize("seed", range(6))
def test_ap_auc_equal_sklearn_on_random_vectors_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 200
    y = (rng.random(n) < 0.3).astype(int)
    # Rounded scores create many ties, the hard case for AP.
    s = np.round(rng.random(n) * 0.6 + 0.4 * y * rng.random(n), 1 + seed % 2)
    assert M.average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert M.roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_undefined_metrics_are_nan() -> None:
    assert np.isnan(M.average_precision(np.zeros(3), np.array([0.1, 0.2, 0.3])))
    assert np.isnan(M.roc_auc(np.ones(3), np.array([0.1, 0.2, 0.3])))


def test_balanced_accuracy_and_confusion_match_sklearn() -> None:
    t = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 0])
    p = np.array([0, 1, 0, 2, 1, 0, 2, 1, 2, 0])
    assert M.balanced_accuracy(t, p) == pytest.approx(balanced_accuracy_score(t, p))
    # by hand: recalls 4/5? none: idx0..3,9 -> preds 0,1,0,2,0 -> 3/5; fast 1/2; slow 2/3
    assert M.balanced_accuracy(t, p) == pytest.approx((3 / 5 + 1 / 2 + 2 / 3) / 3)
    np.testing.assert_array_equal(M.confusion(t, p), confusion_matrix(t, p, labels=[0, 1, 2]))


def test_brier_and_reliability_match_sklearn() -> None:
    rng = np.random.default_rng(3)
    p = rng.random(300)
    y = (rng.random(300) < p).astype(int)
    assert M.brier_score(y, p) == pytest.approx(brier_score_loss(y, p))
    curve = M.reliability_curve(y, p, n_bins=10)
    obs, pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    np.testing.assert_allclose(curve.observed, obs)
    np.testing.assert_allclose(curve.mean_predicted, pred)
    assert sum(curve.count) == 300


def test_multiclass_brier_by_hand() -> None:
    probs = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    # knee 0 perfect (0); knee 1 truth slow: 0.25 + 0.25 + 1 = 1.5 -> mean 0.75
    assert M.multiclass_brier_score(np.array([0, 2]), probs) == pytest.approx(0.75)


def test_class_indices_rejects_unknown_label() -> None:
    np.testing.assert_array_equal(M.class_indices(["none", "slow", "fast"]), [0, 2, 1])
    with pytest.raises(ValueError, match="'medium'"):
        M.class_indices(["none", "medium"])


def _cohort(n_subjects: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    subjects = np.repeat(np.arange(100, 100 + n_subjects), 2)  # two knees each
    y = (rng.random(subjects.size) < 0.25).astype(int)
    return subjects, y


def test_resamples_take_whole_subjects() -> None:
    subjects, y = _cohort(30)
    for idx in M.subject_resamples(subjects, y, n_resamples=50, seed=1):
        drawn, knee_counts = np.unique(subjects[idx], return_counts=True)
        # each knee of a drawn subject appears as often as its other knee
        for subj in drawn:
            knees_idx = idx[subjects[idx] == subj]
            _, per_knee = np.unique(knees_idx, return_counts=True)
            assert per_knee.size == 2 and per_knee[0] == per_knee[1]
        assert np.all(knee_counts % 2 == 0)


def test_resamples_are_stratified_by_subject_progression() -> None:
    subjects, y = _cohort(40, seed=2)
    pos_subjects = np.unique(subjects[y == 1]).size
    has_pos = {s: y[subjects == s].max() for s in np.unique(subjects)}
    for idx in M.subject_resamples(subjects, y, n_resamples=20, seed=0):
        # subject draws (pairs of knees) of progressing subjects = their number in the cohort
        drawn_pos_subject_draws = sum(has_pos[s] for s in subjects[idx]) // 2
        assert drawn_pos_subject_draws == pos_subjects
        assert idx.size == subjects.size


def test_bootstrap_reproducible_for_a_seed_and_differs_across_seeds() -> None:
    subjects, y = _cohort(60, seed=4)
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([2, 1, 1], size=y.size)
    classes = np.where(y == 1, 1 + (rng.random(y.size) < 0.3), 0)
    a = M.score_predictions(classes, probs, subjects, n_resamples=200, seed=0)
    b = M.score_predictions(classes, probs, subjects, n_resamples=200, seed=0)
    c = M.score_predictions(classes, probs, subjects, n_resamples=200, seed=1)
    assert a["ap_sd"] == b["ap_sd"] and a["roc_auc_ci_low"] == b["roc_auc_ci_low"]
    assert a["ap_sd"] != c["ap_sd"]
    assert a["ap"] == pytest.approx(average_precision_score(y, probs[:, 1] + probs[:, 2]))
    assert 0 < a["ap_sd"] < 0.2 and a["ap_ci_low"] < a["ap"] < a["ap_ci_high"]
    assert a["roc_auc_ci"] == [a["roc_auc_ci_low"], a["roc_auc_ci_high"]]
    json.dumps(a)  # JSON-able as written to metrics.json
    assert a["n_knees"] == 120 and a["n_subjects"] == 60
    assert a["prevalence"] == pytest.approx(y.mean())


def test_bootstrap_sd_by_hand_on_a_constant_statistic() -> None:
    est = M.bootstrap(lambda i: 1.0, 5, [np.arange(5)] * 10)
    assert est.value == 1.0 and est.sd == 0.0 and est.n_valid == 10


def test_score_predictions_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="probs"):
        M.score_predictions(np.zeros(3, int), np.zeros((3, 2)), np.arange(3))
