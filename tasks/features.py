"""Frozen-feature extraction for probes: adaptive average pooling and batched endpoint features.

Every 4-D endpoint ``[b, h, w, c]`` of a backbone is average-pooled to an ``s × s`` grid with
PyTorch-style adaptive bins (bin ``i`` of ``s`` covers rows ``floor(i·h/s)`` to
``ceil((i+1)·h/s)``, so bins may overlap when ``h`` is not a multiple of ``s``), then flattened;
endpoints that are already vectors (``pool``) pass through unchanged. The grid size ``s`` is
either one fixed ``pool_size`` for every layer (default 3, the setting of REFERENCE.md's
Fashion-MNIST numbers) or chosen per layer from a target feature count ``feature_dims`` so that
every layer gives about the same number of features (:func:`pool_size_for`), the protocol of
Goyal, Mahajan, Gupta & Misra 2019 ("Scaling and Benchmarking Self-Supervised Visual
Representation Learning", ICCV; the linear heads of their released benchmark,
facebookresearch/fair_self_supervision_benchmark): ResNet-50 maps are average-pooled to
64·12² = 9216 (conv1), 256·6² = 9216 (res2), 512·4² = 8192 (res3), 1024·3² = 9216 (res4) and
2048·2² = 8192 (res5) features, AlexNet's conv1–conv5 to 96·10², 256·6², 384·5², 384·5² and
256·6² — about 9k per layer (:data:`GOYAL_FEATURE_DIMS`).

Video endpoints are first averaged over time: a 5-D map ``[b, t, h, w, c]`` becomes ``[b, h, w,
c]`` and is then pooled as above; a recurrent ``[b, t, c]`` sequence becomes ``[b, c]``. The
temporal mean keeps the feature count independent of the clip length (it is what the backbones'
own ``pool`` does over space and time).
"""

from __future__ import annotations

import dataclasses
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
# Goyal et al. 2019's per-layer target (~9k features per layer of ResNet-50 and AlexNet on
# 224-pixel ImageNet images); with it :func:`pool_size_for` gives exactly their pool grids.
GOYAL_FEATURE_DIMS = 9216


def pool_size_for(channels: int, height: int, width: int, feature_dims: int) -> int:
    """The grid size ``s`` that pools a ``[height, width, channels]`` map to about
    ``feature_dims`` features (Goyal et al. 2019: the same feature count for every layer).

    Rule: ``s = max(1, floor(sqrt(feature_dims / channels) + 0.5))`` (the nearest integer, halves
    rounded up) so that ``s² · channels ≈ feature_dims``, capped at ``min(height, width)`` so a
    map is never up-sampled. A map with more channels than ``feature_dims`` gets ``s = 1``
    (global average pooling, ``channels`` features).
    """
    if min(channels, height, width, feature_dims) < 1:
        raise ValueError(f"channels, height, width and feature_dims must be positive, got "
                         f"{channels}, {height}, {width}, {feature_dims}")
    size = max(1, math.floor(math.sqrt(feature_dims / channels) + 0.5))
    return min(size, height, width)


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


def endpoint_pool_size(shape: tf.TensorShape | tuple, pool_size: int = DEFAULT_POOL_SIZE,
                       feature_dims: int | None = None) -> int | None:
    """The grid size an endpoint of ``shape`` is pooled to; None for a vector endpoint.

    ``[b, h, w, c]`` maps (and ``[b, t, h, w, c]`` video maps, averaged over time first) get
    ``pool_size``, or :func:`pool_size_for` of their channels and size when ``feature_dims`` is
    given; ``[b, c]`` vectors and ``[b, t, c]`` sequences are not pooled.
    """
    shape = tf.TensorShape(shape)
    if shape.rank in (2, 3):
        return None
    if shape.rank not in (4, 5):
        raise ValueError(f"cannot probe an endpoint of shape {shape}")
    if feature_dims is None:
        return pool_size
    height, width, channels = shape[-3:]
    if None in (height, width, channels):
        raise ValueError(f"feature_dims needs a static map size, got shape {shape}")
    return pool_size_for(channels, height, width, feature_dims)


