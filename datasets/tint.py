"""Random tints of grayscale images: a stand-in for colour data on grayscale sets.

Fashion-MNIST is grayscale: read as RGB, its a*b* channels are zero everywhere, so tasks that
use colour (CMC's ab view, colorization's ab targets, split-brain's ab → L direction) have
nothing to learn from it. :func:`tint_gray_images` multiplies each gray image by one random
saturated colour (hue uniform, saturation in [0.5, 1], value 1). Not part of any paper.

What a tinted gray image can and cannot teach: the hue is random per image, so no network can
predict it from lightness; what is predictable is *where* the colour is (the garment, not the
black background, since a tint multiplies the intensity) and how strong it is (chroma grows
with the garment's lightness). A colorization network trained on it learns figure/ground and
shape, not the colour of objects.
"""

from __future__ import annotations

import tensorflow as tf

from selfsup.datasets.pipelines import with_batch_seeds

# Saturation range of the random tints (value 1, hue uniform in [0, 1)).
TINT_SATURATION = (0.5, 1.0)


def tint_gray_images(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Multiplies each gray image (R = G = B) of a batch by a random saturated colour.

    Colour images pass unchanged. ``seed``: a stateless seed ``[2]`` (deterministic per batch).
    """
    batch = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, 2)
    hue = tf.random.stateless_uniform([batch], seeds[0])
    saturation = tf.random.stateless_uniform([batch], seeds[1], *TINT_SATURATION)
    colour = tf.image.hsv_to_rgb(tf.stack([hue, saturation, tf.ones_like(hue)], axis=-1))
    spread = tf.reduce_max(images, axis=-1) - tf.reduce_min(images, axis=-1)
    gray = tf.reduce_all(tf.equal(spread, 0.0), axis=[1, 2])
    tint = tf.where(gray[:, None], colour, tf.ones_like(colour))
    return images * tint[:, None, None, :]


def tint_gray_batches(batches: tf.data.Dataset, seed: int,
                      input_context: tf.distribute.InputContext | None = None
                      ) -> tf.data.Dataset:
    """:func:`tint_gray_images` on every batch of ``batches`` with the batch's own stateless
    seed (:func:`~selfsup.datasets.pipelines.with_batch_seeds`: the same batches get the same
    tints, also in a resumed run)."""
    stream = 0 if input_context is None else input_context.input_pipeline_id
    return with_batch_seeds(batches, seed, stream).map(tint_gray_images,
                                                       num_parallel_calls=tf.data.AUTOTUNE)
