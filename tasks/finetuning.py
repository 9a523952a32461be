"""What image and video fine-tuning share: the classifier head, starting from a pretrained run,
the encoder / head optimizer groups, and the ``selfsup-eval --protocol=finetune`` loop.

A fine-tuning task (:mod:`selfsup.tasks.supervised` on images,
:mod:`selfsup.tasks.action_recognition` on clips) puts a linear classifier on the encoder's
``pool`` endpoint, optionally initialises the encoder from a ``selfsup-train`` run
(``init_from``; the run must have the same backbone and kwargs) and trains everything on
labels. ``encoder_learning_rate_scale`` gives the encoder its own optimizer with the run's
learning rate times the scale (0.1 moves pretrained weights less than the new head, as
R-CNN's fine-tuning at a tenth of the pretraining rate, Girshick et al. 2014 §2.3; 0 freezes
the weights, BatchNorm statistics still adapt); at 1.0 one optimizer updates everything.

The evaluation protocol trains such a task from the run's encoder and from random init (the
"from scratch" rows of the survey's comparisons, e.g. Table 6) into
``<model_dir>/eval/finetune/<column>`` and scores both on the eval split
(:func:`finetune_columns`).
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf
from absl import logging

from selfsup.models.backbone import variable_map
from selfsup.models.registry import ConfigError
from selfsup.tasks.atomic_files import write_json_atomically
from selfsup.tasks.base import (
    BACKBONE_NAME,
    OptimizerGroup,
    PretextModel,
    Task,
    TaskConfig,
    apply_loss_gradients,
    scale_replica_loss,
)
from selfsup.tasks.optimization import OPTIMIZERS

ENCODER_GROUP, HEAD_GROUP = "encoder", "head"
FINETUNE_RESULTS_FILE = "finetune.json"
FINETUNE_DIR = "finetune"
# Where a fine-tuning run starts: the evaluated run's encoder, or a random init. The keys are
# the columns of the other protocols (selfsup.tasks.linear_eval.COLUMNS).
TRAINED, RANDOM_INIT = "trained", "random_init"


class ClassifierHead(keras.layers.Layer):
    """Dropout (when asked for) then one dense layer: the classifier on ``pool``."""

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


def check_finetune_fields(config: TaskConfig) -> None:
    """ConfigError for a bad ``encoder_learning_rate_scale``, ``dropout`` or ``num_classes`` of
    a fine-tuning config (fields shared by the image and the video task's configs)."""
    if config.encoder_learning_rate_scale < 0:
        raise ConfigError(f"encoder_learning_rate_scale must not be negative, got "
                          f"{config.encoder_learning_rate_scale}")
    if not 0.0 <= config.dropout < 1.0:
        raise ConfigError(f"dropout must lie in [0, 1), got {config.dropout}")
    if config.num_classes is not None and config.num_classes < 2:
        raise ConfigError(f"num_classes must be at least 2, got {config.num_classes}")


def _as_json(value: Any) -> Any:
    """``value`` as run_config.json stores it (tuples become lists)."""
    return json.loads(json.dumps(value))


def check_pretrained_run(model_dir: str | Path, backbone: str,
                         backbone_kwargs: dict[str, Any]) -> str:
    """The latest checkpoint of the run in ``model_dir``; ConfigError if there is none or if
    that run's encoder is another architecture than ``backbone(**backbone_kwargs)``."""
    from selfsup.tasks.checkpoints import latest_checkpoint, read_run_config

    if not Path(model_dir).is_dir():
        raise ConfigError(f"init_from: {model_dir} does not exist")
    run_config = read_run_config(model_dir)
    theirs = (run_config.get("backbone"), run_config.get("backbone_kwargs") or {})
    # Compared as stored: kwargs such as stage_blocks=(1,) come back from JSON as lists.
    if _as_json(theirs) != _as_json((backbone, dict(backbone_kwargs))):
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


class FinetuneTask(Task):
    """Base of the fine-tuning tasks: encoder + :class:`ClassifierHead` on ``pool``, an
    optional pretrained start (``config.init_from``) and the encoder / head optimizer groups.

    Subclasses (also a data base class such as ``VideoTask``: list this one first) give
    :meth:`class_count` and the labelled inputs; their config has the fields
    ``init_from``, ``encoder_learning_rate_scale``, ``dropout`` and ``num_classes``.
    """

    # A downstream task with its own optimizer groups, not a pretext sub-task.
    shares_backbone = False
    model_name = "finetune"

    def class_count(self) -> int:
        """Classes of the classifier (the config's, else the dataset's)."""
        raise NotImplementedError

    def build_model(self) -> PretextModel:
        config = self.config
        checkpoint_path = None
        if config.init_from:
            # Checked before anything is built: a wrong run fails fast.
            checkpoint_path = check_pretrained_run(config.init_from, config.backbone,
                                                   config.backbone_kwargs)
        model = PretextModel(self.build_backbone(),
                             ClassifierHead(self.class_count(), config.dropout, name="head"),
                             name=self.model_name)
        if checkpoint_path:
            # Variables exist only once the model has run (through its own call, so their
            # paths start with backbone/); the trainer's later call does not re-create them.
            model(self.dummy_inputs(), training=False)
            restore_pretrained_encoder(model.backbone, checkpoint_path)
            logging.info("%s: encoder initialised from %s", self.model_name, checkpoint_path)
        return model

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


def restore_model(task: Task, model_dir: str | Path) -> keras.Model:
    """The task's model with every variable of the latest checkpoint in ``model_dir``."""
    from selfsup.tasks.checkpoints import latest_checkpoint, model_checkpoint

    model = task.build_model()
    model(task.dummy_inputs(), training=False)
    model_checkpoint(model).restore(latest_checkpoint(model_dir)).expect_partial(
        ).assert_existing_objects_matched()
    return model


# --- the evaluation protocol -----------------------------------------------------------------


class LineLog(io.TextIOBase):
    """A text stream that hands each complete line to ``log`` (the trainer's progress)."""

    def __init__(self, log: Callable[[str], None]) -> None:
        super().__init__()
        self._log, self._partial = log, ""

    def write(self, text: str) -> int:
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            if line:
                self._log(line)
        return len(text)


@dataclasses.dataclass(frozen=True)
class FinetuneRecipe:
    """How ``selfsup-eval --protocol=finetune`` trains, for images and clips alike.

    ``encoder_learning_rate_scale`` applies to the pretrained encoder; the from-scratch
    baseline (``from_scratch``) trains its random encoder at the full rate (there are no
    pretrained features to preserve, and a slowed encoder would handicap the baseline).
    ``dataset``: a labelled dataset to fine-tune on (None: the pretrained run's).
    """

    steps: int = 1000
    batch_size: int = 16
    learning_rate: float = 0.05
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    encoder_learning_rate_scale: float = 1.0
    dropout: float = 0.0
    from_scratch: bool = True
    dataset: str | None = None

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"finetune {name} must be positive, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ConfigError(f"finetune learning_rate must be positive, got "
                              f"{self.learning_rate}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown finetune optimizer {self.optimizer!r}; valid: "
                              f"{', '.join(OPTIMIZERS)}")
        if self.weight_decay < 0:
            raise ConfigError(f"finetune weight_decay must not be negative, got "
                              f"{self.weight_decay}")
        if self.encoder_learning_rate_scale < 0:
            raise ConfigError(f"encoder_learning_rate_scale must not be negative, got "
                              f"{self.encoder_learning_rate_scale}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"finetune dropout must lie in [0, 1), got {self.dropout}")


def finetune_columns(model_dir: Path, recipe: FinetuneRecipe, task_name: str,
                     make_config: Callable[[str | None, float], TaskConfig],
                     score: Callable[[Task, keras.Model], dict[str, Any]],
                     log: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """Trains ``task_name`` (one device) from the run's encoder and, with
    ``recipe.from_scratch``, from random init, into ``<model_dir>/eval/finetune/<column>``;
    returns column → ``score(task, restored model)`` plus the encoder's learning-rate scale,
    the last logged loss and the run dir.

    ``make_config(init_from, encoder_learning_rate_scale)`` gives each run's task config (the
    same seed for both, so their heads start equal). A dir holding a finished run resumes at
    its last step, i.e. is only scored again.
    """
    from selfsup.tasks.base import task_class
    from selfsup.tasks.trainer import TrainerConfig
    from selfsup.tasks.training import run_training

    starts = [(TRAINED, str(model_dir))] + ([(RANDOM_INIT, None)] if recipe.from_scratch
                                             else [])
    columns: dict[str, dict[str, Any]] = {}
    for column, init_from in starts:
        scale = recipe.encoder_learning_rate_scale if init_from else 1.0
        config = make_config(init_from, scale)
        trainer = TrainerConfig(
            model_dir=str(model_dir / "eval" / FINETUNE_DIR / column), train_steps=recipe.steps,
            learning_rate=recipe.learning_rate, optimizer=recipe.optimizer,
            weight_decay=recipe.weight_decay, log_every=max(recipe.steps // 10, 1),
            checkpoint_every=recipe.steps)
        start_from = "the trained encoder" if init_from else "random init"
        log(f"-- fine-tuning {task_name} from {start_from} into {trainer.model_dir}")
        logs = run_training(task_name, config, trainer, "one_device", out=LineLog(log))
        task = task_class(task_name)(config)
        scores = score(task, restore_model(task, trainer.model_dir))
        columns[column] = {**scores, "encoder_learning_rate_scale": scale,
                           "final_loss": logs.get("loss"), "model_dir": trainer.model_dir}
    return columns


def write_finetune_results(model_dir: Path, results: dict[str, Any], started: float,
                           log: Callable[[str], None]) -> None:
    """Stamps ``results["seconds"]`` (since ``started``, a ``perf_counter`` time) and writes
    them atomically to ``<model_dir>/eval/finetune.json``."""
    results["seconds"] = round(time.perf_counter() - started, 1)
    path = write_json_atomically(model_dir / "eval" / FINETUNE_RESULTS_FILE, results)
    log(f"wrote {path} ({results['seconds']:.0f} s)")
