"""Linear probes on frozen features, one per endpoint (the survey's Table-4 protocol).

Jing & Tian (survey §7.1, Table 4) compare self-supervised encoders by training a linear classifier
on the frozen features of each layer and reporting top-1 accuracy on the test split; the layer
where accuracy peaks shows where the pretext task puts its most transferable features.

Protocol (fixed so numbers compare with REFERENCE.md's Fashion-MNIST reference runs):
  * features (:func:`frozen_features`, shared with the kNN, SVM and low-shot protocols): every
    4-D endpoint adaptively average-pooled to ``pool_size × pool_size`` (default 3) and
    flattened, or — with ``feature_dims`` — each layer pooled to its own grid giving about
    ``feature_dims`` features, as Goyal, Mahajan, Gupta & Misra 2019 ("Scaling and Benchmarking
    Self-Supervised Visual Representation Learning", ICCV) do with ~9k features per layer;
    ``pool`` as it is (see :mod:`selfsup.tasks.features`);
  * train set: a seeded random subset of ``train_examples`` (default 10,000) training images;
    test set: the whole eval split;
  * classifier: features standardised with train statistics — the BatchNorm without affine
    parameters that Goyal et al. 2019 (their benchmark's linear heads) and later He et al. 2022
    (MAE's linear probe) put before the linear layer: with full-batch training its batch
    statistics are the train statistics and an affine γ/β would be absorbed by the linear layer
    (``standardize=False``: raw features) — then softmax regression trained full-batch with
    Adam for a fixed number of steps; the L2 strength (one value per decade, 1e-5 … 1e-1) and
    optionally the learning rate are picked per endpoint on a seeded 20% of the train subset,
    then refitted on all of it (see :class:`LinearClassifierConfig` for the measurements behind
    this); the score is top-1 accuracy in percent on the test set.

Measured with these settings on Fashion-MNIST: raw pixels 83.1–83.6 (REFERENCE.md: 83.3);
random-init ``resnet_small`` best layer 84.1–84.9 over 3 seeds (REFERENCE.md: 85.4 ± 0.3).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from selfsup.datasets import ImageSource, image_label_dataset
from selfsup.models import ConfigError
from selfsup.tasks.features import DEFAULT_POOL_SIZE, extract_pooled_features

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
    """Softmax-regression settings shared by every probe (see the module docstring).

    The grid searched on the validation share is every (learning rate, weight decay) pair of
    ``learning_rates × weight_decays``; a grid of one pair skips the validation fit.
    ``standardize=True`` is BatchNorm without affine parameters before the linear layer
    (Goyal et al. 2019; He et al. 2022): with full-batch training BN's batch mean and variance
    are the train features' (what :class:`Standardizer` fits), and BN's γ/β would be absorbed
    into the linear layer's kernel and bias. ``standardize=False`` trains the plain linear
    classifier on raw features.
    """

    # Full-batch Adam from zero with a cosine-decayed learning rate. Measured on Fashion-MNIST
    # (10k train, random-init resnet_small, 3×3) the chosen probe lands within 0.6 points of a
    # fully converged 4000-step run on the weakly regularised stem/res2 probes and within 0.2
    # elsewhere, in 3–7 s per endpoint.
    steps: int = 500
    # Peak learning rates to choose from (cosine-decayed to 0 over ``steps``). One by default:
    # on Fashion-MNIST (10k train, random-init resnet_small, 3×3, seeds 0–2) the grid
    # (0.05, 0.2, 0.8) changed 6 of 15 endpoint probes by −0.34 … +0.02 points (mean −0.07,
    # within the 0.4-point binomial std of 10k test images; best layer unchanged or −0.3) while
    # the probes took 2.3–2.9× as long. The sweep stays available for other features.
    learning_rates: tuple[float, ...] = (0.2,)
    # L2 on the weights (not the bias): loss = mean cross-entropy + weight_decay / 2 · ‖W‖².
    weight_decays: tuple[float, ...] = WEIGHT_DECAY_GRID
    # Share of the train examples held out to choose the grid point; the chosen pair is then
    # refitted on all train examples.
    validation_fraction: float = 0.2
    # Centre and scale every feature with train statistics (= BatchNorm before the linear layer).
    standardize: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"steps must be positive, got {self.steps}")
        if not self.learning_rates or min(self.learning_rates) <= 0:
            raise ConfigError(f"learning_rates must be positive values, got "
                              f"{self.learning_rates}")
        if not self.weight_decays or min(self.weight_decays) < 0:
            raise ConfigError(f"weight_decays must be non-negative values, got "
                              f"{self.weight_decays}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ConfigError(f"validation_fraction must lie in (0, 1), got "
                              f"{self.validation_fraction}")

    @property
    def learning_rate(self) -> float:
        """The learning rate when the grid has only one (compatibility with callers that
        refit the probe themselves; with several, use :attr:`ProbeResult.learning_rate`)."""
        if len(self.learning_rates) != 1:
            raise ValueError(f"{len(self.learning_rates)} learning rates are searched; read the "
                             f"chosen one from the ProbeResult")
        return self.learning_rates[0]

    @property
    def grid(self) -> list[tuple[float, float]]:
        """Every (learning rate, weight decay) pair searched, learning rate major."""
        return list(itertools.product(self.learning_rates, self.weight_decays))


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """One endpoint's probe: test top-1 (%), the chosen L2 strength and learning rate, their
    validation top-1 (NaN when the grid has one pair) and the feature count."""

    top1: float
    weight_decay: float
    validation_top1: float
    num_features: int
    learning_rate: float


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


@dataclasses.dataclass(frozen=True, eq=False)
class FittedProbe:
    """A probe's final classifier: ``logits = standardize(features) @ kernel + bias`` (no
    standardisation when ``standardizer`` is None), with the chosen grid point."""

    kernel: np.ndarray
    bias: np.ndarray
    standardizer: Standardizer | None
    weight_decay: float
    learning_rate: float
    validation_top1: float

    def logits(self, features: np.ndarray) -> np.ndarray:
        if self.standardizer is not None:
            features = self.standardizer(features)
        return features @ self.kernel + self.bias


def _penalised_loss(x: tf.Tensor, y: tf.Tensor, decays: tf.Tensor, kernel: tf.Tensor,
                    bias: tf.Tensor) -> tf.Tensor:
    """Sum over the G classifiers of mean cross-entropy + decay / 2 · ‖W‖²."""
    logits = tf.einsum("nd,gdk->gnk", x, kernel) + bias[:, None, :]
    labels = tf.broadcast_to(y, tf.shape(logits)[:2])
    cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
    return tf.reduce_sum(tf.reduce_mean(cross_entropy, axis=1)
                         + 0.5 * decays * tf.reduce_sum(tf.square(kernel), axis=[1, 2]))


def _per_classifier(values: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """``[G]`` values reshaped to broadcast against a ``[G, ...]`` tensor."""
    return tf.reshape(values, [-1] + [1] * (like.shape.rank - 1))


# Adam's default moment decays and epsilon (Kingma & Ba 2015, Algorithm 1; Keras' epsilon).
_BETA1, _BETA2, _EPSILON = 0.9, 0.999, 1e-7


@tf.function(reduce_retracing=True)
def _adam_full_batch(x: tf.Tensor, y: tf.Tensor, decays: tf.Tensor, kernel: tf.Tensor,
                     bias: tf.Tensor, steps: tf.Tensor, learning_rate: tf.Tensor
                     ) -> tuple[tf.Tensor, tf.Tensor]:
    """``steps`` full-batch Adam steps from (kernel, bias), learning rate cosine-decayed to 0.

    ``decays`` and ``learning_rate`` are ``[G]``: one value per classifier of the batch. Adam in
    Kingma & Ba's "efficient" form (§2: the bias corrections folded into the step size). Written
    as one traced loop over plain tensors (no variables), so a single trace serves every
    endpoint and grid.
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
        params = [p - _per_classifier(rate, p) * m / (tf.sqrt(v) + _EPSILON)
                  for p, m, v in zip(params, first, second, strict=True)]
    return params[0], params[1]


