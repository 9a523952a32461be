"""Multi-task self-supervision: several pretext tasks train one shared encoder.

Doersch & Zisserman, "Multi-task Self-Supervised Visual Learning", ICCV 2017, and the survey's
recommendation to combine pretext tasks (Jing & Tian, §7.5 and §8). Every sub-task keeps its own
input pipeline, pseudo-labels and head; they share the encoder (``model.backbone``), and the loss
of a step is the weighted sum ``Σᵢ wᵢ Lᵢ`` of the sub-tasks' losses on their own batches (the
paper's naive combination, which it found as good as its lasso-weighted one for the encoder).

``--task=multitask --subtasks=rotnet,jigsaw --weights=1,0.5``; a sub-task's own option is
``--task_param=<subtask>.<name>=<value>`` (e.g. ``jigsaw.num_permutations=100``). Sub-tasks
whose encoder is not one registry backbone (CMC, CPC, split-brain), that keep a second encoder
or their own step (MoCo, the adversarial tasks) or work between epochs (DeepCluster) cannot
share the encoder (``Task.shares_backbone`` / ``can_share_backbone``) and are refused with the
list of those that can.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from selfsup.models.registry import ConfigError
from selfsup.tasks.base import TASKS, Task, TaskConfig, parse_task_params, task_class
from selfsup.tasks.video_base import VideoTask

MULTITASK = "multitask"


def shareable_task_names() -> list[str]:
    """Registered image tasks whose class can share an encoder inside ``multitask`` (its
    config is an image config: video tasks are not sub-tasks)."""
    return [name for name in TASKS.names()
            if name != MULTITASK and task_class(name).shares_backbone
            and not issubclass(task_class(name), VideoTask)]


def multitask_params(task: str, subtasks: list[str] | None, weights: list[str] | None
                     ) -> dict:
    """``--subtasks`` / ``--weights`` as multitask config fields (refused for other tasks)."""
    if subtasks is None and weights is None:
        return {}
    if task != MULTITASK:
        raise ConfigError("--subtasks and --weights apply to --task=multitask only")
    params: dict = {}
    if subtasks is not None:
        params["subtasks"] = tuple(subtasks)
    if weights is not None:
        try:
            params["weights"] = tuple(float(weight) for weight in weights)
        except ValueError:
            raise ConfigError(f"--weights must be numbers, got {','.join(weights)}") from None
    return params


@dataclasses.dataclass(frozen=True)
class MultiTaskConfig(TaskConfig):
    """Sub-task names, their loss weights (empty: 1 each) and their own options
    (``"<subtask>.<name>=<value>"``)."""

    subtasks: tuple[str, ...] = ("rotnet", "jigsaw")
    weights: tuple[float, ...] = ()
    subtask_params: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        # Read back from run_config.json these are lists.
        for name in ("subtasks", "weights", "subtask_params"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.subtasks:
            raise ConfigError("multitask needs at least one sub-task (--subtasks)")
        if len(set(self.subtasks)) != len(self.subtasks):
            raise ConfigError(f"sub-tasks must be distinct, got {', '.join(self.subtasks)}")
        if self.weights and len(self.weights) != len(self.subtasks):
            raise ConfigError(f"{len(self.weights)} weights for {len(self.subtasks)} sub-tasks")
        if any(weight < 0 for weight in self.weights) or sum(self.loss_weights()) <= 0:
            raise ConfigError(f"weights must be non-negative and not all 0, got {self.weights}")
        self.subtask_tasks()  # unknown, unshareable or misconfigured sub-tasks fail here

    def subtask_tasks(self) -> list[Task]:
        """The sub-tasks, each with its config; refuses those that cannot share the encoder."""
        def refuse(name: str) -> ConfigError:
            return ConfigError(f"task {name!r} cannot share its encoder in multitask; sub-tasks "
                               f"that can: {', '.join(shareable_task_names())}")

        for name in self.subtasks:
            if name == MULTITASK or issubclass(task_class(name), VideoTask):
                raise refuse(name)
        tasks = [task_class(name)(config)
                 for name, config in zip(self.subtasks, self.subtask_configs(), strict=True)]
        for name, task in zip(self.subtasks, tasks, strict=True):
            if not task.can_share_backbone():
                raise refuse(name)
        return tasks

    def loss_weights(self) -> tuple[float, ...]:
        return self.weights or (1.0,) * len(self.subtasks)

    def subtask_configs(self) -> list[TaskConfig]:
        """Each sub-task's config: the shared fields of this one plus its own options."""
        shared = {field.name: getattr(self, field.name) for field in dataclasses.fields(TaskConfig)}
        own: dict[str, list[str]] = {name: [] for name in self.subtasks}
        for item in self.subtask_params:
            subtask, dot, param = item.partition(".")
            if not dot or subtask not in own:
                raise ConfigError(f"sub-task option {item!r} must start with one of the "
                                  f"sub-tasks: {', '.join(self.subtasks)}")
            own[subtask].append(param)
        configs = []
        for name in self.subtasks:
            cls = task_class(name)
            configs.append(cls.config_class(**shared,
                                            **parse_task_params(cls.config_class, own[name])))
        return configs


