"""Weighted k-nearest-neighbour classification of frozen features.

Wu, Xiong, Yu & Lin 2018 ("Unsupervised Feature Learning via Non-Parametric Instance
Discrimination", CVPR) evaluate a representation without training anything: features are
L2-normalised, each test feature retrieves its k most cosine-similar train features, and each
neighbour votes for its own class with weight ``exp(similarity / τ)``; the class with the
largest total vote is the prediction. Constants from the paper: τ = 0.07 and k = 200 (k = 20 is
the other value commonly reported, e.g. by later instance-discrimination papers).

The search runs block by block so memory stays ``O(query_batch × (bank_chunk + k))``: for each
block of queries the train bank is scanned in chunks; each chunk's top-k (``np.argpartition``)
is merged with the running top-k (similarities and labels), again by ``np.argpartition``.
Every requested k comes from the same pass (the top ``max(ks)`` list holds all smaller ones).
Measured once: 10,000 × 1,296 float32 train features against 10,000 test rows, ks = (20, 200),
defaults otherwise: 5.9 s on 2 shared CPU cores (NumPy float32 matmul + argpartition).

Conventions:
  * a k larger than the train set is clipped to the train-set size (every train example votes);
    results stay keyed by the requested k;
  * a vote tie goes to the lowest class index (``np.argmax``);
  * an all-zero feature stays zero after normalisation, so its similarity to everything is 0;
  * neighbours with exactly equal similarity at the k-th place are chosen arbitrarily;
  * weights are computed as ``exp((s - s_max) / τ)`` with ``s_max`` each query's best
    similarity: the same votes up to a positive per-query factor (so the same prediction), but
    no overflow for a small τ.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from selfsup.models import ConfigError

# Wu et al. 2018: temperature 0.07 of the vote weights exp(s / τ), k = 200 neighbours.
DEFAULT_TEMPERATURE = 0.07
DEFAULT_KS = (20, 200)
# Peak working memory is about query_batch × bank_chunk float32 similarities and as many int64
# partition indices: 1024 × 8192 × 12 bytes ≈ 100 MB with the defaults.
DEFAULT_QUERY_BATCH = 1024
DEFAULT_BANK_CHUNK = 8192


def l2_normalize(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit Euclidean norm (float32); all-zero rows stay zero."""
    features = np.asarray(features, np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, np.finfo(np.float32).tiny)


def _check_inputs(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                  num_classes: int, ks: Sequence[int], temperature: float, query_batch: int,
                  bank_chunk: int) -> None:
    if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"need train features [n, d] and test features [m, d], got "
                         f"{train_x.shape} and {test_x.shape}")
    if train_y.shape != (len(train_x),):
        raise ValueError(f"need one train label per train feature, got labels {train_y.shape} "
                         f"for features {train_x.shape}")
    if not len(train_x):
        raise ValueError("the train bank is empty")
    if num_classes < 1:
        raise ConfigError(f"num_classes must be positive, got {num_classes}")
    if train_y.min() < 0 or train_y.max() >= num_classes:
        raise ValueError(f"train labels must lie in [0, {num_classes}), got "
                         f"{train_y.min()}..{train_y.max()}")
    if not len(ks) or min(ks) < 1:
        raise ConfigError(f"need at least one k and every k >= 1, got ks={tuple(ks)}")
    if not temperature > 0:
        raise ConfigError(f"temperature must be positive, got {temperature}")
    if query_batch < 1 or bank_chunk < 1:
        raise ConfigError(f"query_batch and bank_chunk must be positive, got {query_batch} and "
                          f"{bank_chunk}")


