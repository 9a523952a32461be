"""Weighted kNN probe: chunked search vs a brute-force loop, planted clusters, identities."""

from __future__ import annotations

import math

import numpy as np
import pytest

from selfsup.models import ConfigError
from selfsup.tasks.knn_probe import knn_predict, knn_probe


def brute_force_weighted_knn(train_x, train_y, test_x, num_classes, k, temperature):
    """Wu et al. 2018's weighted kNN written as loops: cosine similarity to every train point,
    sort, take the k best, add exp(s / τ) to each neighbour's class, lowest class wins ties."""
    predictions = []
    for query in test_x:
        sims = []
        for point in train_x:
            sims.append(float(np.dot(query, point))
                        / (np.linalg.norm(query) * np.linalg.norm(point)))
        order = sorted(range(len(train_x)), key=lambda i: -sims[i])[:k]
        votes = [0.0] * num_classes
        for i in order:
            votes[int(train_y[i])] += math.exp(sims[i] / temperature)
        predictions.append(max(range(num_classes), key=lambda c: (votes[c], -c)))
    return np.array(predictions)


@pytest.mark.parametrize(("query_batch", "bank_chunk"), [(5, 9), (7, 40), (1024, 8192)])
def test_chunked_knn_matches_brute_force_loops(query_batch, bank_chunk):
    rng = np.random.default_rng(0)
    train_x = rng.normal(size=(61, 8)).astype(np.float32)
    train_y = rng.integers(0, 4, 61)
    test_x = rng.normal(size=(23, 8)).astype(np.float32)
    ks = (1, 3, 7, 25)
    # Batches and chunks smaller than the data and not dividing it: chunks of 9 are merged
    # whole into the running top-25 (cut back after chunks 3 … 7, the last one short); chunks
    # of 40 are first cut to their own top-25; one chunk and one batch is the plain search.
    predictions = knn_predict(train_x, train_y, test_x, 4, ks=ks, temperature=0.07,
                              query_batch=query_batch, bank_chunk=bank_chunk)
    for k in ks:
        expected = brute_force_weighted_knn(train_x, train_y, test_x, 4, k, 0.07)
        np.testing.assert_array_equal(predictions[k], expected, err_msg=f"k={k}")


def test_k_above_train_size_is_clipped_to_every_train_point_voting():
    rng = np.random.default_rng(1)
    train_x = rng.normal(size=(12, 5)).astype(np.float32)
    train_y = rng.integers(0, 3, 12)
    test_x = rng.normal(size=(9, 5)).astype(np.float32)
    predictions = knn_predict(train_x, train_y, test_x, 3, ks=(200,), temperature=0.5,
                              query_batch=4, bank_chunk=5)
    expected = brute_force_weighted_knn(train_x, train_y, test_x, 3, 12, 0.5)
    np.testing.assert_array_equal(predictions[200], expected)


def planted_clusters(per_class_train, per_class_test, num_classes, dims, seed):
    """Cluster c sits at 10·e_c plus N(0, 0.1²) noise: same-cluster cosine ≈ 1, other ≈ 0."""
    rng = np.random.default_rng(seed)
    centres = 10.0 * np.eye(num_classes, dims)

    def draw(per_class):
        labels = np.repeat(np.arange(num_classes), per_class)
        points = centres[labels] + rng.normal(scale=0.1, size=(len(labels), dims))
        return points.astype(np.float32), labels

    return draw(per_class_train), draw(per_class_test)


def test_knn_on_planted_clusters_is_exactly_90_percent_with_10_percent_flipped_labels():
    (train_x, train_y), (test_x, test_y) = planted_clusters(20, 10, 5, 16, seed=2)
    # 5 of the 50 test labels (10%) are moved to another class: every prediction is the true
    # cluster (each cluster's 20 train points outvote the rest by ~e^14 at τ = 0.07), so
    # exactly those 5 are wrong: 45 / 50 = 90%.
    flipped = test_y.copy()
    wrong = np.array([0, 13, 26, 39, 49])
    flipped[wrong] = (flipped[wrong] + 1) % 5
    accuracy = knn_probe(train_x, train_y, test_x, flipped, 5, ks=(1, 20, 200),
                         query_batch=8, bank_chunk=16)
    assert accuracy == {1: 90.0, 20: 90.0, 200: 90.0}
    assert knn_probe(train_x, train_y, test_x, test_y, 5, ks=(20,)) == {20: 100.0}


def one_nearest_neighbour(train_x, train_y, test_x):
    """1-NN by cosine similarity over the full similarity matrix."""
    train = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    test = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
    return train_y[np.argmax(test.astype(np.float64) @ train.T.astype(np.float64), axis=1)]


def test_tiny_temperature_turns_weighted_knn_into_one_nearest_neighbour():
    rng = np.random.default_rng(3)
    train_x = rng.normal(size=(80, 6)).astype(np.float32)
    train_y = rng.integers(0, 5, 80)
    test_x = rng.normal(size=(40, 6)).astype(np.float32)
    expected = one_nearest_neighbour(train_x, train_y, test_x)
    # The nearest neighbour's weight is 1 after the max shift; one at a similarity gap g weighs
    # exp(-g / 1e-5), negligible for any gap float32 resolves.
    predictions = knn_predict(train_x, train_y, test_x, 5, ks=(1, 5, 50, 80),
                              temperature=1e-5, query_batch=16, bank_chunk=32)
    for k, predicted in predictions.items():
        np.testing.assert_array_equal(predicted, expected, err_msg=f"k={k}")
    # With k = 1 the temperature does not matter.
    for temperature in (0.07, 1.0, 100.0):
        np.testing.assert_array_equal(
            knn_predict(train_x, train_y, test_x, 5, ks=(1,), temperature=temperature)[1],
            expected)


def test_a_vote_tie_goes_to_the_lowest_class_index():
    # [1, 1] and [1, -1] have the same cosine similarity 1/√2 to the query [1, 0].
    train_x = np.array([[1.0, 1.0], [1.0, -1.0]], np.float32)
    query = np.array([[1.0, 0.0]], np.float32)
    for labels in ([3, 1], [1, 3]):
        predictions = knn_predict(train_x, np.array(labels), query, 4, ks=(2,))
        assert predictions[2].tolist() == [1]


def test_knn_rejects_bad_inputs():
    x, y = np.ones((4, 3), np.float32), np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="test features"):
        knn_probe(x, y, np.ones((2, 5), np.float32), np.array([0, 1]), 2)
    with pytest.raises(ValueError, match="train label"):
        knn_probe(x, y[:3], x, y, 2)
    with pytest.raises(ValueError, match="test label"):
        knn_probe(x, y, x, y[:3], 2)
    with pytest.raises(ValueError, match="empty"):
        knn_probe(np.ones((0, 3), np.float32), np.array([], np.int64), x, y, 2)
    with pytest.raises(ValueError, match="labels must lie"):
        knn_probe(x, np.array([0, 1, 2, 1]), x, y, 2)
    with pytest.raises(ConfigError, match="k >= 1"):
        knn_probe(x, y, x, y, 2, ks=(0, 20))
    with pytest.raises(ConfigError, match="k >= 1"):
        knn_probe(x, y, x, y, 2, ks=())
    with pytest.raises(ConfigError, match="temperature"):
        knn_probe(x, y, x, y, 2, temperature=0.0)
