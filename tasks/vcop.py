"""VCOP: predict the order of shuffled clips of one video (video clip order prediction).

Xu, Xiao, Zhao, Shao, Xie & Zhuang, "Self-supervised Spatiotemporal Learning via Video Clip
Order Prediction", CVPR 2019. From one window of a video, ``n`` clips of ``clip_length`` frames
with ``interval`` frames between consecutive clips are cut (the paper's n = 3, 16 frames,
interval 8: a window of ``n·clip_length + (n − 1)·interval`` = 64 frames), shuffled by a
uniformly drawn order, and encoded by one shared 3D ConvNet; the pooled clip features are
concatenated in pairs, each pair mapped by a shared fc 512 + ReLU, the pair outputs
concatenated, dropout 0.5, and a linear layer classifies the order into ``n!`` classes. Label =
index of the order in ``itertools.permutations(range(n))`` order; slot ``i`` of the input holds
clip ``order[i]`` (:mod:`selfsup.tasks.video_order`).

``interval`` counts frames of the window, i.e. every ``frame_stride``-th video frame, as
``clip_length`` does. Crops: one crop and flip per window (the clip sampler), so all clips of an
example share the crop parameters, as the paper's.
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
    clip_order_inputs,
    order_table,
    window_length,
)

NUM_CLIPS = 3  # Xu et al. 2019 (3 clips: 3! = 6 classes)
CLIP_INTERVAL = 8  # frames between consecutive clips (Xu et al. 2019)
CLIP_COUNTS = (2, 3, 4, 5)  # the paper compares 2-4 clips; 5 (120 classes) is still small


@dataclasses.dataclass(frozen=True)
class VCOPConfig(VideoTaskConfig):
    """VCOP settings: ``num_clips`` clips of ``clip_length`` frames, ``interval`` frames apart;
    the head's pair layer width and dropout (Xu et al. 2019's 512 and 0.5)."""

    num_clips: int = NUM_CLIPS
    interval: int = CLIP_INTERVAL
    pair_units: int = PAIR_UNITS
    dropout: float = HEAD_DROPOUT

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_clips not in CLIP_COUNTS:
            raise ConfigError(f"num_clips must be one of {CLIP_COUNTS}, got {self.num_clips}")
        if self.interval < 0:
            raise ConfigError(f"interval must be at least 0 frames, got {self.interval}")
        if self.pair_units < 1:
            raise ConfigError(f"pair_units must be positive, got {self.pair_units}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")


class VCOPTask(VideoTask):
    """Video clip order prediction (Xu et al. 2019): ``n!``-way classification of the order
    of ``n`` shuffled clips."""

    config_class = VCOPConfig
    config: VCOPConfig

    @property
    def num_classes(self) -> int:
        return math.factorial(self.config.num_clips)

    def window_length(self) -> int:
        config = self.config
        return window_length(config.num_clips, config.clip_length, config.interval)

    def dummy_inputs(self) -> tf.Tensor:
        size = self.config.image_size
        return tf.zeros([1, self.config.num_clips, self.config.clip_length, size, size, 3])

    def build_model(self) -> ItemOrderModel:
        config = self.config
        head = PairwiseOrderHead(config.num_clips, self.num_classes, config.pair_units,
                                 config.dropout, name="head")
        return ItemOrderModel(self.build_backbone(), head, name="vcop")

    def build_inputs(self, input_context: tf.distribute.InputContext | None = None
                     ) -> tf.data.Dataset:
        config = self.config
        table = tf.constant(order_table(config.num_clips))

        def shuffled_clips(windows, seed):
            return clip_order_inputs(windows[:, 0], seed, table, clip_length=config.clip_length,
                                     interval=config.interval)

        return self.map_training_clips(shuffled_clips, input_context)


TASKS.register("vcop", VCOPTask)
