"""Hole masks for inpainting (the context encoder), made in-graph and vectorised over the batch.

Pathak, Krähenbühl, Donahue, Darrell & Efros, "Context Encoders: Feature Learning by
Inpainting", CVPR 2016, §3.3 ("Region masks"):

* :func:`central_holes`: the *central region*, a centred square of half the image side (a
  quarter of the image; 64 × 64 of the official code's 128 × 128 images).
* :func:`random_block_holes`: *random blocks*: "a number of smaller possibly overlapping masks,
  covering up to 1/4 of the image" (§3.3). The paper gives no more detail, so the rule here is:
  ``num_blocks`` = 8 rectangles per image, each side an integer drawn uniformly in
  [round(s/8), round(s/4)] px (s = image side) and placed uniformly inside the image; the
  blocks are added in order and a block that would take the union past ``max_coverage`` = 1/4
  of the pixels is skipped, so coverage never exceeds 1/4. Measured at 28 px: mean coverage
  23 %, 5th–95th percentile 21–25 % (the official code's random-region masks are drawn until
  their coverage lies in 20–30 %, ``train_random.lua``).

Masks are float32 ``[b, s, s, 1]`` with 1 on the hole. :func:`dilate` grows a hole by a band of
``pixels`` (square neighbourhood), the region the official code predicts around the hole
(``overlapPred``); :func:`overlap_loss_weights` turns hole and band into the loss weights, and
:func:`fill_holes` sets the hole to a constant (the paper: "filled with constant mean value").
"""

from __future__ import annotations

import tensorflow as tf

# Pathak et al. 2016, §3.3: the masks cover up to a quarter of the image.
MAX_COVERAGE = 0.25
# The rule for random blocks (see the module docstring): how many, and their side range as a
# fraction of the image side.
NUM_BLOCKS = 8
BLOCK_SIDE_RANGE = (1 / 8, 1 / 4)


def central_holes(batch: int | tf.Tensor, image_size: int) -> tf.Tensor:
    """``[batch, s, s, 1]``: 1 on the centred square of side ``s // 2`` (rows and columns
    ``(s - s//2) // 2`` to ``(s - s//2) // 2 + s//2 - 1``), 0 elsewhere."""
    side = image_size // 2
    start = (image_size - side) // 2
    inside = tf.logical_and(tf.range(image_size) >= start, tf.range(image_size) < start + side)
    square = tf.cast(tf.logical_and(inside[:, None], inside[None, :]), tf.float32)
    return tf.tile(square[None, :, :, None], [batch, 1, 1, 1])


def block_side_limits(image_size: int,
                      side_range: tuple[float, float] = BLOCK_SIDE_RANGE) -> tuple[int, int]:
    """The smallest and largest block side in pixels at ``image_size`` (at least 1 px)."""
    low = max(1, round(image_size * side_range[0]))
    return low, max(low, round(image_size * side_range[1]))


def random_block_holes(batch: int | tf.Tensor, image_size: int, seed: tf.Tensor,
                       num_blocks: int = NUM_BLOCKS, max_coverage: float = MAX_COVERAGE,
                       side_range: tuple[float, float] = BLOCK_SIDE_RANGE) -> tf.Tensor:
    """``[batch, s, s, 1]`` union of random rectangles per image (see the module docstring).

    ``seed``: a stateless seed ``[2]``; each image gets its own blocks. Vectorised over the
    batch; the (few) blocks are added one after the other so the coverage cap can skip one.
    """
    low, high = block_side_limits(image_size, side_range)
    seeds = tf.random.experimental.stateless_split(seed, 4)
    shape = [batch, num_blocks]
    heights = tf.random.stateless_uniform(shape, seeds[0], low, high + 1, dtype=tf.int32)
    widths = tf.random.stateless_uniform(shape, seeds[1], low, high + 1, dtype=tf.int32)
    # Top-left corners uniform over the positions that keep the block inside the image.
    tops = tf.cast(tf.random.stateless_uniform(shape, seeds[2])
                   * tf.cast(image_size - heights + 1, tf.float32), tf.int32)
    lefts = tf.cast(tf.random.stateless_uniform(shape, seeds[3])
                    * tf.cast(image_size - widths + 1, tf.float32), tf.int32)
    positions = tf.range(image_size)
    rows = tf.logical_and(positions >= tops[..., None], positions < (tops + heights)[..., None])
    cols = tf.logical_and(positions >= lefts[..., None],
                          positions < (lefts + widths)[..., None])
    blocks = tf.logical_and(rows[..., :, None], cols[..., None, :])  # [b, k, s, s]
    limit = int(max_coverage * image_size * image_size)
    holes = tf.zeros([batch, image_size, image_size], tf.bool)
    for index in range(num_blocks):
        grown = tf.logical_or(holes, blocks[:, index])
        fits = tf.reduce_sum(tf.cast(grown, tf.int32), axis=[1, 2]) <= limit
        holes = tf.where(fits[:, None, None], grown, holes)
    return tf.cast(holes, tf.float32)[..., None]


def dilate(masks: tf.Tensor, pixels: int) -> tf.Tensor:
    """``masks`` ``[b, h, w, 1]`` grown by ``pixels`` in every direction (a square, Chebyshev
    neighbourhood, so rectangles stay rectangles ``2·pixels`` larger); clipped at the border."""
    if pixels <= 0:
        return masks
    return tf.nn.max_pool2d(masks, ksize=2 * pixels + 1, strides=1, padding="SAME")


def overlap_loss_weights(holes: tf.Tensor, overlap: int, overlap_weight: float) -> tf.Tensor:
    """Per-pixel weights of the reconstruction loss: 1 on the hole, ``overlap_weight`` on the
    band of ``overlap`` px around it (visible in the input), 0 elsewhere."""
    band = dilate(holes, overlap) - holes
    return holes + overlap_weight * band


def fill_holes(images: tf.Tensor, holes: tf.Tensor, fill_value) -> tf.Tensor:
    """``images`` with every channel of the hole pixels set to ``fill_value`` (a scalar or a
    per-channel ``[c]`` vector)."""
    fill = tf.cast(fill_value, images.dtype) * tf.ones_like(images)
    return images * (1.0 - holes) + fill * holes
