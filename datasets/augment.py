"""SimCLR-style random views of a batch of images, made with stateless TF ops.

Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations", ICML
2020, Appendix A: random resized crop (area 8–100 %, aspect ratio 3/4–4/3) with a random
horizontal flip, colour jitter (brightness, contrast, saturation 0.8·s, hue 0.2·s, applied with
probability 0.8), random grayscale (probability 0.2) and Gaussian blur (probability 0.5, σ in
[0.1, 2.0], kernel 10 % of the image side). MoCo v1/v2 (He et al. 2020; Chen et al. 2020,
"Improved Baselines with Momentum Contrastive Learning") use the same family with other
strengths; :func:`moco_augmentation` gives those.

Every op works on a whole batch ``[b, h, w, 3]`` of float RGB in [0, 1] at once, with per-image
random parameters drawn from a stateless seed (shape ``[2]``), so the same seed always gives
the same views, in eager code and inside ``tf.data``.

Choices where paper and official code differ (each a field of :class:`ViewAugmentation`):

* Brightness: the paper's pseudo-code adds a delta (``tf.image.random_brightness``); the
  official SimCLR v2 code and torchvision (MoCo) multiply by a factor. Default: multiply.
* Values are clipped to [0, 1] after every jitter op (torchvision); the paper clips once at the
  end. The four jitter ops run in the paper's fixed order (torchvision shuffles it).
* Saturation blends with the grayscale image (torchvision) rather than scaling HSV saturation.

Small images: at 28 px (Fashion-MNIST) the blur kernel, 10 % of the side, is 3 px (at least 3),
with the paper's σ range, so a strong blur averages a 3×3 neighbourhood. Fashion-MNIST is
grayscale read as RGB: saturation, hue and grayscale do nothing there, while brightness,
contrast, crop, flip and blur change the image.
"""

from __future__ import annotations

import dataclasses
import math

import tensorflow as tf

from selfsup.datasets.preprocess import gray_rgb

# Inception-style crop of SimCLR Appendix A (area fraction and aspect ratio ranges).
SIMCLR_CROP_AREA = (0.08, 1.0)
CROP_ASPECT_RATIO = (3.0 / 4.0, 4.0 / 3.0)
# MoCo's official code crops at least 20 % of the area (RandomResizedCrop(scale=(0.2, 1.0))).
MOCO_CROP_AREA = (0.2, 1.0)
# Gaussian blur of SimCLR Appendix A: σ ∈ [0.1, 2.0], kernel 10 % of the image side.
BLUR_SIGMA = (0.1, 2.0)
BLUR_KERNEL_FRACTION = 0.1
# Attempts at an in-image crop box before falling back to the whole image (Inception/torchvision).
CROP_ATTEMPTS = 10


