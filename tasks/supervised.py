"""Supervised image classification: an encoder and a linear classifier trained on labels.

Two roles: the "supervised" row of the zoo (Jing & Tian's Table 4 "ImageNet labels" row:
features learned from the dataset's labels from random init, the reference every
self-supervised method is measured against), and the training behind image fine-tuning
(``init_from`` a ``selfsup-train`` run, :mod:`selfsup.tasks.image_finetune`). The head, the
pretrained start and the encoder / head optimizer groups are shared with the video task
(:mod:`selfsup.tasks.finetuning`). Loss: softmax cross-entropy; metrics: loss and top-1.

Training augmentation (``augmentation``), drawn per image from per-batch stateless seeds:

* ``pad_crop_flip`` (default): zero-pad ``crop_padding`` pixels on every side, take a random
  crop of the original size, mirror left-right with probability 1/2 — the CIFAR recipe of He et
  al. 2016 §4.2 (4 px at 32 px). Default padding ``image_size // 8``: 4 px at 32, 3 px on
  28-px Fashion-MNIST (whose background is black, like the padding);
* ``resized_crop_flip``: Inception-style random resized crop (area 8–100 %, aspect ratio
  3/4–4/3; Szegedy et al. 2015) and a flip, the ImageNet recipe for larger images;
* ``flip``: the flip alone; ``none``: the images as read.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from selfsup.datasets import ImageSource, pipelines
from selfsup.datasets.augment import random_flip, random_resized_crop
from selfsup.datasets.patches import fit_to_side
from selfsup.models.registry import ConfigError
from selfsup.tasks.base import TASKS, TaskConfig
from selfsup.tasks.finetuning import FinetuneTask, check_finetune_fields

AUGMENTATIONS = ("pad_crop_flip", "resized_crop_flip", "flip", "none")
EVAL_BATCH_SIZE = 256


@dataclasses.dataclass(frozen=True)
class SupervisedConfig(TaskConfig):
    """Supervised training and fine-tuning settings (the data fields are TaskConfig's)."""

    # Model dir of a pretrained run whose encoder (latest checkpoint) initialises this one;
    # None: random init. Its backbone and backbone_kwargs must be these.
    init_from: str | None = None
    # The encoder's learning rate is the run's times this; the head's is the run's.
    encoder_learning_rate_scale: float = 1.0
    # Dropout on the pooled features before the classifier (0: none).
    dropout: float = 0.0
    # Classes of the classifier; None: the dataset's.
    num_classes: int | None = None
    # Training augmentation (module docstring): one of AUGMENTATIONS.
    augmentation: str = "pad_crop_flip"
    # Zero padding of pad_crop_flip in pixels per side; None: image_size // 8.
    crop_padding: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_finetune_fields(self)
        if self.augmentation not in AUGMENTATIONS:
            raise ConfigError(f"unknown augmentation {self.augmentation!r}; valid: "
                              f"{', '.join(AUGMENTATIONS)}")
        if self.crop_padding is not None and self.crop_padding < 0:
            raise ConfigError(f"crop_padding must not be negative, got {self.crop_padding}")

    @property
    def padding(self) -> int:
        """Pixels of zero padding per side for ``pad_crop_flip``."""
        return self.image_size // 8 if self.crop_padding is None else self.crop_padding


def pad_and_crop(images: tf.Tensor, seed: tf.Tensor, padding: int) -> tf.Tensor:
    """``[b, s, s, c]`` images zero-padded by ``padding`` pixels per side, then one uniformly
    placed ``s × s`` crop per image (He et al. 2016 §4.2's CIFAR augmentation)."""
    if padding == 0:
        return images
    padded = tf.pad(images, [[0, 0], [padding, padding], [padding, padding], [0, 0]])
    return fit_to_side(padded, images.shape[1], seed)


def augment_images(images: tf.Tensor, seed: tf.Tensor, augmentation: str, padding: int
                   ) -> tf.Tensor:
    """One training view of every image of the batch (``augmentation``: see the module
    docstring); ``seed``: a stateless ``[2]`` seed for the whole batch."""
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    if augmentation == "pad_crop_flip":
        images = pad_and_crop(images, crop_seed, padding)
    elif augmentation == "resized_crop_flip":
        images = random_resized_crop(images, crop_seed, images.shape[1])
    elif augmentation == "none":
        return images
    return random_flip(images, flip_seed)


def split_size(source: ImageSource, split: str) -> int:
    """Examples in ``split``, tfds slices such as ``test[:200]`` or ``train[10%:]`` too."""
    source.check_split(split)
    return int(source.builder.info.splits[split].num_examples)


class SupervisedTask(FinetuneTask):
    """Image classification on the dataset's labels, from a pretrained or a random-init
    encoder (the survey's supervised baseline and image fine-tuning)."""

    config_class = SupervisedConfig
    config: SupervisedConfig
    model_name = "supervised"

    def class_count(self) -> int:
        """The config's ``num_classes``, else the dataset's; ConfigError for an unlabelled
        dataset or fewer classes than its labels."""
        theirs = self.source.num_classes
        if self.config.num_classes is None:
            if theirs is None:
                raise ConfigError(f"dataset {self.source.name!r} has no labels to train a "
                                  "classifier on")
            return theirs
        if theirs is not None and self.config.num_classes < theirs:
            raise ConfigError(f"num_classes={self.config.num_classes} is fewer than the "
                              f"{theirs} classes of {self.source.name!r}")
        return self.config.num_classes

    def build_inputs(self, input_context: tf.distribute.InputContext | None = None
                     ) -> tf.data.Dataset:
        """``(augmented images [b, s, s, 3], int64 labels [b])``: endless shuffled batches
        of the train split."""
        config = self.config
        self.class_count()  # an unlabelled dataset fails here, not at the first step
        batches = pipelines.training_image_labels(
            self.source, config.train_split, config.image_size,
            self.per_replica_batch_size(input_context), config.seed, input_context)
        stream = 0 if input_context is None else input_context.input_pipeline_id
        batches = pipelines.with_batch_seeds(batches, config.seed, stream)

        def augment(batch, seed):
            images, labels = batch
            return augment_images(images, seed, config.augmentation, config.padding), labels

        return batches.map(augment, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
            tf.data.AUTOTUNE)

    def eval_inputs(self, split: str | None = None, examples: np.ndarray | None = None,
                    batch_size: int = EVAL_BATCH_SIZE) -> tf.data.Dataset:
        """Batches of ``(images, labels)`` of ``split`` (default: the eval split) in file
        order, no augmentation; ``examples``: only these indices of the split (default:
        all). The input of :meth:`validation_step`."""
        from selfsup.tasks.linear_probe import select_examples

        split = split or self.source.eval_split
        self.source.check_split(split)
        dataset = pipelines.image_label_dataset(self.source, split, self.config.image_size)
        dataset = select_examples(dataset, split_size(self.source, split), examples)
        return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    def evaluate(self, model: keras.Model, split: str | None = None,
                 examples: np.ndarray | None = None, batch_size: int = EVAL_BATCH_SIZE
                 ) -> dict[str, float]:
        """``{"top1": %, "examples": n}`` of ``model`` on :meth:`eval_inputs` (the metrics of
        :meth:`validation_step`, inference-mode BatchNorm)."""
        metrics = self.build_metrics()
        accuracy = next(metric for metric in metrics if metric.name == "accuracy")
        step = tf.function(lambda batch: self.validation_step(batch, model, metrics))
        count = 0
        for batch in self.eval_inputs(split, examples, batch_size):
            step(batch)
            count += int(batch[1].shape[0])
        if count == 0:
            raise ConfigError("no examples to evaluate")
        return {"top1": 100.0 * float(accuracy.result()), "examples": count}


TASKS.register("supervised", SupervisedTask)
