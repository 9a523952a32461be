"""Action recognition: a video encoder fine-tuned with a linear classifier on labelled clips.

The downstream task by which the survey compares self-supervised video features (Jing & Tian,
§7.2, Table 6: UCF101 / HMDB51 accuracy): start from the pretext run's encoder (``init_from``,
a ``selfsup-train`` model dir) or from random init (the "from scratch" row), put a linear
classifier on ``pool``, train everything on labelled clips, and report top-1 on the eval split
per clip and per video (mean of the clips' softmax probabilities over evenly spaced clips,
:mod:`selfsup.tasks.video_eval`).

Training clips come from the data layer with their video's label (one window per video,
random start, crop and flip). ``encoder_learning_rate_scale`` gives the encoder its own
optimizer with the run's learning rate times the scale (e.g. 0.1 to move pretrained weights
less than the new head; 0 freezes the weights, BatchNorm statistics still adapt); at 1.0 one
optimizer updates everything.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from selfsup.datasets import clips
from selfsup.models.backbone import variable_map
from selfsup.models.registry import ConfigError
from selfsup.tasks.base import (
    BACKBONE_NAME,
    TASKS,
    OptimizerGroup,
    PretextModel,
    apply_loss_gradients,
    scale_replica_loss,
)
from selfsup.tasks.video_base import VideoTask, VideoTaskConfig

ENCODER_GROUP, HEAD_GROUP = "encoder", "head"


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
        if self.encoder_learning_rate_scale < 0:
            raise ConfigError(f"encoder_learning_rate_scale must not be negative, got "
                              f"{self.encoder_learning_rate_scale}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must lie in [0, 1), got {self.dropout}")
        if self.num_classes is not None and self.num_classes < 2:
            raise ConfigError(f"num_classes must be at least 2, got {self.num_classes}")
        if self.eval_clips_per_video < 1:
            raise ConfigError(f"eval_clips_per_video must be positive, got "
                              f"{self.eval_clips_per_video}")


class ClassifierHead(keras.layers.Layer):
    """Dropout (when asked for) then one dense layer: the action classifier on ``pool``."""

    def __init__(self, num_classes: int, dropout: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.rate = dropout
        self.dropout = keras.layers.Dropout(dropout)
        self.dense = keras.layers.Dense(num_classes, name="logits")

    def call(self, features, training=None):
        return self.dense(self.dropout(features, training=training))

    def get_config(self) -> dict:
        return {**super().get_config(), "num_classes": self.num_classes, "dropout": self.rate}


def check_pretrained_run(model_dir: str | Path, backbone: str,
                         backbone_kwargs: dict[str, Any]) -> str:
    """The latest checkpoint of the run in ``model_dir``; ConfigError if there is none or if
    that run's encoder is another architecture than ``backbone(**backbone_kwargs)``."""
    from selfsup.tasks.checkpoints import latest_checkpoint, read_run_config

    if not Path(model_dir).is_dir():
        raise ConfigError(f"init_from: {model_dir} does not exist")
    run_config = read_run_config(model_dir)
    theirs = (run_config.get("backbone"), run_config.get("backbone_kwargs") or {})
    if theirs != (backbone, dict(backbone_kwargs)):
        raise ConfigError(f"init_from: {model_dir} trained {theirs[0]} {theirs[1]}, this task "
                          f"builds {backbone} {dict(backbone_kwargs)}")
    return latest_checkpoint(model_dir)


def restore_pretrained_encoder(encoder: keras.Model, checkpoint_path: str) -> None:
    """Loads the ``backbone/...`` variables of a training checkpoint into the built
    ``encoder`` (as :func:`selfsup.tasks.checkpoints.restore_encoder`); every variable of the
    encoder must be found."""
    keyed = {f"{BACKBONE_NAME}/{key}": variable for key, variable in variable_map(encoder).items()}
    status = tf.train.Checkpoint(model=keyed).restore(checkpoint_path)
    status.expect_partial().assert_existing_objects_matched()


class ActionRecognitionTask(VideoTask):
    """Supervised clip classification on a labelled video dataset, from a pretrained or a
    random-init encoder (the survey's downstream action-recognition task)."""

    config_class = ActionRecognitionConfig
    config: ActionRecognitionConfig
    # A downstream task with its own optimizer groups, not a pretext sub-task.
    shares_backbone = False

    def class_count(self) -> int:
        if self.config.num_classes is not None:
            return self.config.num_classes
        count = self.video_source.num_classes
        if count is None:
            raise ConfigError(f"video dataset {self.video_source.name!r} has no labels to "
                              "recognise actions with")
        return count

    def build_model(self) -> PretextModel:
        config = self.config
        checkpoint_path = None
        if config.init_from:
            # Checked before anything is built: a wrong run fails fast.
            checkpoint_path = check_pretrained_run(config.init_from, config.backbone,
                                                   config.backbone_kwargs)
        model = PretextModel(self.build_backbone(),
                             ClassifierHead(self.class_count(), config.dropout, name="head"),
                             name="action_recognition")
        if checkpoint_path:
            # Variables exist only once the model has run (through its own call, so their
            # paths start with backbone/); the trainer's later call does not re-create them.
            model(self.dummy_inputs(), training=False)
            restore_pretrained_encoder(model.backbone, checkpoint_path)
            logging.info("action_recognition: encoder initialised from %s", checkpoint_path)
        return model

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

    def uses_two_optimizers(self) -> bool:
        return self.config.encoder_learning_rate_scale != 1.0

    def optimizer_groups(self, model: keras.Model) -> dict[str, OptimizerGroup]:
        """One optimizer for everything at scale 1; else the encoder's (scaled learning rate)
        and the head's."""
        if not self.uses_two_optimizers():
            return super().optimizer_groups(model)
        encoder = model.backbone.trainable_variables
        ids = {id(variable) for variable in encoder}
        head = [variable for variable in model.trainable_variables if id(variable) not in ids]
        return {ENCODER_GROUP: OptimizerGroup(
                    encoder, learning_rate_scale=self.config.encoder_learning_rate_scale),
                HEAD_GROUP: OptimizerGroup(head)}

    def train_step(self, inputs, model: keras.Model, optimizer, metrics
                   ) -> dict[str, tf.Tensor]:
        """One step; with two groups (``optimizer``: the trainer's dict) each optimizer applies
        the gradient of the same loss to its own variables."""
        if not isinstance(optimizer, dict):
            return super().train_step(inputs, model, optimizer, metrics)
        # Persistent: each optimizer scales the loss its own way under float16 loss scaling;
        # the head's gradient only backpropagates through the head.
        with tf.GradientTape(persistent=True) as tape:
            loss, labels, outputs = self.compute_loss(inputs, model, training=True)
            replica_losses = {name: scale_replica_loss(loss, group_optimizer)
                              for name, group_optimizer in optimizer.items()}
        groups = self.optimizer_groups(model)
        for name, group_optimizer in optimizer.items():
            apply_loss_gradients(tape, replica_losses[name], groups[name].variables,
                                 group_optimizer)
        del tape
        self.update_metrics(metrics, loss, labels, outputs)
        return {"loss": loss}

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


def restore_model(task: ActionRecognitionTask, model_dir: str | Path) -> keras.Model:
    """The task's model with every variable of the latest checkpoint in ``model_dir``."""
    from selfsup.tasks.checkpoints import latest_checkpoint, model_checkpoint

    model = task.build_model()
    model(task.dummy_inputs(), training=False)
    model_checkpoint(model).restore(latest_checkpoint(model_dir)).expect_partial(
        ).assert_existing_objects_matched()
    return model


TASKS.register("action_recognition", ActionRecognitionTask)
