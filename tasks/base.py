"""The Task contract (after TF Model Garden's ``base_task.Task``) and the task registry.

A task is single-replica code: it builds its model, its per-replica input pipeline, its losses
and metrics, and says what one training step on one replica does. The trainer owns the
strategy, the loop, checkpoints and summaries, so the same task runs on one device, on
MirroredStrategy or on MultiWorkerMirroredStrategy unchanged.
"""

from __future__ import annotations

import abc
import dataclasses
import typing
from typing import Any, ClassVar

import keras
import tensorflow as tf

from selfsup.datasets import ImageSource, open_source, pipelines
from selfsup.models import FEATURE_ENDPOINT, build_backbone
from selfsup.models.registry import ConfigError, Registry

BACKBONE_NAME = "backbone"
# The config field of tasks made of sub-tasks that holds "<subtask>.<name>=<value>" options.
SUBTASK_PARAMS = "subtask_params"


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """What every task needs: the encoder, the data and the global batch."""

    backbone: str = "resnet_small"
    backbone_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    train_split: str = "train"
    image_size: int = 28
    global_batch_size: int = 64
    synchronized_bn: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.image_size <= 0:
            raise ConfigError(f"image_size must be positive, got {self.image_size}")
        if self.global_batch_size <= 0:
            raise ConfigError(f"batch size must be positive, got {self.global_batch_size}")


class PretextModel(keras.Model):
    """A backbone plus a task head; ``call`` returns the backbone endpoints and the head output.

    The encoder stays reachable as ``model.backbone`` (checkpoints store it under that name), so
    probes and exporters can restore it without the head.
    """

    def __init__(self, backbone: keras.Model, head: keras.layers.Layer,
                 head_input: str = FEATURE_ENDPOINT, **kwargs) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone
        self.head = head
        self.head_input = head_input

    def call(self, images, training=None):
        endpoints = dict(self.backbone(images, training=training))
        endpoints["logits"] = self.head(endpoints[self.head_input])
        return endpoints


@dataclasses.dataclass(frozen=True)
class OptimizerGroup:
    """Variables that one optimizer updates, and how its settings differ from the run's.

    ``beta_1``: the first-moment decay of Adam-family optimizers (DCGAN's 0.5; None keeps the
    optimizer's default). ``learning_rate_scale`` multiplies the run's learning rate.
    """

    variables: list
    learning_rate_scale: float = 1.0
    beta_1: float | None = None


