"""Shuffle and Learn: verify whether three frames of a video are in temporal order.

Misra, Zitnick & Hebert, "Shuffle and Learn: Unsupervised Learning using Temporal Order
Verification", ECCV 2016. From five frames ``a < b < c < d < e`` of a window, the positive tuple
is ``(b, c, d)`` and the negatives are ``(b, a, d)`` and ``(b, e, d)``: the middle frame lies
between the other two or outside them. The positive span ``d − b`` is at most τ_max = 60
frames and the negatives' frames ``a``, ``e`` are at least τ_min = 15 frames from ``b``, ``d``;
25 % of the tuples are positive (the best class ratio of the paper's ablation:
:data:`~selfsup.tasks.video_order.POSITIVE_FRACTION`). Each frame goes through the
same network (a triplet siamese CaffeNet, fc7), the three feature vectors are concatenated and a
linear layer classifies in order / not in order.

Here each frame (or ``frames_per_item`` consecutive frames) is a short clip for the video
backbone, whose pooled features stand for fc7; label 1 = in order. τ values count frames of the
window (every ``frame_stride``-th video frame); the window holds ``τ_max + 2·τ_min +
frames_per_item`` frames (91 by default: shorter videos are looped by the clip sampler, which
breaks the order across the loop point, so keep windows shorter than the videos). The paper also
uses the reversed positive ``(d, c, b)``; every tuple is reversed with probability 1/2 here,
negatives too, so the direction of time is no cue
(:func:`~selfsup.tasks.video_order.verification_tuples`).

Out of scope (say so when comparing numbers): the paper samples tuples only from high-motion
windows (optical-flow magnitude) and drops negatives whose middle frame looks like ``c``; here
windows are sampled uniformly in time.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from selfsup.models.registry import ConfigError
from selfsup.tasks.base import TASKS
from selfsup.tasks.video_base import VideoTask, VideoTaskConfig
from selfsup.tasks.video_order import (
    NUM_TUPLE_FRAMES,
    ItemOrderModel,
    PairwiseOrderHead,
    order_verification_inputs,
    verification_window_length,
)

MAX_POSITIVE_SPAN = 60  # τ_max: largest d − b (Misra et al. 2016)
MIN_NEGATIVE_GAP = 15  # τ_min: smallest b − a and e − d (Misra et al. 2016)
NUM_VERIFICATION_CLASSES = 2  # in order / not in order


@dataclasses.dataclass(frozen=True)
class ShuffleLearnConfig(VideoTaskConfig):
    """Shuffle and Learn settings: τ_max, τ_min (frames of the window) and the frames per item."""

    max_positive_span: int = MAX_POSITIVE_SPAN
    min_negative_gap: int = MIN_NEGATIVE_GAP
    frames_per_item: int = 1
    dropout: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.frames_per_item < 1:
            raise ConfigError(f"frames_per_item must be positive, got {self.frames_per_item}")
        if self.max_positive_span < 2 * self.frames_per_item:
            raise ConfigError(f"max_positive_span must be at least 2 × frames_per_item "
                              f"({2 * self.frames_per_item}) so the middle item fits, got "
                              f"{self.max_positive_span}")
        if self.min_negative_gap < self.frames_per_item:
            raise ConfigError(f"min_negative_gap must be at least frames_per_item "
                              f"({self.frames_per_item}) so items never overlap, got "
                              f"{self.min_negative_gap}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")


class ShuffleLearnTask(VideoTask):
    """Temporal order verification (Misra et al. 2016): are three frames in order?"""

    config_class = ShuffleLearnConfig
    config: ShuffleLearnConfig

    def window_length(self) -> int:
        config = self.config
        return verification_window_length(config.max_positive_span, config.min_negative_gap,
                                          config.frames_per_item)

    def dummy_inputs(self) -> tf.Tensor:
        size = self.config.image_size
        return tf.zeros([1, NUM_TUPLE_FRAMES, self.config.frames_per_item, size, size, 3])

    def build_model(self) -> ItemOrderModel:
        # No pair layer: the paper's fc8 classifies the concatenated fc7 features.
        head = PairwiseOrderHead(NUM_TUPLE_FRAMES, NUM_VERIFICATION_CLASSES, pair_units=0,
                                 dropout=self.config.dropout, name="head")
        return ItemOrderModel(self.build_backbone(), head, name="shuffle_learn")

    def build_inputs(self, input_context: tf.distribute.InputContext | None = None
                     ) -> tf.data.Dataset:
        config = self.config

        def tuples(windows, seed):
            return order_verification_inputs(
                windows[:, 0], seed, max_positive_span=config.max_positive_span,
                min_negative_gap=config.min_negative_gap,
                frames_per_item=config.frames_per_item)

        return self.map_training_clips(tuples, input_context)


TASKS.register("shuffle_learn", ShuffleLearnTask)