def _keep_largest(sims: np.ndarray, labels: np.ndarray, k: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The k largest similarities of each row (in no particular order) and their labels."""
    if sims.shape[1] <= k:
        return sims, labels
    keep = np.argpartition(sims, sims.shape[1] - k, axis=1)[:, -k:]
    return np.take_along_axis(sims, keep, axis=1), np.take_along_axis(labels, keep, axis=1)


def _top_neighbours(queries: np.ndarray, bank: np.ndarray, bank_labels: np.ndarray, k: int,
                    bank_chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """The k most similar bank rows of each query, most similar first: (similarities, labels),
    both ``[len(queries), k]``. Scans the bank in chunks: each chunk's top-k is merged with
    the running top-k, so only labels of candidates are ever gathered."""
    best_sims = np.empty((len(queries), 0), np.float32)
    best_labels = np.empty((len(queries), 0), bank_labels.dtype)
    for start in range(0, len(bank), bank_chunk):
        sims = queries @ bank[start:start + bank_chunk].T
        if sims.shape[1] > k:
            keep = np.argpartition(sims, sims.shape[1] - k, axis=1)[:, -k:]
            sims = np.take_along_axis(sims, keep, axis=1)
        else:
            keep = np.broadcast_to(np.arange(sims.shape[1]), sims.shape)
        best_sims, best_labels = _keep_largest(
            np.concatenate([best_sims, sims], axis=1),
            np.concatenate([best_labels, bank_labels[start + keep]], axis=1), k)
    order = np.argsort(-best_sims, axis=1, kind="stable")
    return (np.take_along_axis(best_sims, order, axis=1),
            np.take_along_axis(best_labels, order, axis=1))


def weighted_votes(similarities: np.ndarray, labels: np.ndarray, num_classes: int,
                   temperature: float) -> np.ndarray:
    """Per-class vote totals ``[m, num_classes]`` of neighbours ``[m, k]`` (similarity, label):
    each neighbour adds ``exp((s - s_max) / τ)`` to its class (Wu et al. 2018's weights up to the
    per-query factor ``exp(s_max / τ)``)."""
    sims = similarities.astype(np.float64)
    weights = np.exp((sims - sims.max(axis=1, keepdims=True)) / temperature)
    flat = np.arange(len(sims))[:, None] * num_classes + labels
    return np.bincount(flat.ravel(), weights=weights.ravel(),
                       minlength=len(sims) * num_classes).reshape(len(sims), num_classes)


def knn_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                num_classes: int, *, ks: Sequence[int] = DEFAULT_KS,
                temperature: float = DEFAULT_TEMPERATURE,
                query_batch: int = DEFAULT_QUERY_BATCH,
                bank_chunk: int = DEFAULT_BANK_CHUNK) -> dict[int, np.ndarray]:
    """Weighted-kNN class predictions (Wu et al. 2018) for every test row, per requested k.

    Returns ``{k: int64 predictions [len(test_x)]}``; see the module docstring for clipping,
    tie and normalisation conventions.
    """
    train_x, test_x = np.asarray(train_x), np.asarray(test_x)
    train_y = np.asarray(train_y).astype(np.int64)
    _check_inputs(train_x, train_y, test_x, num_classes, ks, temperature, query_batch,
                  bank_chunk)
    bank, queries = l2_normalize(train_x), l2_normalize(test_x)
    depth = min(max(ks), len(bank))
    predictions = {k: np.empty(len(queries), np.int64) for k in ks}
    for start in range(0, len(queries), query_batch):
        block = slice(start, start + query_batch)
        sims, labels = _top_neighbours(queries[block], bank, train_y, depth, bank_chunk)
        for k in ks:
            clipped = min(k, depth)
            votes = weighted_votes(sims[:, :clipped], labels[:, :clipped], num_classes,
                                   temperature)
            predictions[k][block] = np.argmax(votes, axis=1)
    return predictions


def knn_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
              test_y: np.ndarray, num_classes: int, *, ks: Sequence[int] = DEFAULT_KS,
              temperature: float = DEFAULT_TEMPERATURE, query_batch: int = DEFAULT_QUERY_BATCH,
              bank_chunk: int = DEFAULT_BANK_CHUNK) -> dict[int, float]:
    """Test top-1 accuracy (%) of the weighted kNN classifier (Wu et al. 2018), per k.

    Features are L2-normalised, neighbours are the ``k`` most cosine-similar train rows and
    vote with weight ``exp(similarity / temperature)``. Returns ``{k: top-1 %}`` in ``ks``
    order; a k above the train-set size is clipped to it.
    """
    test_y = np.asarray(test_y)
    if test_y.shape != (len(test_x),) or not len(test_y):
        raise ValueError(f"need one test label per test feature and at least one test "
                         f"example, got labels {test_y.shape} for features "
                         f"{np.shape(test_x)}")
    predictions = knn_predict(train_x, train_y, test_x, num_classes, ks=ks,
                              temperature=temperature, query_batch=query_batch,
                              bank_chunk=bank_chunk)
    return {k: 100.0 * float(np.mean(predicted == test_y))
            for k, predicted in predictions.items()}
