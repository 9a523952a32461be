"""Quantised colour targets: the 313 ab bins of Zhang et al. and the maths around them.

Zhang, Isola & Efros, "Colorful Image Colorization", ECCV 2016 (§2.1 and §3.1):

  * ab space is quantised on a grid of size 10 and only the Q = 313 in-gamut cells are kept.
    The bin centres are the authors' released set (``pts_in_hull.npy`` of the official code),
    written below as one contiguous b range per a value. Deriving the cells from the exact sRGB
    gamut at grid 10 gives only 262 cells; the published 313 are a superset with a margin at the
    rim (tests/test_color_bins.py checks that every sRGB colour's cell is among them).
  * Soft encoding (§2.1): each ab value becomes Gaussian weights (σ = 5) over its k nearest bin
    centres, normalised to sum 1. The paper says k = 5; the official training code uses 10.
  * Class rebalancing (§2.1, eq. 3–4): with p̃ the empirical bin distribution smoothed by a
    Gaussian (σ = 5) over ab space, w ∝ ((1 − λ) p̃ + λ / Q)⁻¹ with λ = 0.5, normalised so
    that the expected weight under p̃ is 1 (Σ p̃·w = 1).
  * Annealed mean (§2.2): f_T(z) ∝ exp(log z / T) with T = 0.38, ab = Σ f_T(z)·bin centre.
  * Grayscale images (every pixel |a| ≤ 5 and |b| ≤ 5) are masked out of training (§3.1).

Split-brain autoencoders (Zhang, Isola & Efros, CVPR 2017, §4) also predict L from ab as
classification over L quantised into 50 bins (width 2 over [0, 100]).

Everything here is vectorised TF (or numpy for the constant tables): no loop per pixel or image.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

AB_GRID_SIZE = 10.0
NUM_AB_BINS = 313
# The released in-gamut bin set of Zhang et al. 2016 (pts_in_hull.npy): for each a (step 10)
# the inclusive range of b (step 10). 313 centres in all.
AB_BIN_RANGES = {
    -90: (50, 90), -80: (20, 90), -70: (0, 90), -60: (-20, 90), -50: (-30, 100),
    -40: (-40, 100), -30: (-50, 100), -20: (-50, 100), -10: (-60, 100), 0: (-70, 100),
    10: (-80, 90), 20: (-80, 90), 30: (-90, 90), 40: (-100, 90), 50: (-100, 80),
    60: (-110, 80), 70: (-110, 80), 80: (-110, 70), 90: (-110, 70), 100: (-90, 0),
}
# Zhang et al. 2016, §2.1: the Gaussian of the soft encoding and of the prior smoothing.
SOFT_ENCODING_SIGMA = 5.0
PRIOR_SMOOTHING_SIGMA = 5.0
# §2.1: nearest neighbours of the soft encoding (the official training code uses 10).
SOFT_ENCODING_NEIGHBOURS = 5
# §2.1, eq. 4: the mixing weight of the uniform distribution in the rebalancing weights.
REBALANCING_LAMBDA = 0.5
# §2.2: the annealed-mean temperature.
ANNEALED_MEAN_TEMPERATURE = 0.38
# §3.1: images whose every pixel has |a| and |b| at most this are grayscale (masked out).
GRAYSCALE_AB_THRESHOLD = 5.0
# Zhang et al. 2017, §4: L in [0, 100] quantised into 50 bins.
NUM_L_BINS = 50
LIGHTNESS_RANGE = 100.0


def ab_bin_centres() -> np.ndarray:
    """The Q = 313 ab bin centres ``[313, 2]`` (a, b), ordered by a, then b."""
    rows = [(a, b) for a, (low, high) in sorted(AB_BIN_RANGES.items())
            for b in range(low, high + 1, int(AB_GRID_SIZE))]
    return np.asarray(rows, np.float32)


def _squared_distances(ab: tf.Tensor, centres: tf.Tensor) -> tf.Tensor:
    """``[..., Q]`` squared distances from each ab value ``[..., 2]`` to each centre."""
    ab = tf.convert_to_tensor(ab, tf.float32)
    centres = tf.convert_to_tensor(centres, tf.float32)
    return tf.reduce_sum(tf.square(ab[..., None, :] - centres), axis=-1)


def nearest_ab_bin(ab: tf.Tensor, centres: tf.Tensor | np.ndarray | None = None) -> tf.Tensor:
    """Index ``[...]`` (int32) of the nearest bin centre of each ab value ``[..., 2]``."""
    centres = ab_bin_centres() if centres is None else centres
    return tf.argmin(_squared_distances(ab, centres), axis=-1, output_type=tf.int32)


def nearest_bins_and_weights(ab: tf.Tensor, centres: tf.Tensor | np.ndarray | None = None,
                             neighbours: int = SOFT_ENCODING_NEIGHBOURS,
                             sigma: float = SOFT_ENCODING_SIGMA) -> tuple[tf.Tensor, tf.Tensor]:
    """The soft encoding in sparse form: for each ab value ``[..., 2]``, the indices
    ``[..., k]`` (int32) of its ``k = neighbours`` nearest centres, nearest first, and their
    Gaussian weights ``[..., k]`` (σ = ``sigma``), normalised to sum 1 (Zhang et al. 2016,
    §2.1). Keeps targets at k values per pixel instead of Q."""
    centres = ab_bin_centres() if centres is None else centres
    negative, indices = tf.math.top_k(-_squared_distances(ab, centres), k=neighbours)
    # Subtracting the nearest distance before exp keeps far-away values from underflowing.
    weights = tf.exp((negative - negative[..., :1]) / (2.0 * sigma ** 2))
    return indices, weights / tf.reduce_sum(weights, axis=-1, keepdims=True)


def soft_encode_ab(ab: tf.Tensor, centres: tf.Tensor | np.ndarray | None = None,
                   neighbours: int = SOFT_ENCODING_NEIGHBOURS,
                   sigma: float = SOFT_ENCODING_SIGMA) -> tf.Tensor:
    """Soft targets ``[..., Q]``: Gaussian weights over the ``neighbours`` nearest centres of
    each ab value ``[..., 2]``, normalised to sum 1 (Zhang et al. 2016, §2.1)."""
    centres = ab_bin_centres() if centres is None else centres
    indices, weights = nearest_bins_and_weights(ab, centres, neighbours, sigma)
    num_bins = int(np.shape(centres)[0])
    flat_indices = tf.reshape(indices, [-1, neighbours])
    rows = tf.broadcast_to(tf.range(tf.shape(flat_indices)[0])[:, None], tf.shape(flat_indices))
    dense = tf.scatter_nd(tf.stack([rows, flat_indices], axis=-1),
                          tf.reshape(weights, [-1, neighbours]),
                          tf.stack([tf.shape(flat_indices)[0], num_bins]))
    return tf.reshape(dense, tf.concat([tf.shape(indices)[:-1], [num_bins]], axis=0))


def bin_histogram(bins: tf.Tensor, weights: tf.Tensor, num_bins: int = NUM_AB_BINS
                  ) -> tf.Tensor:
    """``[num_bins]`` float sums of ``weights`` per bin index (same shapes)."""
    return tf.math.unsorted_segment_sum(tf.reshape(tf.cast(weights, tf.float32), [-1]),
                                        tf.reshape(bins, [-1]), num_bins)


def smooth_bin_distribution(distribution: tf.Tensor, centres: tf.Tensor | np.ndarray | None = None,
                            sigma: float = PRIOR_SMOOTHING_SIGMA) -> tf.Tensor:
    """The distribution over bins ``[Q]`` convolved with a Gaussian over ab space, renormalised.

    p̃_j ∝ Σ_i p_i exp(−|c_j − c_i|² / 2σ²): the smoothing of a histogram on the ab grid by
    a Gaussian kernel, evaluated at the bin centres (mass smoothed onto cells outside the 313 is
    dropped by the renormalisation, as when the official code smooths a grid histogram).
    """
    centres = ab_bin_centres() if centres is None else centres
    kernel = tf.exp(-_squared_distances(centres, centres) / (2.0 * sigma ** 2))
    smoothed = tf.linalg.matvec(kernel, tf.cast(distribution, tf.float32))
    return smoothed / tf.reduce_sum(smoothed)


def rebalancing_weights(smoothed: tf.Tensor, mixing: float = REBALANCING_LAMBDA) -> tf.Tensor:
    """w ∝ ((1 − λ) p̃ + λ / Q)⁻¹, scaled so that Σ p̃·w = 1 (Zhang et al. 2016, eq. 4)."""
    smoothed = tf.cast(smoothed, tf.float32)
    num_bins = tf.cast(tf.shape(smoothed)[0], tf.float32)
    weights = 1.0 / ((1.0 - mixing) * smoothed + mixing / num_bins)
    return weights / tf.reduce_sum(smoothed * weights)


def annealed_mean(probabilities: tf.Tensor, centres: tf.Tensor | np.ndarray | None = None,
                  temperature: float = ANNEALED_MEAN_TEMPERATURE) -> tf.Tensor:
    """ab ``[..., 2]`` from bin probabilities ``[..., Q]``: the mean of f_T(z) ∝ exp(log z / T)
    (Zhang et al. 2016, §2.2): T = 1 is the mean, T → 0 the mode."""
    centres = ab_bin_centres() if centres is None else centres
    log_z = tf.math.log(tf.maximum(tf.cast(probabilities, tf.float32), 1e-30))
    return annealed_mean_from_logits(log_z, centres, temperature)


def annealed_mean_from_logits(logits: tf.Tensor, centres: tf.Tensor | np.ndarray | None = None,
                              temperature: float = ANNEALED_MEAN_TEMPERATURE) -> tf.Tensor:
    """:func:`annealed_mean` of ``softmax(logits)``: f_T = softmax(logits / T)."""
    centres = ab_bin_centres() if centres is None else centres
    annealed = tf.nn.softmax(tf.cast(logits, tf.float32) / temperature, axis=-1)
    return tf.linalg.matmul(annealed, tf.convert_to_tensor(centres, tf.float32))


def grayscale_mask(ab: tf.Tensor, threshold: float = GRAYSCALE_AB_THRESHOLD) -> tf.Tensor:
    """``[b]`` float: 0 for images ``[b, h, w, 2]`` whose every pixel has |a|, |b| ≤
    ``threshold`` (grayscale, Zhang et al. 2016 §3.1), else 1."""
    chroma = tf.reduce_max(tf.abs(ab), axis=[1, 2, 3])
    return tf.cast(chroma > threshold, tf.float32)


def quantize_lightness(lightness: tf.Tensor, num_bins: int = NUM_L_BINS) -> tf.Tensor:
    """L in [0, 100] → bin index (int32) of ``num_bins`` equal bins (the top edge joins the
    last bin)."""
    width = LIGHTNESS_RANGE / num_bins
    index = tf.floor(tf.cast(lightness, tf.float32) / width)
    return tf.cast(tf.clip_by_value(index, 0.0, num_bins - 1.0), tf.int32)


def lightness_bin_centres(num_bins: int = NUM_L_BINS) -> np.ndarray:
    """``[num_bins]`` centres of the L bins of :func:`quantize_lightness`."""
    width = LIGHTNESS_RANGE / num_bins
    return (np.arange(num_bins, dtype=np.float32) + 0.5) * width
