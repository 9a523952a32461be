"""Low-shot evaluation: a classifier on frozen features from k labelled examples per class.

Goyal, Mahajan, Gupta & Misra 2019 ("Scaling and Benchmarking Self-Supervised Visual
Representation Learning", ICCV) train linear SVMs on frozen features from only k labelled images
per class, draw 5 independent samples per k and report the mean and spread over them (their
released benchmark's VOC07 runs use k = 1, 2, 4, …, 64, 96). Here k defaults to 1, 5, 10 and
50, with 5 seeded samples.

Per sample, the classifier is one of:
  * ``"svm"`` — :func:`selfsup.tasks.svm_probe.svm_probe`: the cost is cross-validated with
    ``min(3, k)`` stratified folds when k >= 2; with k = 1 no fold can hold a class out, so the
    SVM is trained with the fixed cost :data:`ONE_SHOT_COST` (1.0, the middle of the default
    grid and the cost cross-validation chose on Fashion-MNIST pixels, see
    :data:`selfsup.tasks.svm_probe.DEFAULT_COSTS`);
  * ``"knn"`` — :func:`selfsup.tasks.knn_probe.knn_probe` with ``knn_k`` neighbours, clipped to
    the k × C labelled examples;
  * ``"linear"`` — :func:`selfsup.tasks.linear_probe.probe_features` with one weight decay
    (``linear_weight_decay``): with one example per class there is nothing to hold out for
    choosing it.
Top-1 is measured on the whole test set; the spread is the population standard deviation over
samples (``np.std``, as the benchmark's aggregation does).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import numpy as np
from absl import logging

from selfsup.models import ConfigError
from selfsup.tasks.knn_probe import DEFAULT_TEMPERATURE, knn_probe
from selfsup.tasks.linear_probe import LinearClassifierConfig, probe_features
from selfsup.tasks.svm_probe import DEFAULT_COSTS, svm_probe

DEFAULT_SHOTS = (1, 5, 10, 50)
DEFAULT_SEEDS = (0, 1, 2, 3, 4)
CLASSIFIERS = ("svm", "knn", "linear")
# SVM cost when k = 1 leaves no room for cross-validation.
ONE_SHOT_COST = 1.0
# Neighbours of the low-shot kNN (Wu et al. 2018 report k = 20 and 200; with k × C labelled
# examples, 200 would mostly be clipped to "everyone votes").
LOWSHOT_KNN_K = 20
# Middle of the linear probe's weight-decay grid (linear_probe.WEIGHT_DECAY_GRID).
LOWSHOT_WEIGHT_DECAY = 1e-3


@dataclasses.dataclass(frozen=True)
class LowshotResult:
    """Top-1 (%) over the seeded samples of one k: mean, population std and per-seed values."""

    mean: float
    std: float
    per_seed: tuple[float, ...]


def samples_per_class(labels: np.ndarray, k: int, seed: int,
                      num_classes: int | None = None) -> np.ndarray:
    """Sorted indices of exactly ``k`` examples of every class, drawn without replacement.

    Classes are those present in ``labels``, or ``0 … num_classes - 1`` when given (then an
    absent class is an error). One seeded permutation orders every class, and each class keeps
    its first k, so for one seed the k-sample is a subset of every larger k'-sample.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"need labels [n], got shape {labels.shape}")
    if k < 1:
        raise ConfigError(f"need at least one example per class, got k={k}")
    classes, counts = np.unique(labels, return_counts=True)
    if num_classes is not None:
        if len(classes) and (classes[0] < 0 or classes[-1] >= num_classes):
            raise ValueError(f"labels must lie in [0, {num_classes}), got "
                             f"{classes[0]}..{classes[-1]}")
        full = np.zeros(num_classes, np.int64)
        full[classes] = counts
        classes, counts = np.arange(num_classes), full
    if not len(classes):
        raise ConfigError("no labels to sample from")
    short = np.flatnonzero(counts < k)
    if len(short):
        raise ConfigError(f"class {classes[short[0]]} has {counts[short[0]]} examples, fewer "
                          f"than k={k}")
    shuffled = np.random.default_rng(seed).permutation(len(labels))
    # Stable sort by label keeps the random order within each class.
    grouped = shuffled[np.argsort(labels[shuffled], kind="stable")]
    group_labels = labels[grouped]
    first_of_group = np.searchsorted(group_labels, group_labels, side="left")
    rank_in_class = np.arange(len(grouped)) - first_of_group
    return np.sort(grouped[rank_in_class < k])


