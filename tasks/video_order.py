"""Shared maths of the video order tasks: order tables, in-graph item sampling, the order head.

The order tasks (``shuffle_learn``, ``opn``, ``vcop``, ``arrow_of_time``) cut *items* (single
frames, short frame stacks or clips) out of one sampled window of a video, put them in another
order, encode every item with the same video backbone and classify the order from the items'
pooled features.

Order convention (the jigsaw task's, :func:`selfsup.tasks.jigsaw.shuffle_tiles`): an order is
a permutation ``p`` of ``range(n)``; the shuffled input holds item ``p[i]`` in slot ``i``
(``shuffled[i] = items[p[i]]``), so putting ``shuffled[i]`` back into slot ``p[i]`` restores
the original sequence. Orders are numbered lexicographically
(:func:`selfsup.tasks.permutations.all_permutations`), which is the order in which
``itertools.permutations(range(n))`` yields them: VCOP's label (Xu et al. 2019).

The head (:class:`PairwiseOrderHead`) is OPN's and VCOP's: the features of every pair of items
``(i, j)``, ``i < j``, concatenated and mapped by one shared fully connected layer with ReLU,
the pair outputs concatenated, dropout, a linear classifier (Lee et al. 2017; Xu et al.
2019). Without the pair layer it is Shuffle and Learn's head: the items' features
concatenated and classified by one linear layer (Misra et al. 2016).
"""

from __future__ import annotations

import itertools

import keras
import numpy as np
import tensorflow as tf

from selfsup.models import FEATURE_ENDPOINT
from selfsup.models.blocks import maybe_dropout
from selfsup.tasks.jigsaw import shuffle_tiles
from selfsup.tasks.permutations import all_permutations

# VCOP's pair layer width and its dropout before the classifier (Xu et al. 2019: fc 512 + ReLU
# per pair, dropout 0.5).
PAIR_UNITS = 512
HEAD_DROPOUT = 0.5
# Shuffle and Learn trains on 25 % positive (in order) and 75 % negative tuples, the best class
# ratio of its ablation (Misra et al. 2016).
POSITIVE_FRACTION = 0.25
NUM_TUPLE_FRAMES = 3  # Shuffle and Learn verifies frame triplets (Misra et al. 2016)


def order_table(num_items: int) -> np.ndarray:
    """Every order of ``num_items`` items, ``[num_items!, num_items]`` int32, in
    ``itertools.permutations(range(num_items))`` order: row ``k`` is the order of label ``k``."""
    return all_permutations(num_items).astype(np.int32)


