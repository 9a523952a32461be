"""Linear probes on frozen features, one per endpoint (the survey's Table-4 protocol).

Jing & Tian (survey §6, Table 4) compare self-supervised encoders by training a linear classifier
on the frozen features of each layer and reporting top-1 accuracy on the test split; the layer
where accuracy peaks shows where the pretext task puts its most transferable features.

Protocol (fixed so numbers compare with REFERENCE.md's Fashion-MNIST reference runs):
  * features: every 4-D endpoint adaptively average-pooled to ``pool_size × pool_size``
    (default 3) and flattened; ``pool`` as it is (see :mod:`selfsup.tasks.features`);
  * train set: a seeded random subset of ``train_examples`` (default 10,000) training images;
    test set: the whole eval split;
  * classifier: features standardised with train statistics, softmax regression trained with
    mini-batch Adam for a fixed number of epochs with a small L2 penalty (values chosen by
    measurement, see :class:`LinearClassifierConfig`); top-1 accuracy in percent.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from selfsup.datasets import ImageSource, image_label_dataset
from selfsup.models import ConfigError
from selfsup.tasks.features import DEFAULT_POOL_SIZE, extract_features

DEFAULT_TRAIN_EXAMPLES = 10_000
# A feature whose train-set spread is below this is constant (e.g. a dead ReLU channel); it is
# centred but not scaled, so it stays zero instead of blowing up.
MIN_FEATURE_STD = 1e-6


@dataclasses.dataclass(frozen=True)
class LinearClassifierConfig:
    """Softmax-regression training settings for one probe.

    Measured on Fashion-MNIST (10k train, random-init ``resnet_small`` at 3×3 and raw pixels):
    these settings reach within ~0.2 points of a 10× longer run.
    """

    epochs: int = 30
    batch_size: int = 256
    learning_rate: float = 1e-3
    # L2 on the weights (not the bias): loss = cross-entropy + weight_decay / 2 · ‖W‖².
    weight_decay: float = 1e-4


@dataclasses.dataclass(frozen=True)
class Standardizer:
    """Per-feature centring and scaling with statistics fitted on the train features."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, features: np.ndarray) -> Standardizer:
        features = features.astype(np.float64)
        std = features.std(axis=0)
        std[std < MIN_FEATURE_STD] = 1.0
        return cls(features.mean(axis=0).astype(np.float32), std.astype(np.float32))

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return ((features - self.mean) / self.scale).astype(np.float32)


def train_linear_classifier(features: np.ndarray, labels: np.ndarray, num_classes: int,
                            seed: int = 0,
                            config: LinearClassifierConfig = LinearClassifierConfig(),
                            ) -> keras.layers.Dense:
    """Fits softmax regression (a zero-initialised Dense layer) on already standardised features.

    The loss is convex, so zero initialisation is fine; ``seed`` fixes the mini-batch order.
    """
    if features.ndim != 2 or len(features) != len(labels):
        raise ValueError(f"need features [n, d] and labels [n], got {features.shape} and "
                         f"{labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got {labels.min()}..."
                         f"{labels.max()}")
    dense = keras.layers.Dense(num_classes, kernel_initializer="zeros", name="linear_probe")
    dense.build((None, features.shape[1]))
    optimizer = keras.optimizers.Adam(config.learning_rate)
    optimizer.build(dense.trainable_variables)
    x_all = tf.constant(features, tf.float32)
    y_all = tf.constant(labels, tf.int64)

    @tf.function(reduce_retracing=True)
    def train_step(indices: tf.Tensor) -> tf.Tensor:
        x = tf.gather(x_all, indices)
        y = tf.gather(y_all, indices)
        with tf.GradientTape() as tape:
            logits = dense(x)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
            loss += 0.5 * config.weight_decay * tf.reduce_sum(tf.square(dense.kernel))
        gradients = tape.gradient(loss, dense.trainable_variables)
        optimizer.apply(gradients, dense.trainable_variables)
        return loss

    rng = np.random.default_rng(seed)
    count = len(labels)
    for _ in range(config.epochs):
        order = rng.permutation(count)
        for begin in range(0, count, config.batch_size):
            train_step(tf.constant(order[begin:begin + config.batch_size]))
    return dense