def _classify(classifier: str, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
              test_y: np.ndarray, num_classes: int, shots: int, seed: int, *,
              costs: Sequence[float], knn_k: int, weight_decay: float,
              linear_config: LinearClassifierConfig) -> float:
    """Test top-1 (%) of one classifier trained on one low-shot sample."""
    if classifier == "svm":
        if shots >= 2:
            result = svm_probe(train_x, train_y, test_x, test_y, costs=costs,
                               folds=min(3, shots), seed=seed)
        else:
            result = svm_probe(train_x, train_y, test_x, test_y, costs=(ONE_SHOT_COST,),
                               seed=seed)
        return result.top1
    if classifier == "knn":
        k = min(knn_k, len(train_x))
        return knn_probe(train_x, train_y, test_x, test_y, num_classes, ks=(k,),
                         temperature=DEFAULT_TEMPERATURE)[k]
    config = dataclasses.replace(linear_config, weight_decays=(weight_decay,))
    return probe_features(train_x, train_y, test_x, test_y, num_classes, seed, config).top1


def lowshot_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                  test_y: np.ndarray, num_classes: int, *,
                  shots: Sequence[int] = DEFAULT_SHOTS, seeds: Sequence[int] = DEFAULT_SEEDS,
                  classifier: str = "svm", costs: Sequence[float] = DEFAULT_COSTS,
                  knn_k: int = LOWSHOT_KNN_K, linear_weight_decay: float = LOWSHOT_WEIGHT_DECAY,
                  linear_config: LinearClassifierConfig | None = None,
                  log: Callable[[str], None] = logging.info) -> dict[int, LowshotResult]:
    """Low-shot top-1 (%) per k: the classifier trained on k labelled train examples per class
    (:func:`samples_per_class` with each seed), tested on all test examples, mean ± std over
    seeds (Goyal et al. 2019; module docstring for the per-classifier settings).

    ``linear_config`` (default :class:`LinearClassifierConfig`) sets the ``"linear"``
    classifier's optimisation (one learning rate); its weight-decay grid is replaced by
    ``linear_weight_decay``.
    """
    if classifier not in CLASSIFIERS:
        raise ConfigError(f"unknown low-shot classifier {classifier!r}; valid names: "
                          f"{', '.join(CLASSIFIERS)}")
    if not len(shots) or not len(seeds):
        raise ConfigError(f"need at least one shot count and one seed, got shots={tuple(shots)} "
                          f"and seeds={tuple(seeds)}")
    train_x, train_y = np.asarray(train_x), np.asarray(train_y)
    if train_x.ndim != 2 or train_y.shape != (len(train_x),):
        raise ValueError(f"need train features [n, d] and labels [n], got {train_x.shape} and "
                         f"{train_y.shape}")
    linear_config = linear_config or LinearClassifierConfig()
    if classifier == "linear" and len(linear_config.learning_rates) != 1:
        raise ConfigError(f"the low-shot linear probe has no held-out examples to choose among "
                          f"learning rates {linear_config.learning_rates}; give one")
    # Check every k before the first (possibly long) fit.
    for shot in shots:
        samples_per_class(train_y, shot, 0, num_classes)
    results = {}
    for shot in shots:
        start = time.perf_counter()
        per_seed = []
        for seed in seeds:
            chosen = samples_per_class(train_y, shot, seed, num_classes)
            per_seed.append(_classify(
                classifier, train_x[chosen], train_y[chosen], test_x, test_y, num_classes,
                shot, seed, costs=costs, knn_k=knn_k, weight_decay=linear_weight_decay,
                linear_config=linear_config))
        values = np.asarray(per_seed)
        results[shot] = LowshotResult(mean=float(np.mean(values)), std=float(np.std(values)),
                                      per_seed=tuple(float(v) for v in per_seed))
        log(f"low-shot {classifier} k={shot}: top-1 {results[shot].mean:.2f} ± "
            f"{results[shot].std:.2f}% over {len(seeds)} samples "
            f"({time.perf_counter() - start:.1f} s)")
    return results