def reversal_classes(num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """OPN's classes: an order and its reverse are one class (Lee et al. 2017).

    Returns ``(representatives [n!/2, n], class_of_order [n!])``: class ``c``'s representative
    is the member with ``first < last`` (exactly one of ``p`` and ``p[::-1]`` has it), classes
    numbered in the lexicographic order of their representatives; ``class_of_order[k]`` is the
    class of row ``k`` of :func:`order_table`. For 4 items: 24 orders, 12 classes.
    """
    orders = order_table(num_items)
    representatives = orders[orders[:, 0] < orders[:, -1]]
    row_of_order = {tuple(order): row for row, order in enumerate(orders.tolist())}
    class_of_order = np.empty(len(orders), np.int32)
    for label, order in enumerate(representatives.tolist()):
        class_of_order[row_of_order[tuple(order)]] = label
        class_of_order[row_of_order[tuple(order[::-1])]] = label
    return representatives, class_of_order


def uniform_labels(batch: tf.Tensor, num_classes: int, seed: tf.Tensor) -> tf.Tensor:
    """``[batch]`` int32 labels uniform over ``0..num_classes - 1`` (stateless)."""
    return tf.random.stateless_uniform([batch], seed, 0, num_classes, dtype=tf.int32)


def coin_flips(batch: tf.Tensor, probability: float, seed: tf.Tensor) -> tf.Tensor:
    """``[batch]`` bool, each True with ``probability`` (stateless)."""
    return tf.random.stateless_uniform([batch], seed) < probability


def uniform_between(low: tf.Tensor, high: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Integers uniform in ``[low, high]`` (inclusive, elementwise; int32 tensors of one shape,
    ``low <= high``), stateless."""
    unit = tf.random.stateless_uniform(tf.shape(low), seed)
    count = tf.cast(high - low + 1, tf.float32)
    # min() guards the (measure-zero) rounding of unit * count up to count.
    return low + tf.minimum(tf.cast(tf.floor(unit * count), tf.int32), high - low)


def item_starts(num_items: int, item_length: int, gap: int) -> np.ndarray:
    """First frame of each of ``num_items`` evenly spaced items of ``item_length`` frames with
    ``gap`` frames between consecutive items: ``k · (item_length + gap)``."""
    return np.arange(num_items, dtype=np.int32) * (item_length + gap)


def window_length(num_items: int, item_length: int, gap: int) -> int:
    """Frames spanned by :func:`item_starts`' items: ``n · item_length + (n − 1) · gap``."""
    return num_items * item_length + (num_items - 1) * gap


def gather_items(windows: tf.Tensor, starts: tf.Tensor, item_length: int) -> tf.Tensor:
    """``[b, L, ...]`` windows, ``[b, n]`` int first frames → ``[b, n, item_length, ...]``.

    Item ``(i, k)`` is ``windows[i, starts[i, k] : starts[i, k] + item_length]``: one gather
    with a batch dimension, vectorised over the batch and the items.
    """
    frames = starts[:, :, None] + tf.range(item_length, dtype=starts.dtype)  # [b, n, length]
    return tf.gather(windows, frames, axis=1, batch_dims=1)


def split_window(windows: tf.Tensor, num_items: int, item_length: int, gap: int) -> tf.Tensor:
    """``[b, L, ...]`` → the :func:`item_starts` items in time order, ``[b, n, length, ...]``."""
    starts = tf.constant(item_starts(num_items, item_length, gap))
    batch_starts = tf.tile(starts[None], [tf.shape(windows)[0], 1])
    return gather_items(windows, batch_starts, item_length)


def shuffle_items(items: tf.Tensor, orders: tf.Tensor) -> tf.Tensor:
    """``[b, n, ...]`` items and ``[b, n]`` orders → ``shuffled[i, k] = items[i, orders[i, k]]``
    (the module's convention)."""
    return tf.gather(items, orders, batch_dims=1)


def shuffle_by_labels(items: tf.Tensor, labels: tf.Tensor, table: tf.Tensor) -> tf.Tensor:
    """Items shuffled by order ``table[labels[i]]`` (jigsaw's gather of a permutation table)."""
    return shuffle_tiles(items, labels, table)


def reverse_where(clips: tf.Tensor, reverse: tf.Tensor) -> tf.Tensor:
    """``[b, t, ...]`` clips with the time axis reversed where ``reverse`` ``[b]`` is True."""
    mask = tf.reshape(reverse, [-1] + [1] * (clips.shape.rank - 1))
    return tf.where(mask, tf.reverse(clips, axis=[1]), clips)


def verification_window_length(max_positive_span: int, min_negative_gap: int,
                               frames_per_item: int) -> int:
    """Frames of the window :func:`verification_tuples` samples from: ``τ_max + 2·τ_min + f``
    (room for ``a`` and ``e`` beyond a positive span of ``τ_max``, and ``f`` frames per item)."""
    return max_positive_span + 2 * min_negative_gap + frames_per_item


def verification_tuples(batch: tf.Tensor, seed: tf.Tensor, *, max_positive_span: int,
                        min_negative_gap: int, frames_per_item: int = 1,
                        positive_fraction: float = POSITIVE_FRACTION,
                        ) -> tuple[tf.Tensor, tf.Tensor]:
    """Shuffle and Learn's tuples (Misra et al. 2016): ``([b, 3]`` int32 first frames of
    the three items in input order, ``[b]`` int64 labels, 1 = in order``)``.

    Five frames ``a < b < c < d < e`` of a window of :func:`verification_window_length` frames:
    ``d − b ≤ τ_max`` (``max_positive_span``), ``b − a ≥ τ_min`` and ``e − d ≥ τ_min``
    (``min_negative_gap``), items ``f`` frames long and never overlapping. Positives are
    ``(b, c, d)``, negatives ``(b, a, d)`` or ``(b, e, d)`` (equally likely), a fraction
    ``positive_fraction`` of positives. The paper also takes the reversed positive ``(d, c, b)``;
    here every tuple, negatives too, is reversed with probability 1/2, so the label depends only
    on whether the middle item lies between the outer two and the direction of time is no cue.
    Every draw is a stateless op over the whole batch.
    """
    f = frames_per_item
    span_seed, b_seed, c_seed, a_seed, e_seed, label_seed, side_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 8))
    shape = tf.reshape(batch, [1])

    def full(value: int) -> tf.Tensor:
        return tf.fill(shape, tf.constant(value, tf.int32))

    span = uniform_between(full(2 * f), full(max_positive_span), span_seed)
    first = uniform_between(full(min_negative_gap), max_positive_span + min_negative_gap - span,
                            b_seed)
    last = first + span
    middle = uniform_between(first + f, last - f, c_seed)
    before = uniform_between(full(0), first - min_negative_gap, a_seed)
    after = uniform_between(last + min_negative_gap,
                            full(max_positive_span + 2 * min_negative_gap), e_seed)
    positive = coin_flips(batch, positive_fraction, label_seed)
    outside = tf.where(coin_flips(batch, 0.5, side_seed), before, after)
    centre = tf.where(positive, middle, outside)
    forward = tf.stack([first, centre, last], axis=1)
    starts = tf.where(coin_flips(batch, 0.5, flip_seed)[:, None], forward[:, ::-1], forward)
    return starts, tf.cast(positive, tf.int64)


