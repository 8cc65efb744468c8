"""Calibration and the out-of-scope threshold are fitted, and recover what they should on synthetic data."""

from __future__ import annotations

import numpy as np

from models.calibrate import (
    expected_calibration_error,
    fit_oos_threshold,
    fit_temperature,
    max_in_scope_logit,
    softmax,
)


def test_temperature_recovers_the_generating_temperature():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 3, size=(4000, 5))
    y = np.array([rng.choice(5, p=p) for p in softmax(true_logits)])
    # A model that is over-confident by a factor of 2.5: the fitted temperature should undo it.
    t = fit_temperature(true_logits * 2.5, y)
    assert 2.2 < t < 2.8
    assert expected_calibration_error(softmax(true_logits * 2.5 / t), y) < expected_calibration_error(
        softmax(true_logits * 2.5), y)


def test_ece_is_zero_for_perfectly_calibrated_certainty():
    probs = np.eye(3)[[0, 1, 2, 0]]
    assert expected_calibration_error(probs, np.array([0, 1, 2, 0])) == 0.0
    assert expected_calibration_error(probs, np.array([1, 1, 2, 0])) == 0.25


def test_oos_threshold_is_the_in_scope_rejection_quantile():
    rng = np.random.default_rng(1)
    ins = rng.normal(10, 1, 2000)
    oos = rng.normal(5, 1, 60)
    conf = np.concatenate([ins, oos])
    is_oos = np.r_[np.zeros(2000, bool), np.ones(60, bool)]
    thr, info = fit_oos_threshold(conf, is_oos, max_in_scope_rejection=0.01)
    assert abs(thr - np.quantile(ins, 0.01)) < 1e-9
    assert info["in_scope_rejected"] <= 0.011 and info["oos_recall"] > 0.95
    # Youden's optimum is reported (between the clusters) but does not move the threshold.
    assert 6 < info["youden_threshold_not_used"] < 9
    thr5, _ = fit_oos_threshold(conf, is_oos, max_in_scope_rejection=0.05)
    assert thr5 > thr


def test_rejection_rate_out_of_range_is_refused():
    import pytest

    with pytest.raises(ValueError):
        fit_oos_threshold(np.array([1.0, 2.0]), np.array([False, True]), max_in_scope_rejection=0.7)


def test_no_oos_rows_means_no_threshold():
    thr, info = fit_oos_threshold(np.array([1.0, 2.0]), np.array([False, False]))
    assert thr == float("-inf") and "no threshold" in info["note"]


def test_max_in_scope_logit_ignores_the_oos_column():
    logits = np.array([[1.0, 9.0, 2.0], [3.0, 0.0, 4.0]])
    assert max_in_scope_logit(logits, 1).tolist() == [2.0, 4.0]
    assert max_in_scope_logit(logits, None).tolist() == [9.0, 4.0]
