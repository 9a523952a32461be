"""Linear-SVM probe: the cross-validated cost on a hand-worked case, separable data, checks."""

from __future__ import annotations

import numpy as np
import pytest

from selfsup.models import ConfigError
from selfsup.tasks.svm_probe import svm_probe


def imbalanced_two_points(eps=0.1):
    """12 copies of [1, ε] (class 0) and 6 of [1, -ε] (class 1)."""
    x = np.array([[1.0, eps]] * 12 + [[1.0, -eps]] * 6, np.float32)
    return x, np.array([0] * 12 + [1] * 6)


def test_grid_search_picks_the_cost_a_hand_worked_case_requires():
    x, y = imbalanced_two_points()
    result = svm_probe(x, y, x, y, costs=(1e4, 1e-4, 1e3), folds=3, seed=0)
    # Stratified 3-fold: every held-out fold has 4 class-0 and 2 class-1 points.
    #  * C → 0: the primal minimiser is w ≈ 2C Σ_i y_i [x_i, 1] (first order in C, the bias
    #    being liblinear's regularised constant feature). Its decision on a point x is
    #    2C Σ_i y_i (x_i·x + 1); on the fold's 8 + 4 training points, with x_0·x_1 = 0.98, that
    #    is ±2C(8·1.98 − 4·2) = ±2C·7.84 on a class-1 point and ±2C(8·2 − 4·1.98) on a class-0
    #    point — the same sign, so every point gets the majority class: 4/6 per fold.
    #  * C large: the two points are linearly separable, so the squared-hinge SVM tends to the
    #    hard-margin separator: 6/6 per fold.
    majority_share = 100.0 * 4 / 6
    assert result.cv_top1 == pytest.approx({1e-4: majority_share, 1e3: 100.0, 1e4: 100.0},
                                           abs=1e-9)
    # 1e3 and 1e4 tie at 100%: the smaller cost (stronger regularisation) wins.
    assert result.cost == 1e3
    assert result.top1 == 100.0
    assert result.num_features == 2


def test_svm_on_separable_clusters_is_100_percent():
    rng = np.random.default_rng(0)
    centres = 5.0 * np.eye(3, 12)
    train_y, test_y = np.repeat(np.arange(3), 30), np.repeat(np.arange(3), 10)
    train_x = centres[train_y] + rng.normal(scale=0.3, size=(90, 12))
    test_x = centres[test_y] + rng.normal(scale=0.3, size=(30, 12))
    result = svm_probe(train_x, train_y, test_x, test_y, seed=1)
    assert result.top1 == 100.0
    assert result.cv_top1[result.cost] == 100.0
    assert result.num_features == 12


def test_one_cost_skips_cross_validation():
    x, y = imbalanced_two_points()
    result = svm_probe(x, y, x, y, costs=(1e3,))
    assert (result.cost, result.cv_top1, result.top1) == (1e3, {}, 100.0)


def test_svm_rejects_bad_labels_and_settings():
    x, y = imbalanced_two_points()
    with pytest.raises(ConfigError, match="at least 2 classes"):
        svm_probe(x, np.zeros(18, np.int64), x, y)
    with pytest.raises(ConfigError, match="class 1 has 2 train examples, fewer than folds=3"):
        svm_probe(x[:8], np.array([0] * 6 + [1] * 2), x, y)
    with pytest.raises(ConfigError, match="folds >= 2"):
        svm_probe(x, y, x, y, folds=1)
    with pytest.raises(ConfigError, match="cost > 0"):
        svm_probe(x, y, x, y, costs=(1.0, 0.0))
    with pytest.raises(ConfigError, match="cost > 0"):
        svm_probe(x, y, x, y, costs=())
    with pytest.raises(ValueError, match="one label per feature"):
        svm_probe(x, y[:5], x, y)
    with pytest.raises(ValueError, match="test features"):
        svm_probe(x, y, np.ones((3, 4)), y[:3])