class Task(abc.ABC):
    """Base class of pretext and downstream tasks (see the module docstring)."""

    config_class: ClassVar[type[TaskConfig]] = TaskConfig
    # Whether the task's model can be built around an encoder shared with other tasks and be
    # trained by the shared step (``multitask``): False for tasks with an encoder of their own
    # shape or a second copy of it (CMC, CPC, MoCo's key encoder), a step of their own (MoCo),
    # epoch work (DeepCluster) or several optimizers (GANs). An instance may refuse where its
    # class can (:meth:`can_share_backbone`).
    shares_backbone: ClassVar[bool] = True

    def __init__(self, config: TaskConfig) -> None:
        self.config = config
        self._source: ImageSource | None = None
        self._shared_backbone: keras.Model | None = None
        self._first_images: dict[int, tf.Tensor] = {}

    @property
    def source(self) -> ImageSource:
        """The resolved dataset (opened once, lazily, so building a model needs no data)."""
        if self._source is None:
            self._source = open_source(self.config.dataset, self.config.data_dir)
            self._source.check_split(self.config.train_split)
        return self._source

    def can_share_backbone(self) -> bool:
        """Whether this task, with its config, can be a multitask sub-task (see
        ``shares_backbone``)."""
        return self.shares_backbone

    def share_backbone(self, backbone: keras.Model) -> None:
        """Makes :meth:`build_backbone` return ``backbone`` (one encoder for several tasks)."""
        if not self.can_share_backbone():
            raise ConfigError(f"{type(self).__name__} cannot share its encoder with other tasks")
        self._shared_backbone = backbone

    def build_backbone(self) -> keras.Model:
        if self._shared_backbone is not None:
            return self._shared_backbone
        # The fixed name keeps checkpoint keys ("backbone/...") independent of build order.
        return build_backbone(self.config.backbone, input_size=self.config.image_size,
                              synchronized_bn=self.config.synchronized_bn, name=BACKBONE_NAME,
                              **self.config.backbone_kwargs)

    @abc.abstractmethod
    def build_model(self) -> keras.Model:
        """The model: backbone (as ``model.backbone``) plus this task's head(s)."""

    def dummy_inputs(self) -> Any:
        """A one-example model input; calling the model on it creates every variable."""
        size = self.config.image_size
        return tf.zeros([1, size, size, 3])

    def trainable_variables(self, model: keras.Model) -> list:
        """What the optimizer updates (tasks with momentum copies leave those out)."""
        return model.trainable_variables

    def optimizer_groups(self, model: keras.Model) -> dict[str, OptimizerGroup]:
        """One optimizer per group (the trainer builds them in this order and checkpoints them
        all); the first group must be updated exactly once per step: its optimizer's step
        count is the run's step. Several groups: :meth:`train_step` receives a dict of them."""
        return {"model": OptimizerGroup(self.trainable_variables(model))}

    def sample_images(self, model: keras.Model) -> dict[str, tf.Tensor]:
        """Images for people to look at (reconstructions, colourisations, GAN samples):
        name → float RGB ``[n, h, w, 3]`` in [0, 1]. The trainer writes each as a PNG grid and
        a TensorBoard image whenever it saves a checkpoint, so run the model with
        ``training=False`` (BatchNorm statistics must not move after the save). Fixed inputs:
        :meth:`first_training_images`. Default: none."""
        return {}

    def steps_per_epoch(self) -> int | None:
        """Steps between :meth:`begin_epoch` calls; None: the task has no epoch work."""
        return None

    def begin_epoch(self, epoch: int, model: keras.Model, optimizer: keras.optimizers.Optimizer,
                    strategy: tf.distribute.Strategy) -> dict[str, float]:
        """Work between epochs outside the step (e.g. re-clustering); returns values to log.

        Called by the trainer before the first step of every epoch (and when a run resumes);
        :meth:`build_inputs` is called again afterwards, so it may depend on this work.
        """
        return {}

    @abc.abstractmethod
    def build_inputs(self, input_context: tf.distribute.InputContext | None = None
                     ) -> tf.data.Dataset:
        """Per-replica batches of ``(inputs, labels)`` with pseudo-labels made in-graph."""

    def build_losses(self, labels: tf.Tensor, outputs: dict[str, tf.Tensor]) -> tf.Tensor:
        """Mean loss over this replica's batch (default: softmax cross-entropy on logits)."""
        logits = tf.cast(outputs["logits"], tf.float32)
        per_example = keras.losses.sparse_categorical_crossentropy(labels, logits,
                                                                   from_logits=True)
        return tf.reduce_mean(per_example)

    def build_metrics(self) -> list[keras.metrics.Metric]:
        return [keras.metrics.Mean("loss"), keras.metrics.SparseCategoricalAccuracy("accuracy")]

    def update_metrics(self, metrics: list[keras.metrics.Metric], loss: tf.Tensor,
                       labels: tf.Tensor, outputs: dict[str, tf.Tensor]) -> None:
        for metric in metrics:
            if metric.name == "loss":
                metric.update_state(loss)
            else:
                metric.update_state(labels, tf.cast(outputs["logits"], tf.float32))

    def training_images(self, input_context: tf.distribute.InputContext | None = None
                        ) -> tf.data.Dataset:
        """Endless, seeded-shuffled batches of this replica's float RGB training images."""
        config = self.config
        return pipelines.training_images(self.source, config.train_split, config.image_size,
                                         self.per_replica_batch_size(input_context), config.seed,
                                         input_context)

    def first_training_images(self, count: int) -> tf.Tensor:
        """The first ``count`` images of the training split in file order, float RGB ``[count,
        s, s, 3]`` (read once per count): fixed images for :meth:`sample_images`."""
        if count not in self._first_images:
            dataset = pipelines.image_label_dataset(self.source, self.config.train_split,
                                                    self.config.image_size, first=count)
            self._first_images[count] = next(iter(
                dataset.map(lambda image, label: image).batch(count)))
        return self._first_images[count]

    def map_training_images(self, function,
                            input_context: tf.distribute.InputContext | None = None
                            ) -> tf.data.Dataset:
        """``function(images, seed)`` over the :meth:`training_images` batches, each with its
        own stateless seed (:func:`~selfsup.datasets.pipelines.with_batch_seeds`: reproducible,
        one stream per input pipeline, replayed by a resumed run), prefetched."""
        stream = 0 if input_context is None else input_context.input_pipeline_id
        batches = pipelines.with_batch_seeds(self.training_images(input_context),
                                             self.config.seed, stream)
        return batches.map(function, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
            tf.data.AUTOTUNE)

    def per_replica_batch_size(self, input_context: tf.distribute.InputContext | None) -> int:
        if input_context is None:
            return self.config.global_batch_size
        return input_context.get_per_replica_batch_size(self.config.global_batch_size)

    def compute_loss(self, inputs, model: keras.Model, training: bool
                     ) -> tuple[tf.Tensor, Any, dict[str, tf.Tensor]]:
        """``(mean loss of this replica's batch, labels, outputs)`` for one batch of inputs.

        The hook most tasks override (label-free tasks return ``None`` labels and whatever
        outputs their :meth:`update_metrics` reads); the steps below wrap it. The default reads
        ``(images, labels)`` and applies :meth:`build_losses` to the model's outputs.
        """
        images, labels = inputs
        outputs = model(images, training=training)
        return self.build_losses(labels, outputs), labels, outputs

    def apply_gradients(self, tape: tf.GradientTape, replica_loss: tf.Tensor,
                        model: keras.Model, optimizer: keras.optimizers.Optimizer) -> None:
        """Applies the gradient of ``replica_loss`` (from :func:`scale_replica_loss`) to
        :meth:`trainable_variables`; the strategy sums the replicas' gradients."""
        apply_loss_gradients(tape, replica_loss, self.trainable_variables(model), optimizer)

    def train_step(self, inputs, model: keras.Model, optimizer: keras.optimizers.Optimizer,
                   metrics: list[keras.metrics.Metric]) -> dict[str, tf.Tensor]:
        """One step on one replica; the loss is scaled so replica gradients sum to the mean."""
        with tf.GradientTape() as tape:
            loss, labels, outputs = self.compute_loss(inputs, model, training=True)
            replica_loss = scale_replica_loss(loss, optimizer)
        self.apply_gradients(tape, replica_loss, model, optimizer)
        self.update_metrics(metrics, loss, labels, outputs)
        return {"loss": loss}

    def validation_step(self, inputs, model: keras.Model,
                        metrics: list[keras.metrics.Metric]) -> dict[str, tf.Tensor]:
        loss, labels, outputs = self.compute_loss(inputs, model, training=False)
        self.update_metrics(metrics, loss, labels, outputs)
        return {"loss": loss}


