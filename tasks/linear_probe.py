"""Linear probes on frozen features, one per endpoint (the survey's Table-4 protocol).

Jing & Tian (survey §7.1, Table 4) compare self-supervised encoders by training a linear classifier
on the frozen features of each layer and reporting top-1 accuracy on the test split; the layer
where accuracy peaks shows where the pretext task puts its most transferable features.

Protocol (fixed so numbers compare with REFERENCE.md's Fashion-MNIST reference runs):
  * features: every 4-D endpoint adaptively average-pooled to ``pool_size × pool_size``
    (default 3) and flattened; ``pool`` as it is (see :mod:`selfsup.tasks.features`);
  * train set: a seeded random subset of ``train_examples`` (default 10,000) training images;
    test set: the whole eval split;
  * classifier: features standardised with train statistics, softmax regression trained
    full-batch with Adam for a fixed number of steps; the L2 strength is picked per endpoint
    from one value per decade (1e-5 … 1e-1) on a seeded 20% of the train subset, then refitted
    on all of it (see :class:`LinearClassifierConfig` for the measurements behind this); the
    score is top-1 accuracy in percent on the test set.

Measured with these settings on Fashion-MNIST: raw pixels 83.1–83.6 (REFERENCE.md: 83.3);
random-init ``resnet_small`` best layer 84.1–84.9 over 3 seeds (REFERENCE.md: 85.4 ± 0.3).
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
# One L2 strength per decade. The best strength differs by layer by three decades (on
# Fashion-MNIST 10k: ~1e-5 for 144 stem features, ~1e-2 for 784 raw pixels) and a fixed value
# costs up to 4 points on some layer, so each probe picks its own on held-out train examples.
WEIGHT_DECAY_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


@dataclasses.dataclass(frozen=True)
class LinearClassifierConfig:
    """Softmax-regression settings shared by every probe (see the module docstring)."""

    # Full-batch Adam from zero with a cosine-decayed learning rate. Measured on Fashion-MNIST
    # (10k train, random-init resnet_small, 3×3) the chosen probe lands within 0.6 points of a
    # fully converged 4000-step run on the weakly regularised stem/res2 probes and within 0.2
    # elsewhere, in 3–7 s per endpoint.
    steps: int = 500
    learning_rate: float = 0.2
    # L2 on the weights (not the bias): loss = mean cross-entropy + weight_decay / 2 · ‖W‖².
    weight_decays: tuple[float, ...] = WEIGHT_DECAY_GRID
    # Share of the train examples held out to choose the weight decay; the chosen value is then
    # refitted on all train examples.
    validation_fraction: float = 0.2


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """One endpoint's probe: test top-1 (%), the chosen L2 strength and its validation top-1."""

    top1: float
    weight_decay: float
    validation_top1: float
    num_features: int


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


def _penalised_loss(x: tf.Tensor, y: tf.Tensor, decays: tf.Tensor, kernel: tf.Tensor,
                    bias: tf.Tensor) -> tf.Tensor:
    """Sum over the G classifiers of mean cross-entropy + decay / 2 · ‖W‖²."""
    logits = tf.einsum("nd,gdk->gnk", x, kernel) + bias[:, None, :]
    labels = tf.broadcast_to(y, tf.shape(logits)[:2])
    cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
    return tf.reduce_sum(tf.reduce_mean(cross_entropy, axis=1)
                         + 0.5 * decays * tf.reduce_sum(tf.square(kernel), axis=[1, 2]))


# Adam's default moment decays and epsilon (Kingma & Ba 2015, Algorithm 1; Keras' epsilon).
_BETA1, _BETA2, _EPSILON = 0.9, 0.999, 1e-7