def top1_accuracy(classifier: keras.layers.Layer, features: np.ndarray, labels: np.ndarray,
                  batch_size: int = 4096) -> float:
    """Top-1 accuracy (%) of ``classifier``'s logits on ``features`` against ``labels``."""
    correct = 0
    for begin in range(0, len(labels), batch_size):
        logits = classifier(tf.constant(features[begin:begin + batch_size]))
        predicted = np.argmax(keras.ops.convert_to_numpy(logits), axis=1)
        correct += int(np.sum(predicted == labels[begin:begin + batch_size]))
    return 100.0 * correct / max(len(labels), 1)


def probe_features(train_features: np.ndarray, train_labels: np.ndarray,
                   test_features: np.ndarray, test_labels: np.ndarray, num_classes: int,
                   seed: int = 0, config: LinearClassifierConfig = LinearClassifierConfig(),
                   ) -> float:
    """Standardises with train statistics, fits softmax regression, returns test top-1 (%)."""
    standardize = Standardizer.fit(train_features)
    classifier = train_linear_classifier(standardize(train_features), train_labels,
                                         num_classes, seed, config)
    return top1_accuracy(classifier, standardize(test_features), test_labels)


def seeded_subset(total: int, count: int | None, seed: int) -> np.ndarray | None:
    """Sorted indices of a seeded random ``count``-subset of ``range(total)``; None = all."""
    if count is None or count >= total:
        return None
    if count < 1:
        raise ConfigError(f"need at least one example, got {count}")
    return np.sort(np.random.default_rng(seed).choice(total, size=count, replace=False))


def _select(dataset: tf.data.Dataset, total: int, indices: np.ndarray | None
            ) -> tf.data.Dataset:
    """Keeps the examples at ``indices`` of a ``total``-example dataset, in dataset order."""
    if indices is None:
        return dataset
    keep = tf.constant(np.isin(np.arange(total), indices))
    # Filters instead of take(last + 1) so the pipeline's in-memory cache is read to the end.
    dataset = dataset.enumerate().filter(lambda index, example: tf.gather(keep, index))
    return dataset.map(lambda index, example: example)


def linear_probe(encoder: keras.Model | Callable, source: ImageSource, *,
                 train_examples: int | None = DEFAULT_TRAIN_EXAMPLES,
                 test_examples: int | None = None, image_size: int | None = None,
                 seed: int = 0, pool_size: int = DEFAULT_POOL_SIZE,
                 classifier: LinearClassifierConfig = LinearClassifierConfig(),
                 batch_size: int = 256, log: Callable[[str], None] = logging.info,
                 ) -> dict[str, float]:
    """Test top-1 (%) of a linear classifier on each endpoint of the frozen ``encoder``.

    ``encoder(images, training=False)`` must return a dict of endpoints. Training examples are a
    subset of the train split drawn with ``seed`` (None = all); ``test_examples`` likewise
    subsamples the eval split (None = all, the protocol's setting). Returns endpoints in the
    encoder's order.
    """
    num_classes = source.num_classes
    if num_classes is None:
        raise ConfigError(f"dataset {source.name!r} has no class labels to probe with")
    if pool_size < 1:
        raise ConfigError(f"pool_size must be positive, got {pool_size}")
    eval_split = source.eval_split
    splits = {}
    for role, split, count in (("train", "train", train_examples),
                               ("test", eval_split, test_examples)):
        source.check_split(split)
        # Different seeds for the two subsets so their choice is independent.
        total = source.num_examples(split)
        indices = seeded_subset(total, count, seed + (0 if role == "train" else 1))
        dataset = _select(image_label_dataset(source, split, image_size), total, indices)
        size = total if indices is None else len(indices)
        splits[role] = extract_features(
            encoder, dataset, pool_size=pool_size, batch_size=batch_size, num_examples=size,
            log=log, description=f"{role} features ({split})")
    (train_features, train_labels), (test_features, test_labels) = (splits["train"],
                                                                    splits["test"])
    results = {}
    for name, features in train_features.items():
        start = time.perf_counter()
        results[name] = probe_features(features, train_labels, test_features[name],
                                       test_labels, num_classes, seed, classifier)
        log(f"linear probe {name} ({features.shape[1]} features): top-1 {results[name]:.2f}% "
            f"({time.perf_counter() - start:.1f} s)")
    return results