@dataclasses.dataclass(frozen=True)
class ViewAugmentation:
    """Strengths of the SimCLR augmentation family (defaults: SimCLR on ImageNet, s = 1)."""

    crop_area: tuple[float, float] = SIMCLR_CROP_AREA
    crop_aspect_ratio: tuple[float, float] = CROP_ASPECT_RATIO
    flip_probability: float = 0.5
    brightness: float = 0.8
    contrast: float = 0.8
    saturation: float = 0.8
    hue: float = 0.2
    additive_brightness: bool = False
    jitter_probability: float = 0.8
    grayscale_probability: float = 0.2
    blur_probability: float = 0.5
    blur_sigma: tuple[float, float] = BLUR_SIGMA
    blur_kernel_fraction: float = BLUR_KERNEL_FRACTION

    def __post_init__(self) -> None:
        low, high = self.crop_area
        if not 0 < low <= high <= 1:
            raise ValueError(f"crop_area must satisfy 0 < low <= high <= 1, got {self.crop_area}")
        for name in ("flip_probability", "jitter_probability", "grayscale_probability",
                     "blur_probability"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if min(self.brightness, self.contrast, self.saturation, self.hue) < 0 or self.hue > 0.5:
            raise ValueError("jitter strengths must be >= 0 and hue <= 0.5")


def simclr_augmentation(color_strength: float = 1.0, **overrides) -> ViewAugmentation:
    """SimCLR's views with colour strength ``s`` (Appendix A: 1.0 on ImageNet, 0.5 on CIFAR)."""
    return ViewAugmentation(brightness=0.8 * color_strength, contrast=0.8 * color_strength,
                            saturation=0.8 * color_strength, hue=0.2 * color_strength,
                            **overrides)


def moco_augmentation(version: str, **overrides) -> ViewAugmentation:
    """MoCo's views: v1 jitter 0.4 (all four, always), no blur; v2 jitter (0.4, 0.4, 0.4, 0.1)
    with probability 0.8 and blur with probability 0.5 (the official code's recipes)."""
    if version == "v1":
        settings = dict(hue=0.4, jitter_probability=1.0, blur_probability=0.0)
    elif version == "v2":
        settings = dict(hue=0.1, jitter_probability=0.8, blur_probability=0.5)
    else:
        raise ValueError(f"MoCo version must be 'v1' or 'v2', got {version!r}")
    settings = dict(crop_area=MOCO_CROP_AREA, brightness=0.4, contrast=0.4, saturation=0.4,
                    grayscale_probability=0.2, **settings)
    return ViewAugmentation(**{**settings, **overrides})


def _uniform(shape, seed, low: float, high: float) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, seed, minval=low, maxval=high)


def _per_image_mask(images: tf.Tensor, seed, probability: float) -> tf.Tensor:
    """``[b, 1, 1, 1]`` booleans, True with ``probability``."""
    batch = tf.shape(images)[0]
    return tf.reshape(tf.random.stateless_uniform([batch], seed) < probability, [-1, 1, 1, 1])


def sample_crop_boxes(batch: int | tf.Tensor, seed, area_range: tuple[float, float],
                      ratio_range: tuple[float, float], image_height: int = 1,
                      image_width: int = 1) -> tf.Tensor:
    """``[b, 4]`` normalised boxes ``(y1, x1, y2, x2)`` of random area and aspect ratio.

    The area fraction is uniform in ``area_range`` and log(width/height) uniform in
    log(``ratio_range``); of ``CROP_ATTEMPTS`` candidates per image the first that fits is used,
    else the whole image. Coordinates follow ``tf.image.crop_and_resize`` (0 and 1 are the
    centres of the first and last pixel); the position is uniform over where the box fits.
    """
    shape_seed, ratio_seed, y_seed, x_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 4))
    candidates = [batch, CROP_ATTEMPTS]
    area = _uniform(candidates, shape_seed, *area_range)
    log_ratio = _uniform(candidates, ratio_seed, math.log(ratio_range[0]),
                         math.log(ratio_range[1]))
    aspect = image_height / image_width
    width = tf.sqrt(area * tf.exp(log_ratio) * aspect)
    height = tf.sqrt(area / tf.exp(log_ratio) / aspect)
    fits = (width <= 1.0) & (height <= 1.0)
    first = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)
    any_fits = tf.reduce_any(fits, axis=1)
    width = tf.where(any_fits, tf.gather(width, first, batch_dims=1), 1.0)
    height = tf.where(any_fits, tf.gather(height, first, batch_dims=1), 1.0)
    top = tf.random.stateless_uniform([batch], y_seed) * (1.0 - height)
    left = tf.random.stateless_uniform([batch], x_seed) * (1.0 - width)
    return tf.stack([top, left, top + height, left + width], axis=1)


def resize_crops(images: tf.Tensor, boxes: tf.Tensor, output_size: int) -> tf.Tensor:
    """Each image's box resampled bilinearly to ``output_size``² (one crop per image)."""
    batch = tf.shape(images)[0]
    crops = tf.image.crop_and_resize(images, boxes, tf.range(batch),
                                     [output_size, output_size], method="bilinear")
    return tf.cast(crops, images.dtype)


