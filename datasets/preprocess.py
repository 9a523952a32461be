"""Per-image preprocessing shared by every pipeline: size, channels, dtype and range.

All pipelines hand the models float32 RGB images in [0, 1]; grayscale and RGBA sources are
converted here and nowhere else.
"""

from __future__ import annotations

import tensorflow as tf


def to_rgb(image: tf.Tensor) -> tf.Tensor:
    """Makes an ``[..., h, w, c]`` image 3-channel: gray is repeated, alpha is dropped."""
    channels = image.shape[-1]
    if channels == 3:
        return image
    if channels == 1:
        return tf.image.grayscale_to_rgb(image)
    if channels == 4:
        return image[..., :3]
    if channels is None:
        raise ValueError("images need a static channel count to be converted to RGB")
    raise ValueError(f"cannot turn a {channels}-channel image into RGB")


def to_float_rgb(image: tf.Tensor) -> tf.Tensor:
    """uint8 (or float in [0, 1]) image or batch → float32 RGB in [0, 1]."""
    image = to_rgb(image)
    if image.dtype == tf.uint8:
        return tf.image.convert_image_dtype(image, tf.float32)
    return tf.cast(image, tf.float32)


def resize_square(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Resizes a uint8 ``[h, w, c]`` image to ``image_size²``: shorter side, then centre crop.

    Images already of that size pass through untouched (Fashion-MNIST at 28 px), so no
    resampling blurs them; rotation-based tasks need the square output.
    """
    if image.shape[0] == image_size and image.shape[1] == image_size:
        return image
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    scale = image_size / tf.minimum(height, width)
    new_size = tf.cast(tf.math.ceil(tf.stack([height, width]) * scale), tf.int32)
    resized = tf.image.resize(image, new_size, antialias=True)
    cropped = tf.image.resize_with_crop_or_pad(resized, image_size, image_size)
    return tf.cast(tf.clip_by_value(tf.round(cropped), 0.0, 255.0), tf.uint8)


# ITU-R BT.601 luma, the weights of tf.image.rgb_to_grayscale.
LUMA_WEIGHTS = (0.2989, 0.5870, 0.1140)


def gray_rgb(images: tf.Tensor) -> tf.Tensor:
    """RGB ``[..., 3]`` → RGB with all three channels set to the luma (any leading dims)."""
    luma = tf.reduce_sum(images * tf.constant(LUMA_WEIGHTS, images.dtype), -1, keepdims=True)
    return tf.broadcast_to(luma, tf.shape(images))
