"""Arrow of time: tell whether a clip plays forwards or backwards.

Wei, Lim, Zisserman & Freeman, "Learning and Using the Arrow of Time", CVPR 2018. A clip is
shown in its original order or reversed (each with probability 1/2) and the network classifies
the direction, label 1 = reversed. Here the clip's pooled backbone features go through one
linear layer (2 classes).

Out of scope (say so when comparing numbers): the paper's Temporal Class-Activation-Map network
(T-CAM: a VGG-16 on stacks of optical flow with class activation maps over time), and its
removal of artificial cues (black frame borders, camera motion stabilised away); here the
backbone sees RGB clips and whatever cues they hold.
"""

from __future__ import annotations

import tensorflow as tf

from selfsup.models.heads import LinearClassifier
from selfsup.tasks.base import TASKS, PretextModel
from selfsup.tasks.video_base import VideoTask, VideoTaskConfig
from selfsup.tasks.video_order import arrow_of_time_inputs

NUM_DIRECTIONS = 2  # forwards (0) / backwards (1)


class ArrowOfTimeTask(VideoTask):
    """Arrow of time (Wei et al. 2018): forwards-or-backwards classification of clips."""

    config_class = VideoTaskConfig

    def build_model(self) -> PretextModel:
        return PretextModel(self.build_backbone(),
                            LinearClassifier(NUM_DIRECTIONS, name="head"), name="arrow_of_time")

    def build_inputs(self, input_context: tf.distribute.InputContext | None = None
                     ) -> tf.data.Dataset:
        return self.map_training_clips(
            lambda windows, seed: arrow_of_time_inputs(windows[:, 0], seed), input_context)


TASKS.register("arrow_of_time", ArrowOfTimeTask)
