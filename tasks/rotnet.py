"""RotNet: predict which of four rotations was applied to an image.

Gidaris, Singh & Komodakis, "Unsupervised Representation Learning by Predicting Image
Rotations", ICLR 2018. Every image enters the batch in all four rotations (0°, 90°, 180°,
270°, exact ``rot90``), label = rotation index 0..3 in that order, as in the paper's reference
code; a 4-way linear classifier sits on the pooled encoder features.
"""

from __future__ import annotations

import tensorflow as tf

from selfsup.models.heads import LinearClassifier
from selfsup.tasks.base import TASKS, PretextModel, Task, TaskConfig

NUM_ROTATIONS = 4  # 0, 90, 180, 270 degrees (Gidaris et al. 2018, §2.2)


def rotate_batch(images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """``[b, s, s, c]`` square images → ``([4b, s, s, c]`` rotations, ``[4b]`` labels``)``.

    Output row ``4 * i + k`` is image ``i`` rotated counter-clockwise by ``k × 90°`` and its label
    is ``k``. Vectorised over the batch: four ``tf.image.rot90`` calls, no per-image work.
    """
    rotations = [tf.image.rot90(images, k) for k in range(NUM_ROTATIONS)]
    stacked = tf.stack(rotations, axis=1)
    batch = tf.shape(images)[0]
    rotated = tf.reshape(stacked, tf.concat([[batch * NUM_ROTATIONS], tf.shape(images)[1:]], 0))
    labels = tf.tile(tf.range(NUM_ROTATIONS, dtype=tf.int64), [batch])
    return rotated, labels


class RotNetTask(Task):
    """RotNet pretext task (Gidaris et al. 2018): 4-way rotation classification."""

    config_class = TaskConfig

    def build_model(self) -> PretextModel:
        return PretextModel(self.build_backbone(), LinearClassifier(NUM_ROTATIONS, name="head"),
                            name="rotnet")

    def build_inputs(self, input_context: tf.distribute.InputContext | None = None
                     ) -> tf.data.Dataset:
        images = self.training_images(input_context)
        return images.map(rotate_batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
            tf.data.AUTOTUNE)


TASKS.register("rotnet", RotNetTask)
