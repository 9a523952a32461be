"""InfoNCE against a numpy loop, its log(candidates) identity, and its cross-replica candidates."""

import math

import numpy as np
import pytest
import tensorflow as tf

from selfsup.tasks.info_nce import info_nce, replica_info_nce, replica_scores


def numpy_info_nce(scores: np.ndarray, positives: np.ndarray) -> float:
    """van den Oord et al. 2018 eq. 4 written out: −log(exp(s⁺) / Σ_j exp(s_j)), averaged."""
    total = 0.0
    for row, positive in zip(scores.astype(np.float64), positives, strict=True):
        denominator = sum(math.exp(value) for value in row)
        total += -math.log(math.exp(row[positive]) / denominator)
    return total / len(scores)


def test_matches_a_numpy_loop():
    rng = np.random.default_rng(0)
    scores = rng.normal(scale=3.0, size=(7, 11))
    positives = rng.integers(0, 11, size=7)
    got = float(info_nce(tf.constant(scores, tf.float32), tf.constant(positives)))
    assert got == pytest.approx(numpy_info_nce(scores, positives), abs=1e-5)


def test_equal_scores_give_log_of_the_number_of_candidates():
    for candidates in (2, 13, 100):
        scores = tf.fill([5, candidates], 0.7)
        got = float(info_nce(scores, tf.zeros([5], tf.int32)))
        assert got == pytest.approx(math.log(candidates), rel=1e-6)


def test_replica_info_nce_on_one_device_scores_queries_against_keys():
    rng = np.random.default_rng(1)
    queries, keys = rng.normal(size=(4, 3)), rng.normal(size=(6, 3))
    positives = np.array([5, 0, 2, 2])
    expected = numpy_info_nce(queries @ keys.T / 0.5, positives)
    got = replica_info_nce(tf.constant(queries, tf.float32), tf.constant(keys, tf.float32),
                           tf.constant(positives), temperature=0.5)
    assert float(got) == pytest.approx(expected, abs=1e-5)
    # Default positives: paired rows.
    paired = replica_info_nce(tf.constant(queries, tf.float32),
                              tf.constant(keys[:4], tf.float32))
    assert float(paired) == pytest.approx(numpy_info_nce(queries @ keys[:4].T, np.arange(4)),
                                          abs=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        replica_scores(tf.constant(queries), tf.constant(keys), temperature=0.0)


def test_two_replicas_see_every_replicas_keys_and_match_one_device(two_replica_strategy):
    rng = np.random.default_rng(2)
    queries = rng.normal(size=(6, 4)).astype(np.float32)
    keys = rng.normal(size=(10, 4)).astype(np.float32)
    # Each replica holds 3 queries and 5 keys; positives index the replica's own keys.
    local_positives = np.array([4, 0, 1, 2, 2, 3])
    global_positives = local_positives + np.repeat([0, 5], 3)
    strategy = two_replica_strategy
    with strategy.scope():
        weights = tf.Variable(np.eye(4, dtype=np.float32) + 0.1)

    def loss_fn(q, k, positives):
        return replica_info_nce(tf.matmul(q, weights), k, positives, temperature=0.5)

    with tf.GradientTape() as tape:
        one_device = loss_fn(queries, keys, global_positives)
    one_device_grad = tape.gradient(one_device, weights)

    def replica_step(q, k, positives):
        with tf.GradientTape() as tape:
            loss = loss_fn(q, k, positives)
            scaled = loss / strategy.num_replicas_in_sync
        return loss, tape.gradient(scaled, weights)

    @tf.function
    def distributed():
        def slices(context):
            r = context.replica_id_in_sync_group
            return (queries[3 * r:3 * r + 3], keys[5 * r:5 * r + 5],
                    local_positives[3 * r:3 * r + 3])

        values = strategy.experimental_distribute_values_from_function(slices)
        losses, grads = strategy.run(replica_step, args=values)
        return (strategy.reduce("MEAN", losses, axis=None),
                strategy.reduce("SUM", grads, axis=None))

    loss, grad = distributed()
    expected = numpy_info_nce((queries @ (np.eye(4) + 0.1)) @ keys.T / 0.5, global_positives)
    assert float(one_device) == pytest.approx(expected, abs=1e-4)
    assert float(loss) == pytest.approx(expected, abs=1e-4)
    assert float(tf.reduce_max(tf.abs(one_device_grad))) > 1e-3
    np.testing.assert_allclose(grad.numpy(), one_device_grad.numpy(), atol=1e-5)
    # Not the local-only loss (each replica's queries against its own keys only).
    projected = queries @ (np.eye(4) + 0.1)
    local_only = np.mean([numpy_info_nce(projected[3 * r:3 * r + 3] @ keys[5 * r:5 * r + 5].T
                                         / 0.5, local_positives[3 * r:3 * r + 3])
                          for r in range(2)])
    assert abs(local_only - expected) > 1e-2