def fit_softmax_regression(features: np.ndarray, labels: np.ndarray, num_classes: int,
                           weight_decays: Sequence[float],
                           steps: int = 500, learning_rate: float | Sequence[float] = 0.2,
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Fits G softmax regressions at once, classifier ``g`` with ``weight_decays[g]`` and
    ``learning_rate[g]`` (one float: the same for all).

    Returns kernels ``[G, d, num_classes]`` and biases ``[G, num_classes]``. The loss is convex
    and the optimisation full-batch from zero, so the result is deterministic. The classifiers
    share nothing but the batched matmul: the summed loss has independent gradients and Adam is
    element-wise, so each equals its fit alone.
    """
    if features.ndim != 2 or len(features) != len(labels) or not len(labels):
        raise ValueError(f"need features [n, d] and labels [n] with n > 0, got "
                         f"{features.shape} and {labels.shape}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got {labels.min()}.."
                         f"{labels.max()}")
    count, dims = len(weight_decays), features.shape[1]
    rates = np.broadcast_to(np.asarray(learning_rate, np.float32), (count,))
    kernel, bias = _adam_full_batch(
        tf.constant(features, tf.float32), tf.constant(labels, tf.int64),
        tf.constant(weight_decays, tf.float32), tf.zeros([count, dims, num_classes]),
        tf.zeros([count, num_classes]), tf.constant(steps, tf.int32), tf.constant(rates))
    return kernel.numpy(), bias.numpy()


def top1_accuracy(kernel: np.ndarray, bias: np.ndarray, features: np.ndarray,
                  labels: np.ndarray) -> float:
    """Top-1 accuracy (%) of the linear classifier ``features @ kernel + bias``."""
    predicted = np.argmax(features @ kernel + bias, axis=1)
    return 100.0 * float(np.mean(predicted == labels))


def best_grid_point(scores: Sequence[float], grid: Sequence[tuple[float, float]]) -> int:
    """Index of the (learning rate, weight decay) pair with the best validation score; ties go
    to the stronger penalty (the simpler model), then to the smaller learning rate."""
    return max(range(len(grid)), key=lambda i: (scores[i], grid[i][1], -grid[i][0]))


def fit_probe(train_features: np.ndarray, train_labels: np.ndarray, num_classes: int,
              seed: int = 0, config: LinearClassifierConfig = LinearClassifierConfig(),
              ) -> FittedProbe:
    """The probe's classifier: standardises with train statistics (``config.standardize``),
    picks the (learning rate, L2) pair on a seeded held-out share of the train examples, and
    refits that pair on all of them."""
    standardizer = Standardizer.fit(train_features) if config.standardize else None
    train_x = (train_features.astype(np.float32) if standardizer is None
               else standardizer(train_features))
    grid = config.grid
    validation_top1 = float("nan")
    if len(grid) > 1:
        order = np.random.default_rng(seed).permutation(len(train_labels))
        held_out = max(1, int(round(config.validation_fraction * len(order))))
        if held_out >= len(order):
            raise ValueError(f"{len(order)} train examples are too few to hold out "
                             f"{config.validation_fraction:.0%} for validation")
        fit_part, validation_part = order[held_out:], order[:held_out]
        rates, decays = zip(*grid, strict=True)
        kernels, biases = fit_softmax_regression(
            train_x[fit_part], train_labels[fit_part], num_classes, decays, config.steps, rates)
        scores = [top1_accuracy(k, b, train_x[validation_part], train_labels[validation_part])
                  for k, b in zip(kernels, biases, strict=True)]
        best = best_grid_point(scores, grid)
        grid, validation_top1 = [grid[best]], scores[best]
    (rate, decay), = grid
    kernels, biases = fit_softmax_regression(train_x, train_labels, num_classes, (decay,),
                                             config.steps, rate)
    return FittedProbe(kernel=kernels[0], bias=biases[0], standardizer=standardizer,
                       weight_decay=decay, learning_rate=rate, validation_top1=validation_top1)


def probe_features(train_features: np.ndarray, train_labels: np.ndarray,
                   test_features: np.ndarray, test_labels: np.ndarray, num_classes: int,
                   seed: int = 0, config: LinearClassifierConfig = LinearClassifierConfig(),
                   ) -> ProbeResult:
    """:func:`fit_probe` on the train features, scored by test top-1 (%)."""
    probe = fit_probe(train_features, train_labels, num_classes, seed, config)
    predicted = np.argmax(probe.logits(test_features), axis=1)
    return ProbeResult(top1=100.0 * float(np.mean(predicted == test_labels)),
                       weight_decay=probe.weight_decay, validation_top1=probe.validation_top1,
                       num_features=train_features.shape[1], learning_rate=probe.learning_rate)


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


@dataclasses.dataclass(frozen=True, eq=False)
class FrozenFeatures:
    """Pooled frozen features of a train subset and the test split (:func:`frozen_features`).

    ``train`` / ``test``: endpoint → float32 ``[n, d]`` (the encoder's order); labels int64
    ``[n]``; ``pool_sizes``: endpoint → the grid size ``s`` its map was pooled to (``s × s``
    cells × channels features), None for a vector endpoint.
    """

    train: dict[str, np.ndarray]
    train_labels: np.ndarray
    test: dict[str, np.ndarray]
    test_labels: np.ndarray
    num_classes: int
    pool_sizes: dict[str, int | None] = dataclasses.field(default_factory=dict)

    @property
    def num_features(self) -> dict[str, int]:
        """Endpoint → feature count ``d``."""
        return {name: features.shape[1] for name, features in self.train.items()}


def frozen_features(encoder: keras.Model | Callable, source: ImageSource, *,
                    train_examples: int | None = DEFAULT_TRAIN_EXAMPLES,
                    test_examples: int | None = None, image_size: int | None = None,
                    seed: int = 0, pool_size: int = DEFAULT_POOL_SIZE,
                    feature_dims: int | None = None, batch_size: int = 256,
                    log: Callable[[str], None] = logging.info) -> FrozenFeatures:
    """Pooled features of the frozen ``encoder`` on a seeded train subset and the eval split.

    ``encoder(images, training=False)`` returns a dict of endpoints (images float32
    ``[b, h, w, 3]`` in [0, 1]). Maps are pooled to ``pool_size × pool_size``, or with
    ``feature_dims`` each to about that many features (Goyal et al. 2019;
    :func:`selfsup.tasks.features.pool_size_for`); vectors are kept. Training examples are a
    subset of the train split drawn with ``seed`` (None = all); ``test_examples`` likewise
    subsamples the eval split with ``seed + 1`` (None = all, the protocol's setting).
    """
    num_classes = source.num_classes
    if num_classes is None:
        raise ConfigError(f"dataset {source.name!r} has no class labels to probe with")
    if pool_size < 1:
        raise ConfigError(f"pool_size must be positive, got {pool_size}")
    if feature_dims is not None and feature_dims < 1:
        raise ConfigError(f"feature_dims must be positive (or unset for pool_size), got "
                          f"{feature_dims}")
    splits = {}
    for role, split, count in (("train", "train", train_examples),
                               ("test", source.eval_split, test_examples)):
        source.check_split(split)
        total = source.num_examples(split)
        # Different seeds for the two subsets so their choice is independent.
        indices = seeded_subset(total, count, seed + (0 if role == "train" else 1))
        dataset = select_examples(image_label_dataset(source, split, image_size), total, indices)
        splits[role] = extract_pooled_features(
            encoder, dataset, pool_size=pool_size, feature_dims=feature_dims,
            batch_size=batch_size, num_examples=total if indices is None else len(indices),
            log=log, description=f"{role} features ({split})")
    train, test = splits["train"], splits["test"]
    return FrozenFeatures(train=train.features, train_labels=train.labels, test=test.features,
                          test_labels=test.labels, num_classes=num_classes,
                          pool_sizes=train.pool_sizes)


def probe_frozen_features(features: FrozenFeatures, seed: int = 0,
                          classifier: LinearClassifierConfig = LinearClassifierConfig(),
                          log: Callable[[str], None] = logging.info) -> dict[str, ProbeResult]:
    """:func:`probe_features` of every endpoint of ``features`` (the encoder's order)."""
    results = {}
    for name, train in features.train.items():
        start = time.perf_counter()
        result = probe_features(train, features.train_labels, features.test[name],
                                features.test_labels, features.num_classes, seed, classifier)
        log(f"linear probe {name} ({result.num_features} features): top-1 {result.top1:.2f}% "
            f"(L2 {result.weight_decay:g}, learning rate {result.learning_rate:g}, validation "
            f"{result.validation_top1:.2f}%, {time.perf_counter() - start:.1f} s)")
        results[name] = result
    return results


def linear_probe_results(encoder: keras.Model | Callable, source: ImageSource, *,
                         train_examples: int | None = DEFAULT_TRAIN_EXAMPLES,
                         test_examples: int | None = None, image_size: int | None = None,
                         seed: int = 0, pool_size: int = DEFAULT_POOL_SIZE,
                         feature_dims: int | None = None,
                         classifier: LinearClassifierConfig = LinearClassifierConfig(),
                         batch_size: int = 256, log: Callable[[str], None] = logging.info,
                         ) -> dict[str, ProbeResult]:
    """:func:`linear_probe` with each endpoint's full :class:`ProbeResult`."""
    features = frozen_features(
        encoder, source, train_examples=train_examples, test_examples=test_examples,
        image_size=image_size, seed=seed, pool_size=pool_size, feature_dims=feature_dims,
        batch_size=batch_size, log=log)
    return probe_frozen_features(features, seed, classifier, log)


def linear_probe(encoder: keras.Model | Callable, source: ImageSource, *,
                 train_examples: int | None = DEFAULT_TRAIN_EXAMPLES,
                 test_examples: int | None = None, image_size: int | None = None,
                 seed: int = 0, pool_size: int = DEFAULT_POOL_SIZE,
                 feature_dims: int | None = None,
                 classifier: LinearClassifierConfig = LinearClassifierConfig(),
                 batch_size: int = 256, log: Callable[[str], None] = logging.info,
                 ) -> dict[str, float]:
    """Test top-1 (%) of a linear classifier on each endpoint of the frozen ``encoder``.

    ``encoder(images, training=False)`` must return a dict of endpoints (4-D maps are pooled to
    ``pool_size × pool_size``, or to about ``feature_dims`` features each; vectors kept).
    Training examples are a subset of the train split drawn with ``seed`` (None = all);
    ``test_examples`` likewise subsamples the eval split (None = all, the protocol's setting).
    Endpoints come back in the encoder's order.
    """
    results = linear_probe_results(
        encoder, source, train_examples=train_examples, test_examples=test_examples,
        image_size=image_size, seed=seed, pool_size=pool_size, feature_dims=feature_dims,
        classifier=classifier, batch_size=batch_size, log=log)
    return {name: result.top1 for name, result in results.items()}