class MultiTaskModel(keras.Model):
    """The shared encoder plus one model per sub-task built around it.

    ``call`` takes a tuple with each sub-task's input and returns ``{subtask: its outputs}``.
    """

    def __init__(self, backbone: keras.Model, submodels: list[keras.Model],
                 subtasks: tuple[str, ...], **kwargs) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone
        self.submodels = submodels
        self.subtasks = subtasks

    def call(self, inputs, training=None):
        return {name: model(sub_inputs, training=training)
                for name, model, sub_inputs in zip(self.subtasks, self.submodels, inputs,
                                                   strict=True)}


class MultiTask(Task):
    """Several pretext tasks on one encoder (Doersch & Zisserman 2017); weighted loss sum."""

    config_class = MultiTaskConfig
    config: MultiTaskConfig
    shares_backbone = False

    def __init__(self, config: MultiTaskConfig) -> None:
        super().__init__(config)
        self.subtasks = config.subtask_tasks()

    def build_model(self) -> MultiTaskModel:
        backbone = self.build_backbone()
        # Built alone and first: its variables are named backbone/... (what probes and
        # exporters restore), not after the first sub-task, some of which build their model
        # as soon as they make it.
        size = self.config.image_size
        backbone(tf.zeros([1, size, size, 3]), training=False)
        submodels = []
        for task in self.subtasks:
            task.share_backbone(backbone)
            submodels.append(task.build_model())
        names = [model.name for model in submodels]
        if len(set(names)) != len(names):
            raise ConfigError(f"sub-task models need distinct names, got {', '.join(names)}")
        return MultiTaskModel(backbone, submodels, self.config.subtasks, name=MULTITASK)

    def dummy_inputs(self) -> tuple:
        return tuple(task.dummy_inputs() for task in self.subtasks)

    def build_inputs(self, input_context: tf.distribute.InputContext | None = None
                     ) -> tf.data.Dataset:
        """The sub-tasks' batches side by side: element ``i`` is sub-task ``i``'s input."""
        pipelines = tuple(task.build_inputs(input_context) for task in self.subtasks)
        return tf.data.Dataset.zip(pipelines).prefetch(tf.data.AUTOTUNE)

    def build_metrics(self) -> list[keras.metrics.Metric]:
        return [keras.metrics.Mean("loss"),
                *(keras.metrics.Mean(f"{name}_loss") for name in self.config.subtasks)]

    def compute_loss(self, inputs, model: MultiTaskModel, training: bool):
        """``Σᵢ wᵢ Lᵢ``; the outputs are the sub-task losses (``<subtask>_loss``)."""
        total = 0.0
        losses = {}
        for task, submodel, sub_inputs, weight, name in zip(
                self.subtasks, model.submodels, inputs, self.config.loss_weights(),
                self.config.subtasks, strict=True):
            loss, _, _ = task.compute_loss(sub_inputs, submodel, training)
            losses[f"{name}_loss"] = loss
            total += weight * loss
        return total, None, losses

    def update_metrics(self, metrics: list[keras.metrics.Metric], loss: tf.Tensor,
                       labels, outputs: dict[str, tf.Tensor]) -> None:
        for metric in metrics:
            metric.update_state(loss if metric.name == "loss" else outputs[metric.name])

    def sample_images(self, model: MultiTaskModel) -> dict[str, tf.Tensor]:
        return {f"{name}_{key}": images
                for task, submodel, name in zip(self.subtasks, model.submodels,
                                                self.config.subtasks, strict=True)
                for key, images in task.sample_images(submodel).items()}


TASKS.register(MULTITASK, MultiTask)
