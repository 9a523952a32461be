"""Distances between point sets for reconstruction losses: Chamfer, and an EMD approximation.

The reconstruction loss of point-cloud autoencoders (Fan, Su & Guibas, CVPR 2017; Achlioptas,
Diamanti, Mitliagkas & Guibas, ICML 2018; Yang, Feng, Shen & Tian, "FoldingNet", CVPR 2018):
for sets A and B,

    CD(A, B) = 1/|A| Σ_{a∈A} min_{b∈B} ‖a − b‖²  +  1/|B| Σ_{b∈B} min_{a∈A} ‖a − b‖².

Squared Euclidean distances, each direction averaged over its points (Achlioptas et al. sum
over points instead; the mean keeps the loss's scale independent of the number of points, so
one learning rate serves 256 and 2,048 points). The two sets may have different sizes (the
folding decoder outputs its grid's 2,025 points for any input size). The measure is symmetric,
invariant to the order of the points, and zero exactly when every point of each set lies on a
point of the other.

:func:`approximate_emd` approximates the other loss of Achlioptas et al., the Earth Mover's
distance: the cheapest transport of one set's points onto the other's, Euclidean distance per
unit of mass, each set carrying mass 1 spread evenly over its points (for sets of one size: the
mean distance under the best one-to-one matching). It solves the entropy-regularised transport
problem by Sinkhorn iterations in the log domain (Cuturi, NeurIPS 2013), which needs no
per-example solver and runs batched on any device; the result approaches the exact value as the
regularisation ``epsilon`` shrinks (and needs more iterations).
"""

from __future__ import annotations

import tensorflow as tf


def pairwise_squared_distances(first: tf.Tensor, second: tf.Tensor) -> tf.Tensor:
    """``[b, n, d]`` and ``[b, m, d]`` → ``[b, n, m]`` squared Euclidean distances.

    Expanded as ‖x‖² + ‖y‖² − 2 x·y (one matmul: the ``[b, n, m, d]`` differences would need
    d times the memory); rounding can make that slightly negative, so it is clipped at 0.
    """
    first = tf.convert_to_tensor(first, tf.float32)
    second = tf.convert_to_tensor(second, tf.float32)
    first_norms = tf.reduce_sum(tf.square(first), axis=-1)[:, :, None]
    second_norms = tf.reduce_sum(tf.square(second), axis=-1)[:, None, :]
    cross = tf.matmul(first, second, transpose_b=True)
    return tf.maximum(first_norms + second_norms - 2.0 * cross, 0.0)


def nearest_squared_distances(sources: tf.Tensor, targets: tf.Tensor,
                              nearest: tf.Tensor) -> tf.Tensor:
    """``[b, n]``: squared distance of each source point to target ``nearest`` ``[b, n]`` (its
    index among the ``targets``).

    The distance matrix only picks the neighbour; the distance to it is recomputed from the
    difference, so a point lying on a target gives exactly 0 (the expanded form leaves ~1e-6
    of rounding at coordinates of size 5) and the gradient is that of ‖s − t‖².
    """
    neighbours = tf.gather(targets, nearest, batch_dims=1)
    return tf.reduce_sum(tf.square(sources - neighbours), axis=-1)


def chamfer_distance(first: tf.Tensor, second: tf.Tensor) -> tf.Tensor:
    """Chamfer distance (module docstring) of each pair of sets: ``[b, n, d]``, ``[b, m, d]``
    → ``[b]``."""
    first = tf.convert_to_tensor(first, tf.float32)
    second = tf.convert_to_tensor(second, tf.float32)
    # Only its argmins are read: no gradient (nor saved backprop state) through the matrix.
    distances = tf.stop_gradient(pairwise_squared_distances(first, second))
    first_to_second = nearest_squared_distances(first, second, tf.argmin(distances, axis=2))
    second_to_first = nearest_squared_distances(second, first, tf.argmin(distances, axis=1))
    return tf.reduce_mean(first_to_second, axis=1) + tf.reduce_mean(second_to_first, axis=1)


# Entropic regularisation and iteration count of approximate_emd, for shapes in the unit ball
# (distances up to 2). Measured against the exact assignment on four pairs of 32-point sets:
# ε 0.01 and 200 iterations within 0.5 %; 100 iterations up to 3.3 % below (the marginals not
# yet met); ε 0.05 4–5 % above (tests/test_chamfer.py).
EMD_EPSILON = 0.01
EMD_ITERATIONS = 200


# A graph even when called eagerly: an eager while_loop would run its body op by op in Python.
@tf.function(reduce_retracing=True)
def sinkhorn_plan(costs: tf.Tensor, epsilon: float, iterations: int) -> tf.Tensor:
    """The entropy-regularised optimal transport plan ``[b, n, m]`` between uniform masses on
    ``n`` and ``m`` points for transport ``costs`` ``[b, n, m]`` (log-domain Sinkhorn)."""
    n, m = tf.shape(costs)[1], tf.shape(costs)[2]
    log_a = -tf.math.log(tf.cast(n, costs.dtype))
    log_b = -tf.math.log(tf.cast(m, costs.dtype))
    scaled = -costs / epsilon
    f = tf.zeros_like(costs[:, :, 0])
    g = tf.zeros_like(costs[:, 0, :])

    def update(_, f, g):
        # Each potential makes its side's marginal exact given the other's.
        f = -tf.reduce_logsumexp(scaled + g[:, None, :], axis=2) + log_a
        g = -tf.reduce_logsumexp(scaled + f[:, :, None], axis=1) + log_b
        return _ + 1, f, g

    _, f, g = tf.while_loop(lambda i, f, g: i < iterations, update, (0, f, g))
    return tf.exp(scaled + f[:, :, None] + g[:, None, :])


def approximate_emd(first: tf.Tensor, second: tf.Tensor, epsilon: float = EMD_EPSILON,
                    iterations: int = EMD_ITERATIONS) -> tf.Tensor:
    """Approximate Earth Mover's distance (module docstring) of each pair of sets ``[b, n, d]``,
    ``[b, m, d]`` → ``[b]``: the transport cost of the Sinkhorn plan.

    The plan is held constant for the gradient (at the optimum the cost's gradient with respect
    to the distances is the plan itself), so backprop stores no iterations.
    """
    first = tf.convert_to_tensor(first, tf.float32)
    second = tf.convert_to_tensor(second, tf.float32)
    # The floor keeps the square root's gradient finite where two points coincide.
    distances = tf.sqrt(tf.maximum(pairwise_squared_distances(first, second), 1e-12))
    plan = tf.stop_gradient(sinkhorn_plan(tf.stop_gradient(distances), epsilon, iterations))
    return tf.reduce_sum(plan * distances, axis=[1, 2])