def order_verification_inputs(windows: tf.Tensor, seed: tf.Tensor, *, max_positive_span: int,
                              min_negative_gap: int, frames_per_item: int = 1,
                              positive_fraction: float = POSITIVE_FRACTION,
                              ) -> tuple[tf.Tensor, tf.Tensor]:
    """``[b, L, h, w, 3]`` windows → (``[b, 3, f, h, w, 3]`` tuples, ``[b]`` int64 labels), the
    tuples of :func:`verification_tuples`."""
    starts, labels = verification_tuples(
        tf.shape(windows)[0], seed, max_positive_span=max_positive_span,
        min_negative_gap=min_negative_gap, frames_per_item=frames_per_item,
        positive_fraction=positive_fraction)
    return gather_items(windows, starts, frames_per_item), labels


def sequence_sort_inputs(windows: tf.Tensor, seed: tf.Tensor, representatives: tf.Tensor, *,
                         frames_per_item: int = 1, gap: int = 0
                         ) -> tuple[tf.Tensor, tf.Tensor]:
    """OPN's inputs (Lee et al. 2017): ``[b, L, h, w, 3]`` windows → (``[b, n, f, h, w,
    3]`` shuffled items, ``[b]`` int64 classes of :func:`reversal_classes`).

    The ``n`` evenly spaced items of :func:`split_window` are shuffled by the representative
    of a uniform class, or by its reverse (probability 1/2), so all ``n!`` orders are equally
    likely and an order and its reverse carry the same label.
    """
    num_items = representatives.shape[1]
    items = split_window(windows, num_items, frames_per_item, gap)
    class_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    batch = tf.shape(windows)[0]
    labels = uniform_labels(batch, representatives.shape[0], class_seed)
    orders = tf.gather(representatives, labels)
    orders = tf.where(coin_flips(batch, 0.5, flip_seed)[:, None], orders[:, ::-1], orders)
    return shuffle_items(items, orders), tf.cast(labels, tf.int64)


def clip_order_inputs(windows: tf.Tensor, seed: tf.Tensor, table: tf.Tensor, *,
                      clip_length: int, interval: int) -> tuple[tf.Tensor, tf.Tensor]:
    """VCOP's inputs (Xu et al. 2019): ``[b, L, h, w, 3]`` windows → (``[b, n,
    clip_length, h, w, 3]`` shuffled clips, ``[b]`` int64 labels).

    ``n = table.shape[1]`` clips of ``clip_length`` frames, ``interval`` frames apart, shuffled
    by order ``table[label]`` (:func:`order_table`) with a uniform label.
    """
    num_clips = table.shape[1]
    clips = split_window(windows, num_clips, clip_length, interval)
    labels = uniform_labels(tf.shape(windows)[0], table.shape[0], seed)
    return shuffle_by_labels(clips, labels, table), tf.cast(labels, tf.int64)


