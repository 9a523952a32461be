"""3DRotNet: predict which of four rotations was applied to every frame of a clip.

Jing, Yang, Liu & Tian, "Self-Supervised Spatiotemporal Feature Learning via Video Rotation
Prediction", arXiv:1811.11387, 2018. Every frame of a clip is rotated by the same angle (0°, 90°,
180° or 270°), and a 3D ConvNet classifies the rotation from the whole clip, so it has to know
which way is up in moving scenes. As in RotNet for images (:mod:`selfsup.tasks.rotnet`,
Gidaris et al. 2018), every clip enters the batch in all four rotations, label = rotation index
0..3 in that order, and a 4-way linear classifier sits on the pooled features.

Square crops: a 90° rotation of an ``h × w`` frame is ``w × h``, so on non-square frames either
the clips of one batch have two shapes or the rotated frame is resampled into the old size
(``cv2.warpAffine`` with the original ``(w, h)``, as some implementations do), which crops two
sides, pads the other two with black and tells the network the rotation by where the bars are.
The data layer's crops are ``image_size²``, so here a rotation is an exact ``rot90``: a
permutation of the pixels of each frame, identical for every frame of a clip.
"""

from __future__ import annotations

import tensorflow as tf

from selfsup.models.heads import LinearClassifier
from selfsup.tasks.base import TASKS, PretextModel
from selfsup.tasks.rotnet import NUM_ROTATIONS
from selfsup.tasks.video_base import VideoTask, VideoTaskConfig


def rotate_clips(clips: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """``[b, t, s, s, c]`` square clips → ``([4b, t, s, s, c]`` rotations, ``[4b]`` labels``)``.

    Output row ``4 * i + k`` is clip ``i`` with every frame rotated counter-clockwise by
    ``k × 90°``; its label is ``k``. Vectorised: the clips' frames are stacked into one image
    batch and turned by four ``tf.image.rot90`` calls, no per-clip or per-frame work.
    """
    shape = tf.shape(clips)
    batch, frames = shape[0], shape[1]
    frame_shape = shape[2:]
    images = tf.reshape(clips, tf.concat([[batch * frames], frame_shape], 0))
    rotations = [tf.image.rot90(images, k) for k in range(NUM_ROTATIONS)]
    # [4, b·t, s, s, c] → [b, 4, t, s, s, c]: all rotations of clip i are consecutive rows.
    stacked = tf.reshape(tf.stack(rotations, axis=0),
                         tf.concat([[NUM_ROTATIONS, batch, frames], frame_shape], 0))
    stacked = tf.transpose(stacked, [1, 0, 2, 3, 4, 5])
    rotated = tf.reshape(stacked, tf.concat([[batch * NUM_ROTATIONS, frames], frame_shape], 0))
    labels = tf.tile(tf.range(NUM_ROTATIONS, dtype=tf.int64), [batch])
    return rotated, labels


def rotation_inputs(windows: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """One window per video ``[b, 1, t, s, s, 3]`` → all four rotations of each clip, labels.

    ``seed`` is unused: the rotations are the deterministic part of the data (the random crop,
    flip and temporal jitter come from the clip sampler)."""
    del seed
    return rotate_clips(windows[:, 0])


class RotNet3DTask(VideoTask):
    """3DRotNet pretext task (Jing et al. 2018): 4-way rotation classification of clips."""

    config_class = VideoTaskConfig

    def build_model(self) -> PretextModel:
        return PretextModel(self.build_backbone(), LinearClassifier(NUM_ROTATIONS, name="head"),
                            name="rotnet3d")

    def build_inputs(self, input_context: tf.distribute.InputContext | None = None
                     ) -> tf.data.Dataset:
        return self.map_training_clips(rotation_inputs, input_context)


TASKS.register("rotnet3d", RotNet3DTask)
