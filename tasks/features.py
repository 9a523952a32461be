"""Frozen-feature extraction for probes: adaptive average pooling and batched endpoint features.

Every 4-D endpoint ``[b, h, w, c]`` of a backbone is average-pooled to a fixed
``pool_size × pool_size`` grid with PyTorch-style adaptive bins (bin ``i`` of ``s`` covers rows
``floor(i·h/s)`` to ``ceil((i+1)·h/s)``, so bins may overlap when ``h`` is not a multiple of
``s``), then flattened; endpoints that are already vectors (``pool``) pass through unchanged.

Video endpoints are first averaged over time: a 5-D map ``[b, t, h, w, c]`` becomes ``[b, h, w,
c]`` and is then pooled as above; a recurrent ``[b, t, c]`` sequence becomes ``[b, c]``. The
temporal mean keeps the feature count independent of the clip length (it is what the backbones'
own ``pool`` does over space and time).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf
from absl import logging

# REFERENCE.md's Fashion-MNIST reference numbers pool every layer to 3×3; global pooling (1×1)
# changes probe accuracy by about 10 points, so the default is fixed here and recorded with
# every result.
DEFAULT_POOL_SIZE = 3


def adaptive_pool_matrix(input_size: int, output_size: int) -> np.ndarray:
    """``[output_size, input_size]`` float32 averaging weights of PyTorch's adaptive bins."""
    if input_size < 1 or output_size < 1:
        raise ValueError(f"sizes must be positive, got {input_size} → {output_size}")
    weights = np.zeros((output_size, input_size), np.float32)
    for i in range(output_size):
        start = (i * input_size) // output_size
        end = -((-(i + 1) * input_size) // output_size)  # ceil without floating point
        weights[i, start:end] = 1.0 / (end - start)
    return weights


def adaptive_average_pool(features: tf.Tensor, output_size: int = DEFAULT_POOL_SIZE
                          ) -> tf.Tensor:
    """``[b, h, w, c]`` → ``[b, output_size, output_size, c]`` adaptive average pooling.

    ``h`` and ``w`` must be static. Implemented as two small averaging matrices applied with
    one einsum, so it is exact for any ``h``/``w`` (e.g. 7 → 3, or 1 → 3 by repetition).
    """
    features = tf.convert_to_tensor(features)
    if features.shape.rank != 4:
        raise ValueError(f"expected a [batch, height, width, channels] tensor, got "
                         f"shape {features.shape}")
    height, width = features.shape[1], features.shape[2]
    if height is None or width is None:
        raise ValueError("adaptive_average_pool needs static height and width")
    rows = tf.constant(adaptive_pool_matrix(height, output_size), features.dtype)
    cols = tf.constant(adaptive_pool_matrix(width, output_size), features.dtype)
    return tf.einsum("ih,bhwc,jw->bijc", rows, features, cols)


def flatten_endpoint(features: tf.Tensor, pool_size: int = DEFAULT_POOL_SIZE) -> tf.Tensor:
    """One endpoint as ``[b, features]``: 4-D maps are adaptively pooled then flattened; video
    endpoints (5-D maps, ``[b, t, c]`` sequences) are averaged over time first."""
    if features.shape.rank in (3, 5):
        features = tf.reduce_mean(features, axis=1)
    if features.shape.rank == 4:
        pooled = adaptive_average_pool(features, pool_size)
        return tf.reshape(pooled, [tf.shape(pooled)[0], -1])
    if features.shape.rank == 2:
        return features
    raise ValueError(f"cannot probe an endpoint of shape {features.shape}")


def extract_features(encoder: keras.Model | Callable, dataset: tf.data.Dataset,
                     pool_size: int = DEFAULT_POOL_SIZE, batch_size: int = 256,
                     num_examples: int | None = None, log_every: int = 20,
                     log: Callable[[str], None] = logging.info,
                     description: str = "features", unit: str = "images",
                     ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Runs the frozen ``encoder`` (``training=False``) over ``(image, label)`` examples.

    Returns ``({endpoint: float32 [n, features]}, int64 labels [n])`` with endpoints in the
    encoder's order. ``num_examples`` (if known) only serves the progress lines' ETA; a line is
    logged every ``log_every`` batches and once at the end; ``unit`` names the examples in them
    (``clips`` for video). Labels may be ``[b]`` or ``[b, k]`` (e.g. label and video index).
    """

    @tf.function(reduce_retracing=True)
    def features_of(images: tf.Tensor) -> dict[str, tf.Tensor]:
        endpoints = encoder(images, training=False)
        return {name: flatten_endpoint(value, pool_size) for name, value in endpoints.items()}

    chunks: dict[str, list[np.ndarray]] = {}
    labels: list[np.ndarray] = []
    total_batches = math.ceil(num_examples / batch_size) if num_examples else None
    start = time.perf_counter()
    seen = 0
    batches = dataset.batch(batch_size).prefetch(2)
    for step, (images, batch_labels) in enumerate(batches, start=1):
        for name, value in features_of(images).items():
            chunks.setdefault(name, []).append(value.numpy().astype(np.float32, copy=False))
        labels.append(batch_labels.numpy())
        seen += int(batch_labels.shape[0])
        if log_every and step % log_every == 0:
            elapsed = time.perf_counter() - start
            eta = ""
            if total_batches:
                eta = f", ETA {elapsed / step * max(total_batches - step, 0):.0f} s"
            log(f"{description}: batch {step}/{total_batches or '?'}, {seen} {unit}, "
                f"{seen / elapsed:.0f} {unit}/s{eta}")
    if not labels:
        raise ValueError(f"{description}: the dataset is empty")
    elapsed = time.perf_counter() - start
    log(f"{description}: {seen} {unit} in {elapsed:.1f} s ({seen / elapsed:.0f} {unit}/s)")
    features = {name: np.concatenate(parts) for name, parts in chunks.items()}
    return features, np.concatenate(labels).astype(np.int64)