def flatten_endpoint(features: tf.Tensor, pool_size: int = DEFAULT_POOL_SIZE,
                     feature_dims: int | None = None) -> tf.Tensor:
    """One endpoint as ``[b, features]``: 4-D maps are adaptively pooled to
    :func:`endpoint_pool_size` then flattened; video endpoints (5-D maps, ``[b, t, c]``
    sequences) are averaged over time first."""
    size = endpoint_pool_size(features.shape, pool_size, feature_dims)
    if features.shape.rank in (3, 5):
        features = tf.reduce_mean(features, axis=1)
    if size is None:
        return features
    pooled = adaptive_average_pool(features, size)
    return tf.reshape(pooled, [tf.shape(pooled)[0], -1])


@dataclasses.dataclass(frozen=True, eq=False)
class PooledFeatures:
    """:func:`extract_pooled_features`' result: ``features`` (endpoint → float32 ``[n, d]``, in
    the encoder's order), int64 ``labels`` (``[n]`` or ``[n, k]``) and ``pool_sizes`` (endpoint →
    the grid size ``s`` its map was pooled to, None for a vector endpoint)."""

    features: dict[str, np.ndarray]
    labels: np.ndarray
    pool_sizes: dict[str, int | None]


def extract_features(encoder: keras.Model | Callable, dataset: tf.data.Dataset,
                     pool_size: int = DEFAULT_POOL_SIZE, batch_size: int = 256,
                     num_examples: int | None = None, log_every: int = 20,
                     log: Callable[[str], None] = logging.info,
                     description: str = "features", unit: str = "images",
                     feature_dims: int | None = None,
                     ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Runs the frozen ``encoder`` (``training=False``) over ``(image, label)`` examples.

    Returns ``({endpoint: float32 [n, features]}, int64 labels [n])`` with endpoints in the
    encoder's order; :func:`extract_pooled_features` also returns each endpoint's grid size.
    """
    result = extract_pooled_features(
        encoder, dataset, pool_size=pool_size, feature_dims=feature_dims, batch_size=batch_size,
        num_examples=num_examples, log_every=log_every, log=log, description=description,
        unit=unit)
    return result.features, result.labels


def extract_pooled_features(encoder: keras.Model | Callable, dataset: tf.data.Dataset, *,
                            pool_size: int = DEFAULT_POOL_SIZE, feature_dims: int | None = None,
                            batch_size: int = 256, num_examples: int | None = None,
                            log_every: int = 20, log: Callable[[str], None] = logging.info,
                            description: str = "features", unit: str = "images",
                            ) -> PooledFeatures:
    """Runs the frozen ``encoder`` (``training=False``) over ``(image, label)`` examples and
    pools every map endpoint (:func:`flatten_endpoint`).

    Maps are pooled to ``pool_size × pool_size``, or, when ``feature_dims`` is given, each to
    its own :func:`pool_size_for` grid (about ``feature_dims`` features per layer, Goyal et al.
    2019). ``num_examples`` (if known) only serves the progress lines' ETA; a line is logged
    every ``log_every`` batches and once at the end; ``unit`` names the examples in them
    (``clips`` for video). Labels may be ``[b]`` or ``[b, k]`` (e.g. label and video index).
    """
    pool_sizes: dict[str, int | None] = {}

    @tf.function(reduce_retracing=True)
    def features_of(images: tf.Tensor) -> dict[str, tf.Tensor]:
        endpoints = encoder(images, training=False)
        # Runs while tracing, where the endpoints' shapes are static: records each grid size.
        pool_sizes.update({name: endpoint_pool_size(value.shape, pool_size, feature_dims)
                           for name, value in endpoints.items()})
        return {name: flatten_endpoint(value, pool_size, feature_dims)
                for name, value in endpoints.items()}

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
    return PooledFeatures(features, np.concatenate(labels).astype(np.int64),
                          {name: pool_sizes[name] for name in features})
