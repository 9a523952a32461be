"""SimCLR: two random views of every image must recognise each other among the batch.

Chen, Kornblith, Norouzi & Hinton, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020. Each image gets two views (crop, flip, colour jitter, grayscale,
blur: :mod:`selfsup.datasets.augment`), the encoder and a projection MLP g(·) map them to
embeddings, and NT-Xent (eq. 1, :func:`selfsup.tasks.contrastive.nt_xent`) pulls each view
towards its partner and away from the other 2N − 2 views of the global batch (negatives gathered
across replicas). The probe and exporter use the encoder before g(·), as the paper does (§4.2).

Constants and choices (fields of :class:`SimCLRConfig`):

* temperature τ = 0.2: the paper's ImageNet runs use 0.1 and its CIFAR-10 runs (official repo)
  0.5; a standalone SimCLR run on Fashion-MNIST (``REFERENCE.md``: 10 CPU-min, batch 256) reached
  88.8 % best-layer probe with 0.2, so that is the default here.
* Projection head: the paper writes g(h) = W₂ σ(W₁ h) with an output of 128 (§2, Fig. 8); the
  official code puts BatchNorm after each dense layer of the head. Default: one hidden layer with
  BatchNorm (synchronized with the backbone's), output 128. The paper's hidden width equals the
  encoder's (2048 for ResNet-50); ``resnet_small`` has only 64 features, so the default hidden
  width is 512 (``projection_hidden_units``).
* Views: colour strength s = 0.5 (the paper's CIFAR-10 setting, Appendix B.9); crop area
  20–100 % instead of 8–100 % because at 28 px an 8 % crop is an 8×8-pixel patch (20 % is MoCo's
  official value); blur with probability 0.5 (the ImageNet recipe; the paper drops blur on
  CIFAR, but on grayscale Fashion-MNIST crop, flip and blur are the augmentations that matter).
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from selfsup.datasets import training_images
from selfsup.datasets.augment import ViewAugmentation, simclr_augmentation, view_pairs
from selfsup.models.heads import MLPHead
from selfsup.models.registry import ConfigError
from selfsup.tasks.base import TASKS, PretextModel, Task, TaskConfig
from selfsup.tasks.contrastive import nt_xent

SIMCLR_PROJECTION_DIM = 128  # Chen et al. 2020, §4.2 / Fig. 8: z = g(h) ∈ R^128.
FASHION_MNIST_TEMPERATURE = 0.2  # measured on Fashion-MNIST (REFERENCE.md); paper: 0.1 / 0.5.


@dataclasses.dataclass(frozen=True)
class SimCLRConfig(TaskConfig):
    """SimCLR settings (see the module docstring for the sources of the defaults)."""

    temperature: float = FASHION_MNIST_TEMPERATURE
    projection_hidden_units: tuple[int, ...] = (512,)
    projection_dim: int = SIMCLR_PROJECTION_DIM
    projection_batch_norm: bool = True
    color_strength: float = 0.5
    crop_min_area: float = 0.2
    blur_probability: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {self.temperature}")
        if self.projection_dim <= 0 or any(u <= 0 for u in self.projection_hidden_units):
            raise ConfigError("projection sizes must be positive")
        if not 0 < self.crop_min_area <= 1:
            raise ConfigError(f"crop_min_area must be in (0, 1], got {self.crop_min_area}")
        if not 0 <= self.blur_probability <= 1:
            raise ConfigError(f"blur_probability must be in [0, 1], got {self.blur_probability}")
        if self.color_strength < 0:
            raise ConfigError(f"color_strength must not be negative, got {self.color_strength}")


def projection_head(config: SimCLRConfig) -> MLPHead:
    """SimCLR's projection g(·) on the pooled features, as ``config`` sets it (named "head")."""
    return MLPHead(config.projection_hidden_units, config.projection_dim,
                   batch_norm=config.projection_batch_norm,
                   synchronized_bn=config.synchronized_bn, name="head")


def view_pair_inputs(task: Task, augmentation: ViewAugmentation,
                     input_context: tf.distribute.InputContext | None) -> tf.data.Dataset:
    """Per-replica ``(view_a, view_b)`` batches of the task's training images.

    Views are made on the input pipeline's whole batch (all the replicas it feeds) and only then
    split into per-replica batches, so for a given global batch the views do not depend on how
    many replicas share it (one device and MirroredStrategy see the same views).
    """
    config = task.config
    per_replica = task.per_replica_batch_size(input_context)
    replicas_per_pipeline, pipeline_id = 1, 0
    if input_context is not None:
        replicas_per_pipeline = (input_context.num_replicas_in_sync
                                 // input_context.num_input_pipelines)
        pipeline_id = input_context.input_pipeline_id
    images = training_images(task.source, config.train_split, config.image_size,
                             per_replica * replicas_per_pipeline, config.seed, input_context)
    pairs = view_pairs(images, augmentation, config.seed, pipeline_id)
    if replicas_per_pipeline > 1:
        pairs = pairs.rebatch(per_replica, drop_remainder=True)
    return pairs.prefetch(tf.data.AUTOTUNE)


class SimCLRTask(Task):
    """SimCLR pretext task (Chen et al. 2020): NT-Xent between two views of each image."""

    config_class = SimCLRConfig
    config: SimCLRConfig

    def augmentation(self) -> ViewAugmentation:
        config = self.config
        return simclr_augmentation(config.color_strength, crop_area=(config.crop_min_area, 1.0),
                                   blur_probability=config.blur_probability)

    def build_model(self) -> PretextModel:
        return PretextModel(self.build_backbone(), projection_head(self.config), name="simclr")

    def build_inputs(self, input_context: tf.distribute.InputContext | None = None
                     ) -> tf.data.Dataset:
        return view_pair_inputs(self, self.augmentation(), input_context)

    def build_metrics(self) -> list[keras.metrics.Metric]:
        return [keras.metrics.Mean("loss")]

    def contrastive_loss(self, inputs, model: keras.Model, training: bool) -> tf.Tensor:
        """NT-Xent of this replica's pairs; one forward pass over both views (BN sees both)."""
        view_a, view_b = inputs
        count = tf.shape(view_a)[0]
        projections = model(tf.concat([view_a, view_b], axis=0), training=training)["logits"]
        return nt_xent(projections[:count], projections[count:], self.config.temperature)

    def compute_loss(self, inputs, model: keras.Model, training: bool):
        return self.contrastive_loss(inputs, model, training), None, {}


TASKS.register("simclr", SimCLRTask)
