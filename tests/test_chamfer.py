"""The Chamfer distance against a numpy double loop and its defining properties; the EMD
approximation against the exact optimal matching."""

import numpy as np
import pytest
import tensorflow as tf

from selfsup.tasks.chamfer import (
    approximate_emd,
    chamfer_distance,
    pairwise_squared_distances,
    sinkhorn_plan,
)


def chamfer_reference(first: np.ndarray, second: np.ndarray) -> float:
    """Plain double loop over one pair of sets: mean nearest squared distance both ways."""
    def directed(sources, targets):
        total = 0.0
        for p in sources:
            best = np.inf
            for q in targets:
                best = min(best, float(np.sum((p - q) ** 2)))
            total += best
        return total / len(sources)

    return directed(first, second) + directed(second, first)


def _clouds(seed: int, batch: int, first: int, second: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(batch, first, 3)).astype(np.float32),
            rng.normal(size=(batch, second, 3)).astype(np.float32))


def test_chamfer_equals_a_numpy_double_loop_for_sets_of_different_sizes():
    first, second = _clouds(0, 3, 17, 29)
    expected = [chamfer_reference(a.astype(np.float64), b.astype(np.float64))
                for a, b in zip(first, second, strict=True)]
    np.testing.assert_allclose(chamfer_distance(first, second).numpy(), expected, rtol=1e-5)


def test_chamfer_of_a_hand_worked_example():
    # A = {0}; B = {(1,0,0), (0,2,0)}: A→B nearest is 1; B→A mean of 1 and 4 is 2.5.
    first = np.zeros((1, 1, 3), np.float32)
    second = np.array([[[1, 0, 0], [0, 2, 0]]], np.float32)
    assert chamfer_distance(first, second).numpy() == pytest.approx([3.5])


def test_chamfer_is_zero_for_identical_sets_and_positive_otherwise():
    first, second = _clouds(1, 2, 64, 64)
    # Offset from the origin: the expanded ‖x‖² + ‖y‖² − 2x·y must not leave rounding behind.
    shifted = first + 5.0
    assert (chamfer_distance(shifted, shifted).numpy() == 0.0).all()
    assert (chamfer_distance(first, second).numpy() > 0.1).all()
    # A duplicated point changes nothing: every point still lies on a point of the other set.
    doubled = np.concatenate([first, first[:, :5]], axis=1)
    assert (chamfer_distance(first, doubled).numpy() == 0.0).all()


def test_chamfer_is_symmetric():
    first, second = _clouds(2, 4, 31, 12)
    np.testing.assert_allclose(chamfer_distance(first, second).numpy(),
                               chamfer_distance(second, first).numpy(), rtol=1e-6)


def test_chamfer_ignores_the_order_of_the_points():
    first, second = _clouds(3, 2, 40, 25)
    rng = np.random.default_rng(4)
    permuted_first = first[:, rng.permutation(40)]
    permuted_second = second[:, rng.permutation(25)]
    np.testing.assert_allclose(chamfer_distance(permuted_first, permuted_second).numpy(),
                               chamfer_distance(first, second).numpy(), rtol=1e-6)


def test_pairwise_distances_equal_explicit_differences_and_are_never_negative():
    first, second = _clouds(5, 2, 9, 7)
    explicit = ((first[:, :, None, :] - second[:, None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(pairwise_squared_distances(first, second).numpy(), explicit,
                               rtol=1e-5, atol=1e-5)
    near = np.full((1, 2, 3), 1e3, np.float32)
    assert pairwise_squared_distances(near, near).numpy().min() >= 0.0


def test_chamfer_gradient_moves_a_point_towards_its_nearest_neighbour():
    target = tf.constant([[[1.0, 0.0, 0.0]]])
    source = tf.Variable([[[0.0, 0.0, 0.0]]])
    with tf.GradientTape() as tape:
        loss = chamfer_distance(source, target)
    # d/dx of 2·(x − 1)² at x = 0 is −4 (both directions pair the same two points).
    np.testing.assert_allclose(tape.gradient(loss, source).numpy(), [[[-4.0, 0.0, 0.0]]],
                               atol=1e-6)


def test_approximate_emd_is_within_half_a_percent_of_the_optimal_matching():
    from scipy.optimize import linear_sum_assignment

    first, second = _clouds(6, 4, 32, 32)
    first, second = 0.5 * first, 0.5 * second  # about the unit-ball scale of the shapes
    exact = []
    for a, b in zip(first.astype(np.float64), second.astype(np.float64), strict=True):
        distances = np.linalg.norm(a[:, None] - b[None], axis=-1)
        rows, columns = linear_sum_assignment(distances)
        exact.append(distances[rows, columns].mean())
    np.testing.assert_allclose(approximate_emd(first, second).numpy(), exact, rtol=5e-3)


def test_approximate_emd_is_symmetric_order_free_and_near_zero_on_identical_sets():
    first, second = _clouds(7, 2, 24, 24)
    forward = approximate_emd(first, second).numpy()
    # Symmetric up to the unfinished iterations (one side's marginal is met last): ~0.1 %.
    np.testing.assert_allclose(approximate_emd(second, first).numpy(), forward, rtol=3e-3)
    order = np.random.default_rng(8).permutation(24)
    np.testing.assert_allclose(approximate_emd(first[:, order], second).numpy(), forward,
                               rtol=1e-4)
    # Entropic blur leaves a little mass on neighbours: ~1e-4 against distances of ~1.
    assert (approximate_emd(first, first).numpy() < 1e-3).all()
    assert (forward > 0.5).all()


def test_sinkhorn_plan_has_uniform_marginals_on_sets_of_different_sizes():
    first, second = _clouds(9, 2, 10, 15)
    costs = tf.sqrt(pairwise_squared_distances(first, second))
    plan = sinkhorn_plan(costs, epsilon=0.05, iterations=200).numpy()
    # The last update meets the second set's marginal exactly, the first's approximately.
    np.testing.assert_allclose(plan.sum(axis=1), 1 / 15, rtol=1e-5)
    np.testing.assert_allclose(plan.sum(axis=2), 1 / 10, rtol=1e-2)
    assert plan.sum() == pytest.approx(2.0, rel=1e-5)

