"""Action recognition: a video encoder fine-tuned with a linear classifier on labelled clips.

The downstream task by which the survey compares self-supervised video features (Jing & Tian,
§7.2, Table 6: UCF101 / HMDB51 accuracy): start from the pretext run's encoder (``init_from``,
a ``selfsup-train`` model dir) or from random init (the "from scratch" row), put a linear
classifier on ``pool``, train everything on labelled clips, and report top-1 on the eval split
per clip and per video (mean of the clips' softmax probabilities over evenly spaced clips,
:mod:`selfsup.tasks.video_eval`).

Training clips come from the data layer with their video's label (one window per video,
random start, crop and flip). The head, the pretrained start and the encoder / head optimizer
groups (``encoder_learning_rate_scale``: e.g. 0.1 to move pretrained weights less than the new
head; 0 freezes the weights, BatchNorm statistics still adapt; at 1.0 one optimizer updates
everything) are the image task's too: :mod:`selfsup.tasks.finetuning`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from selfsup.datasets import clips
from selfsup.models.registry import ConfigError
from selfsup.tasks.base import TASKS
from selfsup.tasks.finetuning import (  # noqa: F401  (the group names: re-exported)
    ENCODER_GROUP,
    HEAD_GROUP,
    FinetuneTask,
    check_finetune_fields,
)
from selfsup.tasks.video_base import VideoTask, VideoTaskConfig


@dataclasses.dataclass(frozen=True)
class ActionRecognitionConfig(VideoTaskConfig):
    """Fine-tuning settings; the data and clip fields are :class:`VideoTaskConfig`'s."""

    # Model dir of a pretrained run whose encoder (latest checkpoint) initialises this one;
    # None: random init. Its backbone and backbone_kwargs must be these.
    init_from: str | None = None
    # The encoder's learning rate is the run's times this; the head's is the run's.
    encoder_learning_rate_scale: float = 1.0
    # Dropout on the pooled features before the classifier (0: none).
    dropout: float = 0.0
    # Classes of the classifier; None: the dataset's.
    num_classes: int | None = None
    # Evenly spaced clips per video when evaluating (Xu et al. 2019 use 10).
    eval_clips_per_video: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        check_finetune_fields(self)
        if self.eval_clips_per_video < 1:
            raise ConfigError(f"eval_clips_per_video must be positive, got "
                              f"{self.eval_clips_per_video}")


class ActionRecognitionTask(FinetuneTask, VideoTask):
    """Supervised clip classification on a labelled video dataset, from a pretrained or a
    random-init encoder (the survey's downstream action-recognition task)."""

    config_class = ActionRecognitionConfig
    config: ActionRecognitionConfig
    model_name = "action_recognition"

    def class_count(self) -> int:
        if self.config.num_classes is not None:
            return self.config.num_classes
        count = self.video_source.num_classes
        if count is None:
            raise ConfigError(f"video dataset {self.video_source.name!r} has no labels to "
                              "recognise actions with")
        return count

    def build_inputs(self, input_context: tf.distribute.InputContext | None = None
                     ) -> tf.data.Dataset:
        """``(clips [b, t, s, s, 3], int64 labels [b])``: one random window per video."""
        config = self.config
        self.class_count()  # an unlabelled dataset fails here, not at the first step
        batches = clips.training_clips(
            self.video_source, config.train_split, frame_size=config.frame_size,
            image_size=config.image_size, num_windows=1, num_frames=config.clip_length,
            frame_stride=config.frame_stride,
            batch_size=self.per_replica_batch_size(input_context), seed=config.seed,
            input_context=input_context, with_labels=True)
        return batches.map(lambda windows, labels: (windows[:, 0], labels),
                           num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    def evaluate(self, model: keras.Model, split: str | None = None,
                 clips_per_video: int | None = None, videos: np.ndarray | None = None,
                 batch_size: int = 16, log: Callable[[str], None] = logging.info
                 ) -> dict[str, float]:
        """Clip- and video-level top-1 (%) of ``model`` on ``split`` (default: the eval split)
        over ``clips_per_video`` evenly spaced centre-cropped clips per video (default: the
        config's); ``videos``: only these video indices (default: all)."""
        from selfsup.tasks.video_eval import classify_clips

        config = self.config
        split = split or self.video_source.eval_split
        return classify_clips(
            lambda batch: model(batch, training=False)["logits"], self.video_source, split,
            frame_size=config.frame_size, image_size=config.image_size,
            clip_length=config.clip_length, frame_stride=config.frame_stride,
            clips_per_video=clips_per_video or config.eval_clips_per_video, videos=videos,
            batch_size=batch_size, log=log)


TASKS.register("action_recognition", ActionRecognitionTask)
