"""SimCLR-style views: ranges, determinism, and each op against a numpy reference."""

import math

import numpy as np
import pytest
import tensorflow as tf

from selfsup.datasets import augment

SEED = tf.constant([3, 7], tf.int64)


def _images(batch=6, size=28, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(size=(batch, size, size, 3)).astype(np.float32)


def numpy_crop_and_resize(image: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resampling of a normalised box whose 0 and 1 are first/last pixel centres."""
    height, width, _ = image.shape
    y1, x1, y2, x2 = box.astype(np.float64)
    out = np.zeros((size, size, image.shape[2]))
    for i in range(size):
        y = y1 * (height - 1) + i * (y2 - y1) * (height - 1) / (size - 1)
        top, bottom = math.floor(y), min(math.floor(y) + 1, height - 1)
        dy = y - top
        for j in range(size):
            x = x1 * (width - 1) + j * (x2 - x1) * (width - 1) / (size - 1)
            left, right = math.floor(x), min(math.floor(x) + 1, width - 1)
            dx = x - left
            upper = image[top, left] * (1 - dx) + image[top, right] * dx
            lower = image[bottom, left] * (1 - dx) + image[bottom, right] * dx
            out[i, j] = upper * (1 - dy) + lower * dy
    return out


def numpy_gaussian_blur(image: np.ndarray, sigma: float, kernel_size: int) -> np.ndarray:
    """Direct 2-D convolution with the outer product of a 1-D Gaussian, reflected borders."""
    radius = kernel_size // 2
    taps = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma ** 2))
    kernel = np.outer(taps, taps) / taps.sum() ** 2
    padded = np.pad(image.astype(np.float64), [(radius, radius), (radius, radius), (0, 0)],
                    mode="reflect")
    out = np.zeros(image.shape)
    for y in range(image.shape[0]):
        for x in range(image.shape[1]):
            window = padded[y:y + kernel_size, x:x + kernel_size]
            out[y, x] = np.tensordot(kernel, window, axes=([0, 1], [0, 1]))
    return out


def test_views_keep_shape_dtype_and_the_unit_range():
    images = _images()
    for augmentation in (augment.ViewAugmentation(), augment.simclr_augmentation(0.5),
                         augment.moco_augmentation("v1"), augment.moco_augmentation("v2")):
        view = augment.augment(tf.constant(images), SEED, augmentation)
        assert view.shape == images.shape and view.dtype == tf.float32
        assert 0.0 <= float(tf.reduce_min(view)) and float(tf.reduce_max(view)) <= 1.0


def test_the_same_seed_gives_the_same_views_and_another_seed_other_views():
    images = tf.constant(_images())
    augmentation = augment.simclr_augmentation()
    first = augment.two_views(images, SEED, augmentation)
    again = augment.two_views(images, SEED, augmentation)
    other = augment.two_views(images, tf.constant([3, 8], tf.int64), augmentation)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert np.abs(first[0].numpy() - other[0].numpy()).mean() > 0.05


def test_the_two_views_of_every_image_differ():
    view_a, view_b = augment.two_views(tf.constant(_images(batch=16)), SEED,
                                       augment.simclr_augmentation(0.5))
    per_image = np.abs(view_a.numpy() - view_b.numpy()).mean(axis=(1, 2, 3))
    assert per_image.min() > 1e-3


def test_crop_resamples_its_box_like_a_numpy_bilinear_reference():
    images = _images(batch=4, size=12)
    boxes = augment.sample_crop_boxes(4, SEED, (0.08, 1.0), augment.CROP_ASPECT_RATIO, 12, 12)
    crops = augment.random_resized_crop(tf.constant(images), SEED, 9, (0.08, 1.0))
    assert crops.shape == (4, 9, 9, 3)
    for image, box, crop in zip(images, boxes.numpy(), crops.numpy(), strict=True):
        np.testing.assert_allclose(crop, numpy_crop_and_resize(image, box, 9), atol=1e-5)


def test_an_integer_aligned_box_at_its_own_size_is_a_plain_slice():
    images = _images(batch=1, size=10)
    # Rows 2..7 and columns 3..8 (0 and 1 are the centres of pixels 0 and 9): 6 × 6 pixels.
    box = np.array([[2 / 9, 3 / 9, 7 / 9, 8 / 9]], np.float32)
    crop = augment.resize_crops(tf.constant(images), tf.constant(box), 6).numpy()
    np.testing.assert_allclose(crop[0], images[0, 2:8, 3:9], atol=1e-6)


def test_crop_boxes_lie_inside_the_image_with_area_and_aspect_ratio_in_range():
    boxes = augment.sample_crop_boxes(4000, SEED, (0.2, 1.0), (3 / 4, 4 / 3)).numpy()
    top, left, bottom, right = boxes.T
    assert boxes.min() >= 0.0 and boxes.max() <= 1.0 + 1e-6
    height, width = bottom - top, right - left
    area, ratio = height * width, width / height
    assert area.min() >= 0.2 - 1e-5 and area.max() <= 1.0 + 1e-5
    whole = np.isclose(area, 1.0, atol=1e-6)   # the fall-back when no candidate fits
    assert whole.mean() < 0.05
    assert ratio[~whole].min() >= 3 / 4 - 1e-4 and ratio[~whole].max() <= 4 / 3 + 1e-4
    # Positions spread over the free room: a uniform offset has mean 1/2 of the room.
    room = 1.0 - height
    moved = room > 0.2
    assert abs((top[moved] / room[moved]).mean() - 0.5) < 0.05


def test_flip_mirrors_or_keeps_each_image_and_does_both():
    images = _images(batch=32)
    flipped = augment.random_flip(tf.constant(images), SEED, 0.5).numpy()
    mirrored = [np.array_equal(f, i[:, ::-1]) for f, i in zip(flipped, images, strict=True)]
    kept = [np.array_equal(f, i) for f, i in zip(flipped, images, strict=True)]
    assert all(m or k for m, k in zip(mirrored, kept, strict=True))
    assert 4 <= sum(mirrored) <= 28


def test_grayscale_uses_the_luma_weights_on_all_three_channels():
    images = _images(batch=3)
    gray = augment.random_grayscale(tf.constant(images), SEED, probability=1.0).numpy()
    luma = 0.2989 * images[..., 0] + 0.5870 * images[..., 1] + 0.1140 * images[..., 2]
    for channel in range(3):
        np.testing.assert_allclose(gray[..., channel], luma, atol=1e-6)


def test_blur_matches_a_numpy_gaussian_with_reflected_borders():
    images = _images(batch=2, size=9)
    sigmas = [0.6, 1.7]
    blurred = augment.gaussian_blur(tf.constant(images), tf.constant(sigmas), 5).numpy()
    for image, sigma, out in zip(images, sigmas, blurred, strict=True):
        np.testing.assert_allclose(out, numpy_gaussian_blur(image, sigma, 5), atol=1e-5)


def test_blur_kernel_is_an_odd_tenth_of_the_side_and_at_least_three():
    assert augment.blur_kernel_size(224) == 23  # SimCLR Appendix A
    assert augment.blur_kernel_size(28) == 3
    assert augment.blur_kernel_size(64) == 7
    assert augment.blur_kernel_size(96) == 11


def test_brightness_scales_each_image_by_one_factor_within_its_range():
    images = 0.4 * _images(batch=8)   # dark enough never to clip at 1.4×
    out = augment.color_jitter(tf.constant(images), SEED, brightness=0.4, contrast=0.0,
                               saturation=0.0, hue=0.0, probability=1.0).numpy()
    for image, result in zip(images, out, strict=True):
        factors = result / image
        assert np.ptp(factors) < 1e-4
        assert 0.6 - 1e-5 <= factors.mean() <= 1.4 + 1e-5


def test_contrast_keeps_each_images_mean_gray_level():
    images = 0.25 + 0.5 * _images(batch=8)   # mid-range: a ±30 % contrast change never clips
    out = augment.color_jitter(tf.constant(images), SEED, brightness=0.0, contrast=0.3,
                               saturation=0.0, hue=0.0, probability=1.0).numpy()
    luma = np.array([0.2989, 0.5870, 0.1140])
    # The luma weights sum to 0.9999, not 1: the mean moves by at most ~1e-4 × |f − 1|.
    np.testing.assert_allclose((out @ luma).mean(axis=(1, 2)), (images @ luma).mean(axis=(1, 2)),
                               atol=5e-5)
    assert np.abs(out - images).mean() > 1e-3


def test_hue_rotation_keeps_each_pixels_max_and_min_channel():
    images = _images(batch=4)
    out = augment.color_jitter(tf.constant(images), SEED, brightness=0.0, contrast=0.0,
                               saturation=0.0, hue=0.5, probability=1.0).numpy()
    # Rotating the hue permutes/mixes channels but keeps value (max) and max − min.
    np.testing.assert_allclose(out.max(axis=-1), images.max(axis=-1), atol=1e-5)
    np.testing.assert_allclose(out.min(axis=-1), images.min(axis=-1), atol=1e-5)
    assert np.abs(out - images).mean() > 1e-2


def test_colour_jitter_keeps_gray_images_gray_and_probability_zero_changes_nothing():
    gray = np.repeat(_images(batch=4)[..., :1], 3, axis=-1)
    jittered = augment.color_jitter(tf.constant(gray), SEED, 0.8, 0.8, 0.8, 0.2,
                                    probability=1.0).numpy()
    np.testing.assert_allclose(jittered[..., 0], jittered[..., 2], atol=1e-5)
    assert np.abs(jittered - gray).mean() > 1e-2
    untouched = augment.color_jitter(tf.constant(gray), SEED, 0.8, 0.8, 0.8, 0.2,
                                     probability=0.0).numpy()
    np.testing.assert_array_equal(untouched, gray)


def test_bad_strengths_are_rejected():
    with pytest.raises(ValueError, match="crop_area"):
        augment.ViewAugmentation(crop_area=(0.0, 1.0))
    with pytest.raises(ValueError, match="blur_probability"):
        augment.ViewAugmentation(blur_probability=1.5)
    with pytest.raises(ValueError, match="'v1' or 'v2'"):
        augment.moco_augmentation("v3")
