"""Low-shot evaluation: per-class sampling, planted clusters, mean/std over seeds."""

from __future__ import annotations

import numpy as np
import pytest

from selfsup.models import ConfigError
from selfsup.tasks.knn_probe import knn_probe
from selfsup.tasks.linear_probe import LinearClassifierConfig
from selfsup.tasks.lowshot import ONE_SHOT_COST, lowshot_probe, samples_per_class
from selfsup.tasks.svm_probe import svm_probe


def uneven_labels():
    """5 classes with 60 … 100 examples each, in shuffled order."""
    labels = np.repeat(np.arange(5), [60, 70, 80, 90, 100])
    return np.random.default_rng(0).permutation(labels)


@pytest.mark.parametrize("k", [1, 5, 10, 50])
def test_samples_per_class_draws_exactly_k_distinct_examples_of_every_class(k):
    labels = uneven_labels()
    indices = samples_per_class(labels, k, seed=3)
    assert indices.dtype.kind == "i"
    assert np.all(np.diff(indices) > 0)  # sorted and no duplicates
    assert indices.min() >= 0 and indices.max() < len(labels)
    np.testing.assert_array_equal(np.bincount(labels[indices], minlength=5), [k] * 5)


def test_samples_per_class_is_seeded_and_nested_over_k():
    labels = uneven_labels()
    np.testing.assert_array_equal(samples_per_class(labels, 5, 7), samples_per_class(labels, 5, 7))
    assert not np.array_equal(samples_per_class(labels, 5, 7), samples_per_class(labels, 5, 8))
    # One seed orders each class once, so the 1-shot sample lies inside the 5-shot one.
    assert set(samples_per_class(labels, 1, 7)) <= set(samples_per_class(labels, 5, 7))


def test_too_few_examples_raise_config_error_naming_the_class():
    labels = np.array([0] * 6 + [1] * 3 + [2] * 9)
    with pytest.raises(ConfigError, match="class 1 has 3 examples, fewer than k=5"):
        samples_per_class(labels, 5, 0)
    with pytest.raises(ConfigError, match="class 3 has 0 examples"):
        samples_per_class(labels, 2, 0, num_classes=4)
    with pytest.raises(ConfigError, match="k=0"):
        samples_per_class(labels, 0, 0)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        samples_per_class(labels, 1, 0, num_classes=2)


def planted_clusters(per_class_train, per_class_test, num_classes, dims, noise, seed):
    """Cluster c at 10·e_c plus N(0, noise²) per coordinate."""
    rng = np.random.default_rng(seed)
    centres = 10.0 * np.eye(num_classes, dims)

    def draw(per_class):
        labels = np.repeat(np.arange(num_classes), per_class)
        points = centres[labels] + rng.normal(scale=noise, size=(len(labels), dims))
        return points.astype(np.float32), labels

    return draw(per_class_train), draw(per_class_test)


@pytest.mark.parametrize("classifier", ["svm", "knn"])
def test_lowshot_on_planted_clusters_is_100_percent_for_every_k(classifier):
    (train_x, train_y), (test_x, test_y) = planted_clusters(60, 10, 4, 8, 0.5, seed=1)
    results = lowshot_probe(train_x, train_y, test_x, test_y, 4, seeds=(0, 1, 2),
                            classifier=classifier, log=lambda message: None)
    assert list(results) == [1, 5, 10, 50]
    for k, result in results.items():
        assert (result.mean, result.std, result.per_seed) == (100.0, 0.0, (100.0,) * 3), k


def test_lowshot_linear_on_planted_clusters_is_100_percent():
    # No pure-noise dimensions: the linear probe standardises with the k × C sample's own
    # statistics, which at k = 1 blow noise-only dimensions up to the informative ones' scale.
    (train_x, train_y), (test_x, test_y) = planted_clusters(10, 10, 3, 3, 0.5, seed=2)
    results = lowshot_probe(train_x, train_y, test_x, test_y, 3, shots=(1, 5), seeds=(0, 1),
                            classifier="linear", log=lambda message: None)
    for k, result in results.items():
        assert (result.mean, result.std, result.per_seed) == (100.0, 0.0, (100.0, 100.0)), k


def test_lowshot_mean_and_std_are_numpys_over_independent_per_seed_runs():
    # Overlapping clusters, so the seeds' samples give different accuracies.
    (train_x, train_y), (test_x, test_y) = planted_clusters(30, 40, 3, 6, 8.0, seed=3)
    seeds = (0, 1, 2, 3)
    svm = lowshot_probe(train_x, train_y, test_x, test_y, 3, shots=(1, 5), seeds=seeds,
                        classifier="svm", log=lambda message: None)
    knn = lowshot_probe(train_x, train_y, test_x, test_y, 3, shots=(1, 5), seeds=seeds,
                        classifier="knn", log=lambda message: None)
    for k in (1, 5):
        svm_top1, knn_top1 = [], []
        for seed in seeds:
            chosen = samples_per_class(train_y, k, seed)
            x, y = train_x[chosen], train_y[chosen]
            # k = 1 leaves no fold to validate on: the documented fixed cost; else 3-fold CV
            # (k = 5 >= 3 folds) over the default grid.
            if k == 1:
                svm_top1.append(svm_probe(x, y, test_x, test_y, costs=(ONE_SHOT_COST,),
                                          seed=seed).top1)
            else:
                svm_top1.append(svm_probe(x, y, test_x, test_y, folds=3, seed=seed).top1)
            neighbours = min(20, len(chosen))
            knn_top1.append(knn_probe(x, y, test_x, test_y, 3, ks=(neighbours,))[neighbours])
        for result, expected in ((svm[k], svm_top1), (knn[k], knn_top1)):
            assert result.per_seed == tuple(expected)
            assert result.mean == pytest.approx(np.mean(expected), abs=1e-12)
            assert result.std == pytest.approx(np.std(expected), abs=1e-12)
            assert result.std > 0


def test_unknown_classifier_lists_the_valid_ones():
    x, y = np.ones((4, 2), np.float32), np.array([0, 1, 0, 1])
    with pytest.raises(ConfigError, match="unknown low-shot classifier 'forest'; valid names: "
                                          "svm, knn, linear"):
        lowshot_probe(x, y, x, y, 2, classifier="forest")
    with pytest.raises(ConfigError, match="class 0 has 2 examples, fewer than k=5"):
        lowshot_probe(x, y, x, y, 2, shots=(1, 5))
    with pytest.raises(ConfigError, match="learning rates"):
        lowshot_probe(x, y, x, y, 2, shots=(1,), classifier="linear",
                      linear_config=LinearClassifierConfig(learning_rates=(0.1, 0.2)))