def arrow_of_time_inputs(clips: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Wei et al. 2018's task: ``[b, t, h, w, 3]`` clips → (each clip played forwards or, with
    probability 1/2, backwards; ``[b]`` int64 labels, 1 = reversed)."""
    reverse = coin_flips(tf.shape(clips)[0], 0.5, seed)
    return reverse_where(clips, reverse), tf.cast(reverse, tf.int64)


class PairwiseOrderHead(keras.layers.Layer):
    """Order classifier on the features of ``num_items`` items (OPN, Lee et al. 2017; VCOP, Xu
    et al. 2019; Shuffle and Learn, Misra et al. 2016).

    ``call(features [b, n, d])`` → logits ``[b, num_classes]``. With ``pair_units > 0``: for
    each pair ``i < j`` (``itertools.combinations`` order) ``relu(W [f_i; f_j] + c)`` with one
    shared ``W``, the ``n(n−1)/2`` outputs concatenated in pair order, dropout, a linear
    classifier. With ``pair_units == 0``: the ``n`` features concatenated in slot order,
    dropout, the linear classifier.
    """

    def __init__(self, num_items: int, num_classes: int, pair_units: int = PAIR_UNITS,
                 dropout: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_items = num_items
        self.num_classes = num_classes
        self.pair_units = pair_units
        self.dropout_rate = dropout
        self.pairs = tuple(itertools.combinations(range(num_items), 2))
        self.pair_fc = (keras.layers.Dense(pair_units, activation="relu", name="pair_fc")
                        if pair_units > 0 else None)
        self.classifier = keras.layers.Dense(num_classes, name="logits")

    def call(self, features, training=None):
        width = features.shape[-1]
        if self.pair_fc is None:
            joined = tf.reshape(features, [-1, self.num_items * width])
        else:
            first = tf.gather(features, [i for i, _ in self.pairs], axis=1)
            second = tf.gather(features, [j for _, j in self.pairs], axis=1)
            pair_outputs = self.pair_fc(tf.concat([first, second], axis=-1))  # [b, P, units]
            joined = tf.reshape(pair_outputs, [-1, len(self.pairs) * self.pair_units])
        return self.classifier(maybe_dropout(joined, self.dropout_rate, training))

    def get_config(self) -> dict:
        return {**super().get_config(), "num_items": self.num_items,
                "num_classes": self.num_classes, "pair_units": self.pair_units,
                "dropout": self.dropout_rate}


class ItemOrderModel(keras.Model):
    """One shared video backbone per item, then :class:`PairwiseOrderHead` (the siamese
    layout of Misra et al. 2016, Lee et al. 2017 and Xu et al. 2019).

    ``call(items [b, n, t, h, w, 3])`` encodes the ``b·n`` items as one batch of ``t``-frame
    clips (``t = 1``: single frames) and returns ``{"features": [b, n, d] pooled features,
    "logits": [b, num_classes]}``. The backbone stays ``model.backbone`` for the probes.
    """

    def __init__(self, backbone: keras.Model, head: PairwiseOrderHead, **kwargs) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone
        self.head = head

    def call(self, items, training=None):
        num_items = self.head.num_items
        dynamic = tf.shape(items)
        # Static sizes where known: the backbone's layers need the channel count.
        clip_shape = [-1] + [size if size is not None else dynamic[axis]
                             for axis, size in enumerate(items.shape[2:], start=2)]
        clips = tf.reshape(items, clip_shape)
        pooled = self.backbone(clips, training=training)[FEATURE_ENDPOINT]
        features = tf.reshape(pooled, [-1, num_items, pooled.shape[-1]])
        return {"features": features, "logits": self.head(features, training=training)}