@tf.function(reduce_retracing=True)
def _adam_full_batch(x: tf.Tensor, y: tf.Tensor, decays: tf.Tensor, kernel: tf.Tensor,
                     bias: tf.Tensor, steps: tf.Tensor, learning_rate: tf.Tensor
                     ) -> tuple[tf.Tensor, tf.Tensor]:
    """``steps`` full-batch Adam steps from (kernel, bias), learning rate cosine-decayed to 0.

    Written as one traced loop over plain tensors (no variables), so a single trace serves
    every endpoint and grid.
    """
    params = [kernel, bias]
    first = [tf.zeros_like(p) for p in params]
    second = [tf.zeros_like(p) for p in params]
    total = tf.cast(steps, tf.float32)
    for step in tf.range(steps):
        with tf.GradientTape() as tape:
            tape.watch(params)
            loss = _penalised_loss(x, y, decays, *params)
        gradients = tape.gradient(loss, params)
        t = tf.cast(step, tf.float32)
        rate = learning_rate * 0.5 * (1.0 + tf.cos(np.pi * t / total))
        rate *= tf.sqrt(1.0 - _BETA2 ** (t + 1.0)) / (1.0 - _BETA1 ** (t + 1.0))
        first = [_BETA1 * m + (1.0 - _BETA1) * g for m, g in zip(first, gradients, strict=True)]
        second = [_BETA2 * v + (1.0 - _BETA2) * g * g
                  for v, g in zip(second, gradients, strict=True)]
        params = [p - rate * m / (tf.sqrt(v) + _EPSILON)
                  for p, m, v in zip(params, first, second, strict=True)]
    return params[0], params[1]


