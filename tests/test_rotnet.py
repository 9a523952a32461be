"""RotNet pseudo-labels: exact rotations, every image in all four, labels in order."""

import numpy as np
import tensorflow as tf

from selfsup.tasks import TaskConfig, task_class
from selfsup.tasks.rotnet import NUM_ROTATIONS, rotate_batch


def test_rotating_back_by_the_label_restores_the_input_exactly():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 7, 7, 3)).astype(np.float32)
    rotated, labels = rotate_batch(tf.constant(images))
    rotated, labels = rotated.numpy(), labels.numpy()
    assert rotated.shape == (5 * NUM_ROTATIONS, 7, 7, 3)
    for row in range(rotated.shape[0]):
        # np.rot90 with a negative k turns clockwise: the inverse of the counter-clockwise k.
        restored = np.rot90(rotated[row], k=-int(labels[row]), axes=(0, 1))
        np.testing.assert_array_equal(restored, images[row // NUM_ROTATIONS])


def test_every_image_appears_in_all_four_rotations_labelled_in_order():
    images = tf.reshape(tf.range(2 * 3 * 3, dtype=tf.float32), [2, 3, 3, 1])
    rotated, labels = rotate_batch(images)
    np.testing.assert_array_equal(labels.numpy().reshape(2, 4), [[0, 1, 2, 3]] * 2)
    first = images.numpy()[0, :, :, 0]
    # Hand-worked: 90° counter-clockwise moves the top row to the left column, reversed.
    np.testing.assert_array_equal(rotated.numpy()[1, :, :, 0], [[2, 5, 8], [1, 4, 7], [0, 3, 6]])
    np.testing.assert_array_equal(rotated.numpy()[2, :, :, 0], first[::-1, ::-1])
    assert not np.array_equal(rotated.numpy()[1], rotated.numpy()[3])


def test_pipeline_gives_rotated_fashion_mnist_batches():
    task = task_class("rotnet")(TaskConfig(global_batch_size=8))
    images, labels = next(iter(task.build_inputs()))
    assert images.shape == (32, 28, 28, 3) and images.dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1.0
    np.testing.assert_array_equal(labels.numpy(), np.tile(np.arange(4), 8))
    # Grayscale source made RGB: the three channels are equal.
    np.testing.assert_array_equal(images[..., 0].numpy(), images[..., 2].numpy())
