"""Clip retrieval: are two clips of one video closer than clips of different videos?

A label-free check of video features (issue 7): :func:`triplet_retrieval_accuracy` over every
(anchor, positive, negative) clip triple and :func:`nearest_neighbour_accuracy` (the nearest
other clip comes from the same video), both on the cosine similarity of clip features (not
standardised). Exact, vectorised, in blocks of anchors so memory stays ``block × clips``.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

# Anchors per block of the retrieval metrics: a block holds a [block, clips] similarity matrix.
RETRIEVAL_BLOCK = 128


def _unit_rows(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, np.float64)
    if features.ndim != 2:
        raise ValueError(f"need features [clips, d], got shape {features.shape}")
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    # A zero vector has no direction: its cosine with everything is 0.
    return features / np.maximum(norms, 1e-12)


def triplet_retrieval_accuracy(features: np.ndarray, video_ids: np.ndarray,
                               block: int = RETRIEVAL_BLOCK) -> float:
    """Fraction of (anchor, positive, negative) clip triples with cos(a, p) > cos(a, n).

    ``p`` ranges over the other clips of the anchor's video, ``n`` over the clips of every other
    video; each clip is an anchor. Ties count one half (the Mann–Whitney / AUC convention), so
    a constant encoder scores chance, 0.5. Exact and vectorised without the ``clips³`` triple
    tensor: per anchor the negatives' similarities are sorted once and every positive's rank
    among them is a binary search; anchors go in blocks of ``block`` rows.
    """
    unit = _unit_rows(features)
    ids = np.asarray(video_ids)
    if len(ids) != len(unit):
        raise ValueError(f"{len(unit)} feature rows but {len(ids)} video ids")
    wins, triples = 0.0, 0
    for start in range(0, len(unit), block):
        rows = slice(start, start + block)
        similarity = unit[rows] @ unit.T
        same = ids[rows, None] == ids[None, :]
        positive = same.copy()
        positive[np.arange(positive.shape[0]), np.arange(start, start + positive.shape[0])] = False
        negative = ~same
        # Non-negatives sort to the end as +inf, beyond every finite similarity.
        negatives_sorted = np.sort(np.where(negative, similarity, np.inf), axis=1)
        below = tf.searchsorted(negatives_sorted, similarity, side="left").numpy()
        not_above = tf.searchsorted(negatives_sorted, similarity, side="right").numpy()
        scores = below + 0.5 * (not_above - below)
        wins += float(scores[positive].sum())
        triples += int((positive.sum(axis=1) * negative.sum(axis=1)).sum())
    if not triples:
        raise ValueError("no (anchor, positive, negative) triple: need two videos, one of them "
                         "with at least two clips")
    return wins / triples


def nearest_neighbour_accuracy(features: np.ndarray, video_ids: np.ndarray,
                               block: int = RETRIEVAL_BLOCK) -> float:
    """Fraction of clips whose nearest other clip (cosine similarity, the clip itself
    excluded) comes from the same video. Clips that are alone in their video are left out
    (nothing could be retrieved for them)."""
    unit = _unit_rows(features)
    ids = np.asarray(video_ids)
    if len(ids) != len(unit):
        raise ValueError(f"{len(unit)} feature rows but {len(ids)} video ids")
    _, index, counts = np.unique(ids, return_inverse=True, return_counts=True)
    has_positive = counts[index] > 1
    if not has_positive.any() or len(counts) < 2:
        raise ValueError("need two videos, one of them with at least two clips")
    hits = np.zeros(len(ids), bool)
    for start in range(0, len(unit), block):
        similarity = unit[start:start + block] @ unit.T
        rows = np.arange(similarity.shape[0])
        similarity[rows, rows + start] = -np.inf
        hits[start:start + block] = ids[np.argmax(similarity, axis=1)] == ids[start:start + block]
    return float(hits[has_positive].mean())


def retrieval_metrics(features: np.ndarray, video_ids: np.ndarray) -> dict[str, float]:
    """Both retrieval checks of one endpoint's clip features, rounded for reports."""
    return {"triplet": round(triplet_retrieval_accuracy(features, video_ids), 4),
            "nearest_neighbour": round(nearest_neighbour_accuracy(features, video_ids), 4)}