def fit_softmax_regression(features: np.ndarray, labels: np.ndarray, num_classes: int,
                           weight_decays: tuple[float, ...] | list[float],
                           steps: int = 500, learning_rate: float = 0.2,
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Fits one softmax regression per weight decay, all at once, on standardised features.

    Returns kernels ``[len(weight_decays), d, num_classes]`` and biases
    ``[len(weight_decays), num_classes]``. The loss is convex and the optimisation full-batch
    from zero, so the result is deterministic. The classifiers share nothing but the batched
    matmul: the summed loss has independent gradients and Adam is element-wise.
    """
    if features.ndim != 2 or len(features) != len(labels) or not len(labels):
        raise ValueError(f"need features [n, d] and labels [n] with n > 0, got "
                         f"{features.shape} and {labels.shape}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got {labels.min()}.."
                         f"{labels.max()}")
    count, dims = len(weight_decays), features.shape[1]
    kernel, bias = _adam_full_batch(
        tf.constant(features, tf.float32), tf.constant(labels, tf.int64),
        tf.constant(weight_decays, tf.float32), tf.zeros([count, dims, num_classes]),
        tf.zeros([count, num_classes]), tf.constant(steps, tf.int32),
        tf.constant(learning_rate, tf.float32))
    return kernel.numpy(), bias.numpy()


def top1_accuracy(kernel: np.ndarray, bias: np.ndarray, features: np.ndarray,
                  labels: np.ndarray) -> float:
    """Top-1 accuracy (%) of the linear classifier ``features @ kernel + bias``."""
    predicted = np.argmax(features @ kernel + bias, axis=1)
    return 100.0 * float(np.mean(predicted == labels))


def probe_features(train_features: np.ndarray, train_labels: np.ndarray,
                   test_features: np.ndarray, test_labels: np.ndarray, num_classes: int,
                   seed: int = 0, config: LinearClassifierConfig = LinearClassifierConfig(),
                   ) -> ProbeResult:
    """Standardises with train statistics, picks the L2 strength on a seeded held-out share of
    the train examples, refits on all of them and returns the test top-1 (%)."""
    standardize = Standardizer.fit(train_features)
    train_x, test_x = standardize(train_features), standardize(test_features)
    decays = tuple(config.weight_decays)
    validation_top1 = float("nan")
    if len(decays) > 1:
        order = np.random.default_rng(seed).permutation(len(train_labels))
        held_out = max(1, int(round(config.validation_fraction * len(order))))
        if held_out >= len(order):
            raise ValueError(f"{len(order)} train examples are too few to hold out "
                             f"{config.validation_fraction:.0%} for validation")
        fit_part, validation_part = order[held_out:], order[:held_out]
        kernels, biases = fit_softmax_regression(
            train_x[fit_part], train_labels[fit_part], num_classes, decays, config.steps,
            config.learning_rate)
        scores = [top1_accuracy(k, b, train_x[validation_part], train_labels[validation_part])
                  for k, b in zip(kernels, biases, strict=True)]
        # Ties go to the stronger penalty (the simpler model).
        best = max(range(len(decays)), key=lambda i: (scores[i], decays[i]))
        decays, validation_top1 = (decays[best],), scores[best]
    kernels, biases = fit_softmax_regression(train_x, train_labels, num_classes, decays,
                                             config.steps, config.learning_rate)
    return ProbeResult(top1=top1_accuracy(kernels[0], biases[0], test_x, test_labels),
                       weight_decay=decays[0], validation_top1=validation_top1,
                       num_features=train_features.shape[1])


def seeded_subset(total: int, count: int | None, seed: int) -> np.ndarray | None:
    """Sorted indices of a seeded random ``count``-subset of ``range(total)``; None = all."""
    if count is None or count >= total:
        return None
    if count < 1:
        raise ConfigError(f"need at least one example, got {count}")
    return np.sort(np.random.default_rng(seed).choice(total, size=count, replace=False))


def select_examples(dataset: tf.data.Dataset, total: int,
                    indices: np.ndarray | None) -> tf.data.Dataset:
    """Keeps the examples at ``indices`` of a ``total``-example dataset, in dataset order."""
    if indices is None:
        return dataset
    keep = tf.constant(np.isin(np.arange(total), indices))
    # Filters instead of take(last + 1) so the pipeline's in-memory cache is read to the end.
    dataset = dataset.enumerate().filter(lambda index, example: tf.gather(keep, index))
    return dataset.map(lambda index, example: example)


def linear_probe_results(encoder: keras.Model | Callable, source: ImageSource, *,
                         train_examples: int | None = DEFAULT_TRAIN_EXAMPLES,
                         test_examples: int | None = None, image_size: int | None = None,
                         seed: int = 0, pool_size: int = DEFAULT_POOL_SIZE,
                         classifier: LinearClassifierConfig = LinearClassifierConfig(),
                         batch_size: int = 256, log: Callable[[str], None] = logging.info,
                         ) -> dict[str, ProbeResult]:
    """:func:`linear_probe` with each endpoint's full :class:`ProbeResult`."""
    num_classes = source.num_classes
    if num_classes is None:
        raise ConfigError(f"dataset {source.name!r} has no class labels to probe with")
    if pool_size < 1:
        raise ConfigError(f"pool_size must be positive, got {pool_size}")
    splits = {}
    for role, split, count in (("train", "train", train_examples),
                               ("test", source.eval_split, test_examples)):
        source.check_split(split)
        total = source.num_examples(split)
        # Different seeds for the two subsets so their choice is independent.
        indices = seeded_subset(total, count, seed + (0 if role == "train" else 1))
        dataset = select_examples(image_label_dataset(source, split, image_size), total, indices)
        splits[role] = extract_features(
            encoder, dataset, pool_size=pool_size, batch_size=batch_size,
            num_examples=total if indices is None else len(indices), log=log,
            description=f"{role} features ({split})")
    (train_features, train_labels), (test_features, test_labels) = (splits["train"],
                                                                    splits["test"])
    results = {}
    for name, features in train_features.items():
        start = time.perf_counter()
        result = probe_features(features, train_labels, test_features[name], test_labels,
                                num_classes, seed, classifier)
        log(f"linear probe {name} ({result.num_features} features): top-1 {result.top1:.2f}% "
            f"(L2 {result.weight_decay:g}, validation {result.validation_top1:.2f}%, "
            f"{time.perf_counter() - start:.1f} s)")
        results[name] = result
    return results


def linear_probe(encoder: keras.Model | Callable, source: ImageSource, *,
                 train_examples: int | None = DEFAULT_TRAIN_EXAMPLES,
                 test_examples: int | None = None, image_size: int | None = None,
                 seed: int = 0, pool_size: int = DEFAULT_POOL_SIZE,
                 classifier: LinearClassifierConfig = LinearClassifierConfig(),
                 batch_size: int = 256, log: Callable[[str], None] = logging.info,
                 ) -> dict[str, float]:
    """Test top-1 (%) of a linear classifier on each endpoint of the frozen ``encoder``.

    ``encoder(images, training=False)`` must return a dict of endpoints (4-D maps are pooled to
    ``pool_size × pool_size``, vectors kept). Training examples are a subset of the train split
    drawn with ``seed`` (None = all); ``test_examples`` likewise subsamples the eval split
    (None = all, the protocol's setting). Endpoints come back in the encoder's order.
    """
    results = linear_probe_results(
        encoder, source, train_examples=train_examples, test_examples=test_examples,
        image_size=image_size, seed=seed, pool_size=pool_size, classifier=classifier,
        batch_size=batch_size, log=log)
    return {name: result.top1 for name, result in results.items()}
