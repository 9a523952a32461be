"""A hard-coded edge detector in TensorFlow: the free labels of the ``edges`` pretext task.

After Canny, "A Computational Approach to Edge Detection", IEEE TPAMI 1986, with the Sobel
operator for the gradient: luma (ITU-R BT.601 weights, as ``tf.image.rgb_to_grayscale``), an
optional Gaussian smoothing, Sobel gradients (``tf.image.sobel_edges``, reflected borders),
their magnitude, non-maximum suppression along the gradient direction quantised to four
directions (0°, 45°, 90°, 135°, Canny 1986 §VII), then a threshold at a fraction of each image's
largest magnitude. Every step is vectorised over the batch (shifted copies of the magnitude map,
no per-image or per-pixel loop), so the labels are made inside tf.data.

Conventions:
  * Gradients are in index coordinates: ``gy`` along rows (downwards), ``gx`` along columns.
  * Non-maximum suppression compares a pixel with its two neighbours along the quantised
    gradient direction ``±(dy, dx)``. A step edge between two pixels gives both of them the same
    Sobel magnitude; to mark it with one pixel the comparison is strict on the ``−(dy, dx)``
    side and non-strict on the ``+(dy, dx)`` side, so of such a pair the pixel with the smaller
    row (vertical gradient) or column (horizontal gradient) index is kept.
  * Threshold: ``magnitude ≥ fraction · max(magnitude of that image)`` and ``magnitude > 0``
    (a single relative threshold; Canny's hysteresis with two thresholds is not implemented).
"""

from __future__ import annotations

import math

import tensorflow as tf

from selfsup.datasets.augment import gaussian_blur

# Neighbour offsets (dy, dx) along the four quantised gradient directions, in the order of the
# direction index: 0° (gradient along columns), 45°, 90° (along rows), 135°.
DIRECTION_OFFSETS = ((0, 1), (1, 1), (1, 0), (1, -1))
# Fraction of each image's largest gradient magnitude an edge pixel must reach.
DEFAULT_THRESHOLD_FRACTION = 0.2


def luma(images: tf.Tensor) -> tf.Tensor:
    """RGB ``[b, h, w, 3]`` → luma ``[b, h, w, 1]`` (BT.601: 0.2989 R + 0.587 G + 0.114 B, the
    weights of ``tf.image.rgb_to_grayscale``)."""
    return tf.image.rgb_to_grayscale(images)


def sobel_gradients(gray: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Gray ``[b, h, w, 1]`` → ``(gy, gx)`` each ``[b, h, w]``: the 3×3 Sobel responses
    (unnormalised, ±[1 2 1] ⊗ [−1 0 1]) with reflected borders."""
    gradients = tf.image.sobel_edges(gray)  # [b, h, w, 1, 2]: (dy, dx)
    return gradients[:, :, :, 0, 0], gradients[:, :, :, 0, 1]


def quantised_direction(gy: tf.Tensor, gx: tf.Tensor) -> tf.Tensor:
    """Index 0..3 of the nearest of 0°, 45°, 90°, 135° to the gradient's axis (angle mod 180°)."""
    angle = tf.math.atan2(gy, gx)  # (−π, π]
    return tf.math.floormod(tf.cast(tf.round(angle / (math.pi / 4.0)), tf.int32), 4)


def _shifted(values: tf.Tensor, dy: int, dx: int) -> tf.Tensor:
    """``out[b, i, j] = values[b, i + dy, j + dx]`` (0 outside the image)."""
    padded = tf.pad(values, [[0, 0], [1, 1], [1, 1]])
    height, width = tf.shape(values)[1], tf.shape(values)[2]
    return padded[:, 1 + dy:1 + dy + height, 1 + dx:1 + dx + width]


def non_maximum_suppression(magnitude: tf.Tensor, direction: tf.Tensor) -> tf.Tensor:
    """Boolean ``[b, h, w]``: pixels whose magnitude is a maximum along their quantised gradient
    direction (strictly above the ``−offset`` neighbour, at least the ``+offset`` one)."""
    keep = tf.zeros_like(magnitude, dtype=tf.bool)
    for index, (dy, dx) in enumerate(DIRECTION_OFFSETS):
        ahead = _shifted(magnitude, dy, dx)
        behind = _shifted(magnitude, -dy, -dx)
        maximum = (magnitude > behind) & (magnitude >= ahead)
        keep |= tf.equal(direction, index) & maximum
    return keep


def edge_maps(images: tf.Tensor, threshold_fraction: float = DEFAULT_THRESHOLD_FRACTION,
              smoothing_sigma: float = 0.0) -> tf.Tensor:
    """RGB ``[b, h, w, 3]`` in [0, 1] → binary edge maps ``[b, h, w, 1]`` (float 0/1), see the
    module docstring. ``smoothing_sigma`` > 0 blurs the luma first (Canny's Gaussian)."""
    gray = luma(images)
    if smoothing_sigma > 0:
        kernel = 2 * int(math.ceil(2.0 * smoothing_sigma)) + 1  # ±2σ
        sigma = tf.fill([tf.shape(gray)[0]], tf.constant(smoothing_sigma, gray.dtype))
        gray = gaussian_blur(gray, sigma, kernel)
    gy, gx = sobel_gradients(gray)
    magnitude = tf.sqrt(tf.square(gx) + tf.square(gy))
    thin = non_maximum_suppression(magnitude, quantised_direction(gy, gx))
    largest = tf.reduce_max(magnitude, axis=[1, 2], keepdims=True)
    strong = (magnitude >= threshold_fraction * largest) & (magnitude > 0)
    return tf.cast(thin & strong, images.dtype)[..., None]
