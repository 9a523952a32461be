"""InfoNCE: softmax cross-entropy of one positive among scored candidates (CPC, CMC).

van den Oord, Li & Vinyals, "Representation Learning with Contrastive Predictive Coding", 2018,
eq. 4: for a query with one positive among N candidates, L = −log(exp(s⁺) / Σ_j exp(s_j)),
averaged over queries. With equal scores it is log N, the bound's scale (I ≥ log N − L).

``info_nce`` takes ready scores. ``replica_info_nce`` scores this replica's queries against the
keys of every replica (``gather_from_replicas``), so under a tf.distribute strategy each query
sees the whole global batch as candidates; each replica returns the mean over its own queries,
and the trainer's scaling (divide by the replica count, sum the gradients) gives the
global-batch loss.
"""

from __future__ import annotations

import tensorflow as tf

from selfsup.tasks.distributed import gather_from_replicas


def info_nce(scores: tf.Tensor, positive_index: tf.Tensor) -> tf.Tensor:
    """Mean over rows of ``−log softmax(scores[i])[positive_index[i]]``.

    ``scores``: ``[n, candidates]`` logits (similarities already divided by any temperature);
    ``positive_index``: ``[n]`` column of each row's positive.
    """
    scores = tf.cast(scores, tf.float32)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(positive_index, tf.int32), logits=scores)
    return tf.reduce_mean(losses)


def replica_scores(queries: tf.Tensor, keys: tf.Tensor, temperature: float = 1.0
                   ) -> tuple[tf.Tensor, tf.Tensor]:
    """Dot products of local ``queries [n, d]`` with the keys ``[m, d]`` of every replica.

    Returns ``(scores [n, replicas · m] / temperature, offset)`` where ``offset`` is the column
    of this replica's first key, so local key ``j`` is candidate ``offset + j``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    all_keys, offset = gather_from_replicas(tf.cast(keys, tf.float32))
    scores = tf.matmul(tf.cast(queries, tf.float32), all_keys, transpose_b=True)
    return scores / temperature, offset


def replica_info_nce(queries: tf.Tensor, keys: tf.Tensor, positive_index: tf.Tensor | None = None,
                     temperature: float = 1.0) -> tf.Tensor:
    """InfoNCE of local ``queries`` against the keys of all replicas as candidates.

    ``positive_index[i]`` is the row of query ``i``'s positive among this replica's ``keys``
    (default: row ``i``, for paired batches); the other keys of every replica are negatives.
    """
    scores, offset = replica_scores(queries, keys, temperature)
    if positive_index is None:
        positive_index = tf.range(tf.shape(queries)[0])
    return info_nce(scores, tf.cast(positive_index, tf.int32) + offset)
