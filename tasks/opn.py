"""OPN: sort a shuffled sequence of frames, an order and its reverse being one class.

Lee, Huang, Singh & Yang, "Unsupervised Representation Learning by Sorting Sequences", ICCV
2017 (the Order Prediction Network). Four frames of a window are shuffled; since many actions
look alike played forwards and backwards, an order and its reverse form one class, so the
4! = 24 orders make 12 classes. Every frame is encoded by one shared network (the paper's
fc6), the features of every pair of frames are concatenated and mapped by a shared fully
connected layer (fc7, "pairwise feature extraction"), and the six pair outputs,
concatenated, are classified into the 12 classes (fc8). Here each frame (or a stack of
``frames_per_item`` frames) is a short clip for the video backbone, whose pooled features stand
for fc6; the pair layer has VCOP's 512 units and the classifier VCOP's dropout 0.5 (Xu et al.
2019 built their head after OPN's).

Sampling: the ``num_frames`` items are evenly spaced in the window, ``frame_gap`` frames apart
(every ``frame_stride``-th video frame), and shuffled by a uniform class's representative or its
reverse (:func:`~selfsup.tasks.video_order.sequence_sort_inputs`), so all 24 orders are equally
likely. Out of scope (say so when comparing numbers): the paper's motion-aware selection of
high-motion windows (optical flow), its channel splitting and per-frame spatial jitter; here one
crop and flip per window, shared by all frames.
"""

from __future__ import annotations

import dataclasses
import math

import tensorflow as tf

from selfsup.models.registry import ConfigError
from selfsup.tasks.base import TASKS
from selfsup.tasks.video_base import VideoTask, VideoTaskConfig
from selfsup.tasks.video_order import (
    HEAD_DROPOUT,
    PAIR_UNITS,
    ItemOrderModel,
    PairwiseOrderHead,
    reversal_classes,
    sequence_sort_inputs,
    window_length,
)

NUM_FRAMES = 4  # Lee et al. 2017: 4-frame tuples, 12 classes
FRAME_COUNTS = (3, 4, 5)  # 3, 12 or 60 classes
# Frames between sampled frames: ours (every 8th frame, VCOP's clip interval, so 4 frames span
# about a second of 25-30 fps video); the paper picks high-motion windows instead.
FRAME_GAP = 7


@dataclasses.dataclass(frozen=True)
class OPNConfig(VideoTaskConfig):
    """OPN settings: ``num_frames`` items of ``frames_per_item`` frames, ``frame_gap`` frames
    apart; the head's pair layer width and dropout."""

    num_frames: int = NUM_FRAMES
    frames_per_item: int = 1
    frame_gap: int = FRAME_GAP
    pair_units: int = PAIR_UNITS
    dropout: float = HEAD_DROPOUT

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_frames not in FRAME_COUNTS:
            raise ConfigError(f"num_frames must be one of {FRAME_COUNTS}, got {self.num_frames}")
        if self.frames_per_item < 1:
            raise ConfigError(f"frames_per_item must be positive, got {self.frames_per_item}")
        if self.frame_gap < 0:
            raise ConfigError(f"frame_gap must be at least 0 frames, got {self.frame_gap}")
        if self.pair_units < 1:
            raise ConfigError(f"pair_units must be positive, got {self.pair_units}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")


class OPNTask(VideoTask):
    """Order Prediction Network (Lee et al. 2017): ``n!/2``-way classification of the order of
    ``n`` shuffled frames, an order and its reverse being one class."""

    config_class = OPNConfig
    config: OPNConfig

    @property
    def num_classes(self) -> int:
        return math.factorial(self.config.num_frames) // 2

    def window_length(self) -> int:
        config = self.config
        return window_length(config.num_frames, config.frames_per_item, config.frame_gap)

    def dummy_inputs(self) -> tf.Tensor:
        config = self.config
        size = config.image_size
        return tf.zeros([1, config.num_frames, config.frames_per_item, size, size, 3])

    def build_model(self) -> ItemOrderModel:
        config = self.config
        head = PairwiseOrderHead(config.num_frames, self.num_classes, config.pair_units,
                                 config.dropout, name="head")
        return ItemOrderModel(self.build_backbone(), head, name="opn")

    def build_inputs(self, input_context: tf.distribute.InputContext | None = None
                     ) -> tf.data.Dataset:
        config = self.config
        representatives = tf.constant(reversal_classes(config.num_frames)[0])

        def sorted_sequences(windows, seed):
            return sequence_sort_inputs(windows[:, 0], seed, representatives,
                                        frames_per_item=config.frames_per_item,
                                        gap=config.frame_gap)

        return self.map_training_clips(sorted_sequences, input_context)


TASKS.register("opn", OPNTask)
