"""Counting: the features of an image's four tiles must add up to those of the whole image.

Noroozi, Pirsiavash & Favaro, "Representation Learning by Learning to Count", ICCV 2017. A
"counting vector" φ (encoder, fully connected layers, ReLU so counts are non-negative) should be
additive over a 2×2 tiling T_1..T_4 and invariant to downscaling D: for an image x and another
image y,

    ℓ(x, y) = ‖φ(D x) − Σ_j φ(T_j x)‖² + max(0, M − ‖φ(D y) − Σ_j φ(T_j x)‖²),

the second (contrastive) term ruling out the trivial φ = 0. Constants from the paper:
M = 10, a 1000-dimensional counting vector with a ReLU output. Here D halves the image (the
tiles then have the downscaled image's size) by 2×2 averaging, or — ``downsample="random"`` —
by a filter drawn per image from area, bilinear, bicubic and Lanczos resampling, as the paper
does so that the network cannot recognise a downscaled image by its filter; y is the previous
image of the (shuffled) batch; the encoder runs once on the ``5b`` images
``[D x; T_1 x; …; T_4 x]`` of a batch.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from selfsup.models.registry import ConfigError
from selfsup.tasks.base import TASKS, PretextModel, Task, TaskConfig

COUNTING_MARGIN = 10.0  # Noroozi et al. 2017: the contrastive margin M = 10
COUNT_DIM = 1000  # Noroozi et al. 2017: a 1000-entry counting vector (ReLU output)
GRID = 2  # 2×2 tiles, each the size of the 2× downscaled image
NUM_TILES = GRID * GRID
# Filters D may use; index 0 (2×2 averaging) is the fixed default.
DOWNSAMPLE_FILTERS = ("area", "bilinear", "bicubic", "lanczos3")
DOWNSAMPLE_MODES = ("area", "random")


def downsample(images: tf.Tensor, filter_ids: tf.Tensor | None = None) -> tf.Tensor:
    """Halves ``[b, s, s, c]`` images; image ``i`` with ``DOWNSAMPLE_FILTERS[filter_ids[i]]``.

    Without ``filter_ids`` every image is 2×2-averaged. The other filters are antialiased
    ``tf.image.resize``; all are computed for the batch and one is picked per image.
    """
    area = tf.nn.avg_pool2d(images, ksize=GRID, strides=GRID, padding="VALID")
    if filter_ids is None:
        return area
    tile = images.shape[1] // GRID
    candidates = [area] + [tf.image.resize(images, [tile, tile], method=name, antialias=True)
                           for name in DOWNSAMPLE_FILTERS[1:]]
    return tf.gather(tf.stack(candidates, axis=1), filter_ids, batch_dims=1)


def downsample_and_tile(images: tf.Tensor, filter_ids: tf.Tensor | None = None
                        ) -> tuple[tf.Tensor, tf.Tensor]:
    """``[b, s, s, c]`` → (``D x`` ``[b, s/2, s/2, c]``, tiles ``[b, 4, s/2, s/2, c]``).

    ``D`` is :func:`downsample`; tile ``j`` is grid cell (row ``j // 2``, column ``j % 2``).
    Reshapes only: vectorised over the batch. ``s`` must be even.
    """
    size, channels = images.shape[1], images.shape[-1]
    tile = size // GRID
    downsampled = downsample(images, filter_ids)
    grid = tf.reshape(images, [-1, GRID, tile, GRID, tile, channels])
    tiles = tf.reshape(tf.transpose(grid, [0, 1, 3, 2, 4, 5]), [-1, NUM_TILES, tile, tile,
                                                                 channels])
    return downsampled, tiles


def counting_loss(image_counts: tf.Tensor, tile_counts: tf.Tensor,
                  margin: float = COUNTING_MARGIN) -> dict[str, tf.Tensor]:
    """The counting loss over a batch, with its two terms (all means over the batch).

    ``image_counts`` ``[b, d]`` = φ(D x_i); ``tile_counts`` ``[b, 4, d]`` = φ(T_j x_i). The
    contrastive image for ``x_i`` is ``x_{i−1}`` (the batch rolled by one).
    """
    tile_sum = tf.reduce_sum(tile_counts, axis=1)
    match = tf.reduce_sum(tf.square(image_counts - tile_sum), axis=-1)
    other_counts = tf.roll(image_counts, shift=1, axis=0)
    contrast = tf.nn.relu(margin - tf.reduce_sum(tf.square(other_counts - tile_sum), axis=-1))
    return {"loss": tf.reduce_mean(match + contrast), "match": tf.reduce_mean(match),
            "contrast": tf.reduce_mean(contrast)}


class CountingHead(keras.layers.Layer):
    """Fully connected layers with ReLUs, ReLU output: the counting vector (Noroozi 2017)."""

    def __init__(self, hidden_units: tuple[int, ...], count_dim: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.hidden_units = tuple(hidden_units)
        self.count_dim = count_dim
        self.hidden = [keras.layers.Dense(units, activation="relu", name=f"hidden{i}")
                       for i, units in enumerate(self.hidden_units)]
        self.counts = keras.layers.Dense(count_dim, activation="relu", name="counts")

    def call(self, features):
        for dense in self.hidden:
            features = dense(features)
        return self.counts(features)

    def get_config(self) -> dict:
        return {**super().get_config(), "hidden_units": self.hidden_units,
                "count_dim": self.count_dim}


@dataclasses.dataclass(frozen=True)
class CountingConfig(TaskConfig):
    """Counting settings: ``margin`` M and ``count_dim`` are the paper's (10, 1000); the head's
    hidden layer stands in for AlexNet's fc6/fc7 at the size of a small pooled feature."""

    margin: float = COUNTING_MARGIN
    count_dim: int = COUNT_DIM
    hidden_units: tuple[int, ...] = (512,)
    downsample: str = "random"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.image_size % GRID:
            raise ConfigError(f"counting needs an even image_size (2×2 tiles), got "
                              f"{self.image_size}")
        if self.global_batch_size < 2:
            raise ConfigError("counting needs at least 2 images per batch (the contrast image)")
        if self.margin <= 0 or self.count_dim < 1 or any(u < 1 for u in self.hidden_units):
            raise ConfigError("margin, count_dim and hidden_units must be positive")
        if self.downsample not in DOWNSAMPLE_MODES:
            raise ConfigError(f"downsample must be one of {', '.join(DOWNSAMPLE_MODES)}, got "
                              f"{self.downsample!r}")


class CountingTask(Task):
    """Learning to count (Noroozi et al. 2017): tile counts add up to the image's count."""

    config_class = CountingConfig

    def build_model(self) -> PretextModel:
        head = CountingHead(self.config.hidden_units, self.config.count_dim, name="head")
        # The model's "logits" output is the counting vector φ.
        model = PretextModel(self.build_backbone(), head, name="counting")
        # Built here on one tile: a backbone that cannot encode tiles fails in one line, and
        # the variables get their paths inside the model (checkpoint keys "backbone/...").
        tile = self.config.image_size // GRID
        try:
            model(tf.zeros([1, tile, tile, 3]), training=False)
        except (ValueError, tf.errors.InvalidArgumentError) as error:
            raise ConfigError(f"backbone {self.config.backbone!r} cannot encode {tile} px "
                              f"tiles ({str(error).splitlines()[0]})") from None
        return model

    def build_inputs(self, input_context: tf.distribute.InputContext | None = None
                     ) -> tf.data.Dataset:
        """Batches of ``(D x [b, s/2, s/2, 3], tiles [b, 4, s/2, s/2, 3])``."""
        batch_size = self.per_replica_batch_size(input_context)
        if batch_size < 2:
            raise ConfigError("counting needs at least 2 images per replica (the contrast image)")
        images = self.training_images(input_context)
        if self.config.downsample == "area":
            views = images.map(downsample_and_tile, num_parallel_calls=tf.data.AUTOTUNE)
        else:
            # A seeded stream of filter choices, so a resumed run draws the same ones.
            choices = tf.data.Dataset.random(seed=self.config.seed).batch(batch_size)
            views = tf.data.Dataset.zip(images, choices).map(
                lambda batch, draws: downsample_and_tile(
                    batch, tf.math.floormod(draws, len(DOWNSAMPLE_FILTERS))),
                num_parallel_calls=tf.data.AUTOTUNE)
        return views.prefetch(tf.data.AUTOTUNE)

    def build_metrics(self) -> list[keras.metrics.Metric]:
        return [keras.metrics.Mean("loss"), keras.metrics.Mean("match"),
                keras.metrics.Mean("contrast")]

    def _losses(self, inputs, model: keras.Model, training: bool) -> dict[str, tf.Tensor]:
        downsampled, tiles = inputs
        batch = tf.shape(downsampled)[0]
        tile_shape = tf.shape(tiles)[2:]
        stacked = tf.concat([downsampled, tf.reshape(tiles, tf.concat([[-1], tile_shape], 0))],
                            axis=0)
        counts = tf.cast(model(stacked, training=training)["logits"], tf.float32)
        tile_counts = tf.reshape(counts[batch:], [batch, NUM_TILES, -1])
        return counting_loss(counts[:batch], tile_counts, self.config.margin)

    def compute_loss(self, inputs, model: keras.Model, training: bool):
        terms = self._losses(inputs, model, training)
        return terms["loss"], None, terms

    def update_metrics(self, metrics, loss, labels, outputs) -> None:
        for metric in metrics:
            metric.update_state(outputs[metric.name])


TASKS.register("counting", CountingTask)
