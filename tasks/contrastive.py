"""Contrastive losses shared by the contrastive tasks (SimCLR, and later MoCo, CPC, CMC).

``nt_xent``: the normalised temperature-scaled cross-entropy of SimCLR (Chen et al. 2020,
"A Simple Framework for Contrastive Learning of Visual Representations", eq. 1): for each of
the 2N views, −log(exp(sim(i, j)/τ) / Σ_{k≠i} exp(sim(i, k)/τ)) with cosine similarity and j
its positive, averaged over the 2N anchors. It is the mean of the two directions, not their
sum (some codebases differ by that factor 2). Identical embeddings give log(2N − 1).

Under a tf.distribute strategy the candidates are gathered from every replica, so each anchor
sees all 2N views of the global batch as negatives, while its positive stays the local one;
each replica returns the mean over its own anchors, so the trainer's usual scaling (divide by
the number of replicas, sum the gradients) gives the global-batch loss.
"""

from __future__ import annotations

import tensorflow as tf

from selfsup.tasks.distributed import gather_from_replicas
from selfsup.tasks.info_nce import info_nce

# SimCLR's CIFAR-10 temperature (official repo; the paper's ImageNet runs use 0.1).
DEFAULT_TEMPERATURE = 0.5
_MASKED_LOGIT = -1e9


def nt_xent(view_a: tf.Tensor, view_b: tf.Tensor,
            temperature: float = DEFAULT_TEMPERATURE) -> tf.Tensor:
    """NT-Xent of two ``[n, d]`` batches of projections whose rows are positive pairs."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    view_a = tf.math.l2_normalize(tf.cast(view_a, tf.float32), axis=1)
    view_b = tf.math.l2_normalize(tf.cast(view_b, tf.float32), axis=1)
    local = tf.shape(view_a)[0]
    all_a, offset = gather_from_replicas(view_a)
    all_b, _ = gather_from_replicas(view_b)
    total = tf.shape(all_a)[0]
    anchors = tf.concat([view_a, view_b], axis=0)                   # [2n, d]
    candidates = tf.concat([all_a, all_b], axis=0)                  # [2N, d]
    logits = tf.matmul(anchors, candidates, transpose_b=True) / temperature
    rows = tf.range(local) + offset
    own_index = tf.concat([rows, rows + total], axis=0)             # each anchor itself
    positive_index = tf.concat([rows + total, rows], axis=0)        # its other view
    logits += _MASKED_LOGIT * tf.one_hot(own_index, 2 * total)
    return info_nce(logits, positive_index)
