"""Input layer: offline Fashion-MNIST through tfds, image folders, channel/size conversion."""

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from selfsup.datasets import open_source, resize_square, to_float_rgb, training_images
from selfsup.datasets.fashion_mnist_local import local_source_dir


def _read_idx_labels(path):
    import gzip

    with gzip.open(path) as f:
        return np.frombuffer(f.read()[8:], np.uint8)


def test_fashion_mnist_is_the_standard_tfds_dataset_from_debian_files():
    source = open_source("fashion_mnist")
    assert source.builder.name == "fashion_mnist" and source.num_classes == 10
    assert source.num_examples("train") == 60_000 and source.num_examples("test") == 10_000
    # Plain tfds sees it prepared (no download) with the labels of the original IDX file.
    test = tfds.load("fashion_mnist", split="test", download=False, as_supervised=True)
    labels = np.array([int(label) for _, label in test.take(200)])
    idx_labels = _read_idx_labels(local_source_dir() / "t10k-labels-idx1-ubyte.gz")
    assert sorted(labels.tolist()) != labels.tolist()  # not a trivial order
    assert np.isin(labels, idx_labels).all() and len(idx_labels) == 10_000


def test_grayscale_and_rgba_become_rgb_in_unit_range():
    gray = tf.constant([[[0], [255]]], tf.uint8)
    rgba = tf.constant([[[10, 20, 30, 255]]], tf.uint8)
    np.testing.assert_allclose(to_float_rgb(gray).numpy(), [[[0, 0, 0], [1, 1, 1]]])
    np.testing.assert_allclose(to_float_rgb(rgba).numpy(), [[[10 / 255, 20 / 255, 30 / 255]]],
                               rtol=1e-6)


def test_resize_square_keeps_same_size_images_untouched_and_crops_the_centre():
    image = tf.constant(np.arange(28 * 28, dtype=np.uint8).reshape(28, 28, 1))
    assert resize_square(image, 28) is image
    wide = np.zeros((10, 20, 3), np.uint8)
    wide[:, 5:15] = 255  # the centre square is white, the sides black
    out = resize_square(tf.constant(wide), 10).numpy()
    assert out.shape == (10, 10, 3) and out.min() == 255


def test_image_folder_of_mixed_images_gives_rgb_batches(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in ("cats", "dogs"):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            for i, (size, channels) in enumerate([((30, 40), 3), ((50, 20), 1), ((16, 16), 4)]):
                pixels = rng.integers(0, 256, (*size, channels), dtype=np.uint8)
                (folder / f"{i}.png").write_bytes(tf.io.encode_png(pixels).numpy())
    source = open_source(f"image_folder:{tmp_path}")
    assert source.num_classes == 2 and source.num_examples("train") == 6
    batch = next(iter(training_images(source, "train", 24, batch_size=6, seed=0)))
    assert batch.shape == (6, 24, 24, 3) and batch.dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(batch)) and float(tf.reduce_max(batch)) <= 1.0
