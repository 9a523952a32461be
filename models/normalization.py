"""Batch normalisation whose statistics do not depend on how a batch is split over replicas.

Keras 3's synchronized BatchNorm sums ``x`` and ``x²`` over all axes at once in float32 and
takes ``E[x²] − E[x]²``. On a CPU, a one-shot float32 sum over ~50k activations drifts by
~3e-5 relative, and the subtraction amplifies it, so two replicas and one device disagree by
~1e-4 after a single step. Here the sums run one axis at a time (short, accurate partial
sums, exactly the same per-image partials on any replica layout) and the variance is taken
around the global mean in a second pass (Chan et al.'s well-conditioned form), all-reduced
across replicas when ``synchronized``. Gradients flow through the all-reduces (their gradient
is an all-reduce), so the backward pass is the one of the global batch.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def _staged_sum(x: tf.Tensor, axes: list[int]) -> tf.Tensor:
    for axis in sorted(axes, reverse=True):
        x = tf.reduce_sum(x, axis=axis, keepdims=True)
    return x


def global_moments(x: tf.Tensor, axes: list[int], synchronized: bool) -> tuple[tf.Tensor,
                                                                             tf.Tensor]:
    """Mean and (biased) variance over ``axes`` of the batch on all replicas when
    ``synchronized``, else of this replica's batch; float32 for float16/bfloat16 inputs."""
    dtype = x.dtype
    if dtype in (tf.float16, tf.bfloat16):
        x = tf.cast(x, tf.float32)
    context = tf.distribute.get_replica_context() if synchronized else None
    shape = tf.shape(x)
    count = tf.cast(tf.reduce_prod(tf.gather(shape, axes)), x.dtype)

    def total(value):
        return context.all_reduce(tf.distribute.ReduceOp.SUM, value) if context else value

    count = total(count)
    mean = total(_staged_sum(x, axes)) / count
    variance = total(_staged_sum(tf.square(x - mean), axes)) / count
    mean = tf.squeeze(mean, axes)
    variance = tf.squeeze(variance, axes)
    return tf.cast(mean, dtype), tf.cast(variance, dtype)


class BatchNormalization(keras.layers.BatchNormalization):
    """Keras BatchNormalization with replica-layout-independent statistics (see module doc)."""

    def _moments(self, inputs, mask):
        if mask is not None or not self.synchronized:
            return super()._moments(inputs, mask)
        return global_moments(inputs, list(self._reduction_axes), synchronized=True)
