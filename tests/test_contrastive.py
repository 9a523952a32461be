"""NT-Xent against a numpy double loop, its identity, and its cross-replica negatives."""

import math

import numpy as np
import tensorflow as tf

from selfsup.tasks.contrastive import nt_xent


def numpy_nt_xent(a: np.ndarray, b: np.ndarray, temperature: float) -> float:
    """SimCLR eq. 1 written out: loop over the 2N anchors and their candidates."""
    views = np.concatenate([a, b]).astype(np.float64)
    views /= np.linalg.norm(views, axis=1, keepdims=True)
    n = len(a)
    total = 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        denominator = 0.0
        for k in range(2 * n):
            if k != i:
                denominator += math.exp(views[i] @ views[k] / temperature)
        total += -math.log(math.exp(views[i] @ views[positive] / temperature) / denominator)
    return total / (2 * n)


def test_matches_a_numpy_loop():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    for temperature in (0.1, 0.5, 1.0):
        got = float(nt_xent(tf.constant(a, tf.float32), tf.constant(b, tf.float32), temperature))
        assert abs(got - numpy_nt_xent(a, b, temperature)) < 1e-4


def test_identical_embeddings_give_log_of_2n_minus_1():
    same = tf.ones([8, 4])
    np.testing.assert_allclose(float(nt_xent(same, same, 0.3)), math.log(2 * 8 - 1), rtol=1e-6)


def test_two_replicas_see_the_global_negatives_and_gradients(two_replica_strategy):
    rng = np.random.default_rng(1)
    a = rng.normal(size=(8, 5)).astype(np.float32)
    b = rng.normal(size=(8, 5)).astype(np.float32)
    strategy = two_replica_strategy
    with strategy.scope():
        # A linear map before the loss (not a scale, which normalisation would cancel).
        weights = tf.Variable(np.eye(5, dtype=np.float32) + 0.1)

    def single(x, y):
        return nt_xent(tf.matmul(x, weights), y, 0.5)

    with tf.GradientTape() as tape:
        one_device_loss = single(a, b)
    one_device_grad = tape.gradient(one_device_loss, weights)

    def replica_step(x, y):
        with tf.GradientTape() as tape:
            loss = single(x, y)
            scaled = loss / strategy.num_replicas_in_sync
        return loss, tape.gradient(scaled, weights)

    @tf.function
    def distributed():
        values = strategy.experimental_distribute_values_from_function(
            lambda context: (a[4 * context.replica_id_in_sync_group:
                               4 * context.replica_id_in_sync_group + 4],
                             b[4 * context.replica_id_in_sync_group:
                               4 * context.replica_id_in_sync_group + 4]))
        losses, grads = strategy.run(replica_step, args=values)
        return (strategy.reduce("MEAN", losses, axis=None),
                strategy.reduce("SUM", grads, axis=None))

    loss, grad = distributed()
    one_device_expected = numpy_nt_xent(a @ (np.eye(5) + 0.1), b, 0.5)
    assert abs(float(loss) - one_device_expected) < 1e-4
    assert abs(float(one_device_loss) - one_device_expected) < 1e-4
    assert float(tf.reduce_max(tf.abs(one_device_grad))) > 1e-3
    np.testing.assert_allclose(grad.numpy(), one_device_grad.numpy(), atol=1e-6)
    # Not the local-only loss: with 4 anchors per replica the negatives would differ.
    projected = a @ (np.eye(5) + 0.1)
    local_only = (numpy_nt_xent(projected[:4], b[:4], 0.5)
                  + numpy_nt_xent(projected[4:], b[4:], 0.5)) / 2
    assert abs(local_only - one_device_expected) > 1e-2
