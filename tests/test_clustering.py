"""DeepCluster's clustering step: whitening, planted-cluster recovery, NMI, uniform sampling."""

import math

import numpy as np

from selfsup.tasks.clustering import (
    cluster_features,
    effective_pca_dim,
    l2_normalize,
    nmi,
    pca_whiten,
    uniform_over_clusters,
)


def _planted_blobs(rng, num_clusters=10, per_cluster=200, signal_dims=16, noise_dims=48):
    """Overlapping Gaussian blobs (centres 1.5 σ apart per dimension) plus pure-noise dims."""
    centres = rng.normal(0.0, 1.5, size=(num_clusters, signal_dims))
    labels = np.repeat(np.arange(num_clusters), per_cluster)
    signal = centres[labels] + rng.normal(size=(len(labels), signal_dims))
    noise = rng.normal(size=(len(labels), noise_dims))
    # A random rotation mixes signal and noise, so no single input axis carries the clusters.
    rotation, _ = np.linalg.qr(rng.normal(size=(signal_dims + noise_dims,) * 2))
    return np.concatenate([signal, noise], axis=1) @ rotation, labels


def _numpy_nmi(a, b):
    """I(A;B) / sqrt(H(A) H(B)) from the contingency table, by plain loops."""
    n = len(a)
    values_a, values_b = sorted(set(a)), sorted(set(b))
    pairs = list(zip(a, b, strict=True))
    joint = np.array([[sum(1 for pair in pairs if pair == (i, j)) for j in values_b]
                      for i in values_a]) / n
    pa, pb = joint.sum(1), joint.sum(0)
    mutual = sum(joint[i, j] * math.log(joint[i, j] / (pa[i] * pb[j]))
                 for i in range(len(values_a)) for j in range(len(values_b)) if joint[i, j] > 0)
    ha = -sum(p * math.log(p) for p in pa)
    hb = -sum(p * math.log(p) for p in pb)
    return mutual / math.sqrt(ha * hb)


def test_pipeline_recovers_planted_clusters():
    rng = np.random.default_rng(0)
    features, labels = _planted_blobs(rng)
    # pca_dim 32 keeps 16 pure-noise components next to the 16 signal ones, and whitening gives
    # them the same variance: the clusters must survive that, as in DeepCluster.
    assignments = cluster_features(features, num_clusters=10, pca_dim=32, seed=0)
    assert nmi(labels, assignments) >= 0.9
    # The check has teeth: a random labeling of the same sizes scores near zero.
    assert nmi(labels, rng.permutation(labels)) < 0.05


def test_pca_whitening_gives_unit_covariance_and_clamps_its_size():
    rng = np.random.default_rng(1)
    mixing = rng.normal(size=(12, 12)) * np.linspace(0.1, 5.0, 12)
    features = rng.normal(size=(500, 12)) @ mixing + 3.0
    whitened = pca_whiten(features, pca_dim=256)
    assert whitened.shape == (500, 12)  # 256 clamped to the 12 features
    np.testing.assert_allclose(np.cov(whitened, rowvar=False), np.eye(12), atol=1e-6)
    assert effective_pca_dim(256, num_features=64, num_examples=10_000) == 64
    assert effective_pca_dim(256, num_features=4096, num_examples=100) == 100
    assert effective_pca_dim(8, num_features=64, num_examples=100) == 8
    # Components are ordered by variance: the first 4 of a 4-dim PCA are the first 4 of a full one.
    np.testing.assert_allclose(np.abs(pca_whiten(features, 4)), np.abs(whitened[:, :4]),
                               atol=1e-8)


def test_dead_features_are_dropped_instead_of_amplified():
    rng = np.random.default_rng(2)
    features = np.concatenate([rng.normal(size=(300, 6)), np.zeros((300, 4))], axis=1)
    whitened = pca_whiten(features, pca_dim=10)
    assert whitened.shape == (300, 6)
    assert np.all(np.isfinite(whitened)) and np.abs(whitened).max() < 10
    points = l2_normalize(whitened)
    np.testing.assert_allclose(np.linalg.norm(points, axis=1), 1.0, atol=1e-12)
    assert np.all(l2_normalize(np.zeros((2, 3))) == 0)


def test_nmi_of_a_hand_worked_case_and_identities():
    # A = {0,0,1,1}, B = {0,0,1,2}: A is a function of B, so I = H(A) = ln 2, H(B) = 1.5 ln 2,
    # and NMI = ln 2 / sqrt(ln 2 · 1.5 ln 2) = 1 / sqrt(1.5).
    assert math.isclose(nmi([0, 0, 1, 1], [0, 0, 1, 2]), 1 / math.sqrt(1.5), rel_tol=1e-9)
    labels = np.random.default_rng(3).integers(0, 7, size=200)
    assert math.isclose(nmi(labels, labels), 1.0)
    assert math.isclose(nmi(labels, (labels + 3) % 7 + 10), 1.0)  # renamed clusters
    # Independent: every A value meets every B value equally often → I = 0.
    assert abs(nmi([0, 0, 1, 1], [0, 1, 0, 1])) < 1e-12
    big = np.random.default_rng(4)
    assert nmi(big.integers(0, 10, 20_000), big.integers(0, 10, 20_000)) < 0.01


def test_nmi_matches_a_contingency_table_reference():
    rng = np.random.default_rng(5)
    for _ in range(3):
        a, b = rng.integers(0, 4, size=60), rng.integers(0, 6, size=60)
        assert math.isclose(nmi(a, b), _numpy_nmi(list(a), list(b)), rel_tol=1e-9)


def _cluster_sizes_example():
    # Clusters 0, 2, 5, 7 non-empty (50, 3, 20, 1 members); 1, 3, 4, 6 empty.
    assignments = np.repeat([0, 2, 5, 7], [50, 3, 20, 1])
    return np.random.default_rng(6).permutation(assignments)


def test_uniform_sampling_draws_equally_from_every_nonempty_cluster():
    assignments = _cluster_sizes_example()
    indices = uniform_over_clusters(assignments, 100, np.random.default_rng(0))
    assert len(indices) == 100
    np.testing.assert_array_equal(np.bincount(assignments[indices], minlength=8),
                                  [25, 0, 25, 0, 0, 25, 0, 25])
    # Not divisible: counts differ by at most one and add up.
    indices = uniform_over_clusters(assignments, 102, np.random.default_rng(1))
    counts = np.bincount(assignments[indices], minlength=8)[[0, 2, 5, 7]]
    assert counts.sum() == 102 and counts.max() - counts.min() <= 1
    # A cluster with enough members is drawn without replacement.
    big_cluster = indices[assignments[indices] == 0]
    assert len(set(big_cluster.tolist())) == len(big_cluster)
    # Shuffled, not grouped by cluster.
    assert np.any(np.diff(assignments[indices]) < 0)


def test_uniform_sampling_is_reproducible_from_its_generator():
    assignments = _cluster_sizes_example()
    first = uniform_over_clusters(assignments, 64, np.random.default_rng(9))
    again = uniform_over_clusters(assignments, 64, np.random.default_rng(9))
    other = uniform_over_clusters(assignments, 64, np.random.default_rng(10))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