def random_resized_crop(images: tf.Tensor, seed, output_size: int,
                        area_range: tuple[float, float] = SIMCLR_CROP_AREA,
                        ratio_range: tuple[float, float] = CROP_ASPECT_RATIO) -> tf.Tensor:
    """Inception-style random crop of every image, resized to ``output_size``²."""
    height, width = images.shape[1], images.shape[2]
    boxes = sample_crop_boxes(tf.shape(images)[0], seed, area_range, ratio_range,
                              height or 1, width or 1)
    return resize_crops(images, boxes, output_size)


def random_flip(images: tf.Tensor, seed, probability: float = 0.5) -> tf.Tensor:
    """Mirrors each image left-right with ``probability``."""
    return tf.where(_per_image_mask(images, seed, probability), tf.reverse(images, axis=[2]),
                    images)


def random_grayscale(images: tf.Tensor, seed, probability: float = 0.2) -> tf.Tensor:
    """Replaces each image by its grayscale version with ``probability``."""
    return tf.where(_per_image_mask(images, seed, probability), gray_rgb(images), images)


def _factors(images: tf.Tensor, seed, strength: float) -> tf.Tensor:
    """Per-image multiplicative factors in [max(0, 1 − strength), 1 + strength], ``[b,1,1,1]``."""
    batch = tf.shape(images)[0]
    return tf.reshape(_uniform([batch], seed, max(0.0, 1.0 - strength), 1.0 + strength),
                      [-1, 1, 1, 1])


def color_jitter(images: tf.Tensor, seed, brightness: float, contrast: float,
                 saturation: float, hue: float, probability: float = 0.8,
                 additive_brightness: bool = False) -> tf.Tensor:
    """Random brightness, contrast, saturation and hue (in that order) with ``probability``."""
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 5))
    batch = tf.shape(images)[0]
    x = images
    if brightness > 0:
        if additive_brightness:
            delta = tf.reshape(_uniform([batch], seeds[0], -brightness, brightness),
                               [-1, 1, 1, 1])
            x = tf.clip_by_value(x + delta, 0.0, 1.0)
        else:
            x = tf.clip_by_value(x * _factors(x, seeds[0], brightness), 0.0, 1.0)
    if contrast > 0:
        mean = tf.reduce_mean(gray_rgb(x)[..., :1], axis=[1, 2, 3], keepdims=True)
        x = tf.clip_by_value((x - mean) * _factors(x, seeds[1], contrast) + mean, 0.0, 1.0)
    if saturation > 0:
        gray = gray_rgb(x)
        x = tf.clip_by_value(gray + (x - gray) * _factors(x, seeds[2], saturation), 0.0, 1.0)
    if hue > 0:
        shift = tf.reshape(_uniform([batch], seeds[3], -hue, hue), [-1, 1, 1])
        hsv = tf.image.rgb_to_hsv(x)
        rotated_hue = tf.math.floormod(hsv[..., 0] + shift, 1.0)
        x = tf.clip_by_value(tf.image.hsv_to_rgb(tf.stack([rotated_hue, hsv[..., 1],
                                                           hsv[..., 2]], axis=-1)), 0.0, 1.0)
    return tf.where(_per_image_mask(images, seeds[4], probability), x, images)


def blur_kernel_size(image_size: int, fraction: float = BLUR_KERNEL_FRACTION) -> int:
    """Odd kernel size ≈ ``fraction`` of the side, at least 3 (SimCLR: 23 px at 224 px)."""
    size = max(3, int(round(fraction * image_size)))
    return size if size % 2 else size + 1