def scale_replica_loss(loss: tf.Tensor, optimizer: keras.optimizers.Optimizer) -> tf.Tensor:
    """``loss`` divided by the number of replicas (their summed gradients are then the
    global-batch mean's), times the loss scale under mixed float16. Call inside the tape."""
    scaled = loss / tf.distribute.get_strategy().num_replicas_in_sync
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        scaled = optimizer.scale_loss(scaled)
    return scaled


def apply_loss_gradients(tape: tf.GradientTape, replica_loss: tf.Tensor, variables: list,
                         optimizer: keras.optimizers.Optimizer) -> None:
    """One update of ``variables`` by ``optimizer`` along the gradient of ``replica_loss``
    (from :func:`scale_replica_loss`, taken on ``tape``)."""
    gradients = tape.gradient(replica_loss, variables)
    optimizer.apply_gradients(zip(gradients, variables, strict=True))


TASKS: Registry[type[Task]] = Registry("task")


def task_class(name: str) -> type[Task]:
    """The registered Task class for ``name`` (unknown names list the valid ones)."""
    return TASKS.get(name)


def _convert_param(name: str, text: str, annotation: Any) -> Any:
    """``text`` as a value of the config field's type (int, float, bool, str, tuples, Optional)."""
    args = typing.get_args(annotation)
    if type(None) in args:
        if text.lower() == "none":
            return None
        annotation = next(arg for arg in args if arg is not type(None))
        args = typing.get_args(annotation)
    if typing.get_origin(annotation) is tuple:
        return tuple(_convert_param(name, part, args[0]) for part in text.split(",") if part)
    try:
        if annotation is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError(text)
            return text.lower() in ("true", "1")
        return annotation(text)
    except ValueError:
        raise ConfigError(f"task parameter {name}={text!r} is not a valid "
                          f"{getattr(annotation, '__name__', annotation)}") from None


def parse_task_params(config_class: type[TaskConfig], params: list[str]) -> dict[str, Any]:
    """``["key=value", ...]`` → typed overrides of ``config_class``'s task-specific fields."""
    common = {field.name for field in dataclasses.fields(TaskConfig)}
    own = [field.name for field in dataclasses.fields(config_class) if field.name not in common]
    hints = typing.get_type_hints(config_class)
    overrides: dict[str, Any] = {}
    for item in params:
        name, separator, text = item.partition("=")
        if not separator:
            raise ConfigError(f"task parameter {item!r} is not of the form name=value")
        if "." in name and SUBTASK_PARAMS in own:
            # "<subtask>.<name>=<value>": an option of a multitask's sub-task.
            overrides[SUBTASK_PARAMS] = (*overrides.get(SUBTASK_PARAMS, ()), item)
            continue
        if name not in own:
            valid = ", ".join(own) if own else "none"
            raise ConfigError(f"unknown task parameter {name!r}; valid: {valid}")
        overrides[name] = _convert_param(name, text, hints[name])
    return overrides