def gaussian_blur(images: tf.Tensor, sigma: tf.Tensor, kernel_size: int) -> tf.Tensor:
    """Separable Gaussian blur with a per-image ``sigma`` ``[b]``, reflected borders."""
    radius = kernel_size // 2
    offsets = tf.range(-radius, radius + 1, dtype=images.dtype)
    sigma = tf.reshape(tf.cast(sigma, images.dtype), [-1, 1])
    weights = tf.exp(-tf.square(offsets)[None, :] / (2.0 * tf.square(sigma)))
    weights /= tf.reduce_sum(weights, axis=1, keepdims=True)          # [b, k]
    shape = tf.shape(images)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    padded = tf.pad(images, [[0, 0], [radius, radius], [radius, radius], [0, 0]], "REFLECT")
    # The batch's channels side by side as the channels of one image, so a depthwise
    # convolution gives each image its own kernel in one op (10× faster than summing shifted
    # copies, measured at 128 × 28 px in the input pipeline, issue 11).
    planes = tf.reshape(tf.transpose(padded, [1, 2, 0, 3]),
                        [1, height + 2 * radius, width + 2 * radius, batch * channels])
    taps = tf.transpose(tf.repeat(weights, channels, axis=0))        # [k, b·c]
    rows = tf.nn.depthwise_conv2d(planes, tf.reshape(taps, [1, kernel_size, -1, 1]),
                                  [1, 1, 1, 1], "VALID")
    blurred = tf.nn.depthwise_conv2d(rows, tf.reshape(taps, [kernel_size, 1, -1, 1]),
                                     [1, 1, 1, 1], "VALID")
    return tf.transpose(tf.reshape(blurred, [height, width, batch, channels]), [2, 0, 1, 3])


def random_gaussian_blur(images: tf.Tensor, seed, probability: float = 0.5,
                         sigma_range: tuple[float, float] = BLUR_SIGMA,
                         kernel_fraction: float = BLUR_KERNEL_FRACTION) -> tf.Tensor:
    """Blurs each image with ``probability``, σ uniform in ``sigma_range``."""
    sigma_seed, mask_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    sigma = _uniform([tf.shape(images)[0]], sigma_seed, *sigma_range)
    blurred = gaussian_blur(images, sigma, blur_kernel_size(images.shape[1], kernel_fraction))
    return tf.where(_per_image_mask(images, mask_seed, probability), blurred, images)


def augment(images: tf.Tensor, seed, augmentation: ViewAugmentation,
            output_size: int | None = None) -> tf.Tensor:
    """One random view of every image of ``[b, h, w, 3]`` float RGB in [0, 1]."""
    a = augmentation
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 5))
    x = random_resized_crop(images, seeds[0], output_size or images.shape[1], a.crop_area,
                            a.crop_aspect_ratio)
    x = random_flip(x, seeds[1], a.flip_probability)
    if a.jitter_probability > 0:
        x = color_jitter(x, seeds[2], a.brightness, a.contrast, a.saturation, a.hue,
                         a.jitter_probability, a.additive_brightness)
    if a.grayscale_probability > 0:
        x = random_grayscale(x, seeds[3], a.grayscale_probability)
    if a.blur_probability > 0:
        x = random_gaussian_blur(x, seeds[4], a.blur_probability, a.blur_sigma,
                                 a.blur_kernel_fraction)
    return x


def two_views(images: tf.Tensor, seed, augmentation: ViewAugmentation
              ) -> tuple[tf.Tensor, tf.Tensor]:
    """Two independent random views of every image (independent seeds)."""
    first, second = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    return augment(images, first, augmentation), augment(images, second, augmentation)


def view_pairs(batches: tf.data.Dataset, augmentation: ViewAugmentation, seed: int,
               pipeline_id: int = 0) -> tf.data.Dataset:
    """Maps a dataset of image batches to ``(view_a, view_b)`` batches.

    Batch ``i`` of input pipeline ``pipeline_id`` is augmented with a seed folded from
    ``(seed, pipeline_id)`` and ``i``: reproducible, different per batch and per pipeline, and
    resumable (skipping batches skips their seeds).
    """
    base = tf.constant([seed, pipeline_id], tf.int64)

    def make_views(index, images):
        return two_views(images, tf.random.experimental.stateless_fold_in(base, index),
                         augmentation)

    return batches.enumerate().map(make_views, num_parallel_calls=tf.data.AUTOTUNE)
