"""Jigsaw puzzles: recognise which permutation shuffled the 3×3 tiles of an image.

Noroozi & Favaro, "Unsupervised Learning of Visual Representations by Solving Jigsaw Puzzles",
ECCV 2016. Nine jittered tiles are cut from a 3×3 grid with gaps between them, normalised per
tile, shuffled by one permutation of a maximal-Hamming-distance set
(:mod:`selfsup.tasks.permutations`), and encoded by one shared-weight encoder; the nine feature
vectors, concatenated in shuffled order, are classified into the permutation's index.

Permutation convention: with label ``p``, position ``i`` of the shuffled input holds the tile of
grid cell ``permutations[p][i]`` (cells in row-major order, 0-indexed), i.e.
``shuffled[i] = tiles[perm[i]]``; putting ``shuffled[i]`` back into cell ``perm[i]`` restores the
grid.

Geometry (defaults derived from ``image_size``, see :func:`jigsaw_grid`): the paper crops
225 px into 75 px cells and 64 px tiles; the official code crops 255 px into 85 px cells
(REFERENCE), a tile/cell ratio of 0.75, which we follow (a larger expected gap makes matching
continuing edges across borders harder). Cells are at least MIN_CELL_SIZE px, so a 28 px
Fashion-MNIST image is resized to 48 px (16 px cells, 12 px tiles, gap ≥ 1 px, jitter 0..3 px):
tiles of about 7 source pixels still give the small encoders 3×3 maps at their last stage.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from selfsup.datasets.patches import (
    NORMALIZATIONS,
    TileGrid,
    grid_tiles,
    normalize_patches,
    random_grayscale,
    split_seed,
)
from selfsup.models.registry import ConfigError
from selfsup.tasks.base import TASKS, Task, TaskConfig
from selfsup.tasks.patch_model import PatchSetModel, build_checked
from selfsup.tasks.permutations import CRITERIA, NUM_JIGSAW_TILES, permutation_set

GRID_CELLS_PER_SIDE = 3  # Noroozi & Favaro 2016, §3: a 3×3 puzzle
# Official code: 64 px tiles in 85 px cells (the paper's §3.4 says 64 in 75).
TILE_TO_CELL_RATIO = 0.75
MIN_CELL_SIZE = 16
PERMUTATION_SET_SIZES = (100, 1000)
# Jigsaw recipes after the paper train on gray images with this probability (REFERENCE).
DEFAULT_GRAYSCALE_PROBABILITY = 0.66


@dataclasses.dataclass(frozen=True)
class JigsawConfig(TaskConfig):
    """Jigsaw settings. ``None`` geometry fields are derived from ``image_size``.

    ``num_permutations`` defaults to 100: Noroozi & Favaro's Table 3 shows that fewer, more
    distant permutations make an easier task, and at 28 px a 12 px tile carries little detail
    for telling 1000 classes apart in a few CPU-minutes (measured: after 200 steps the 1000-way
    loss was still 5.5 of 6.9 and the probe below random init, while 100 classes gave a probe
    above it); 1000 (the paper's default) is available. ``permutation_seed`` picks the set,
    apart from ``seed``, so runs with different data seeds can share one puzzle set.
    """

    num_permutations: int = 100
    permutation_criterion: str = "average"
    permutation_seed: int = 0
    cell_size: int | None = None
    tile_size: int | None = None
    gap: int = 1
    normalization: str = "tile"
    grayscale_probability: float = DEFAULT_GRAYSCALE_PROBABILITY
    head_hidden_units: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_permutations not in PERMUTATION_SET_SIZES:
            raise ConfigError(f"num_permutations must be one of {PERMUTATION_SET_SIZES}, "
                              f"got {self.num_permutations}")
        if self.permutation_criterion not in CRITERIA:
            raise ConfigError(f"permutation_criterion must be one of {', '.join(CRITERIA)}, "
                              f"got {self.permutation_criterion!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ConfigError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, "
                              f"got {self.normalization!r}")
        if not 0.0 <= self.grayscale_probability <= 1.0:
            raise ConfigError(f"grayscale_probability must be in [0, 1], "
                              f"got {self.grayscale_probability}")
        if self.gap < 1:
            raise ConfigError(f"gap must be at least 1 px so tiles never touch, got {self.gap}")
        for name in ("cell_size", "tile_size"):  # 0 would silently mean "derive it"
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive (or None: derived from "
                                  f"image_size), got {getattr(self, name)}")
        if any(units < 1 for units in self.head_hidden_units):
            raise ConfigError(f"head_hidden_units must be positive, got {self.head_hidden_units}")
        jigsaw_grid(self)  # geometry errors surface with the config


def jigsaw_grid(config: JigsawConfig) -> TileGrid:
    """The tile grid of ``config``: cell ``max(image_size // 3, 16)``, tile 0.75 × cell."""
    cell = config.cell_size or max(config.image_size // GRID_CELLS_PER_SIDE, MIN_CELL_SIZE)
    tile = config.tile_size or int(round(TILE_TO_CELL_RATIO * cell))
    if tile < 1 or tile + config.gap > cell:
        raise ConfigError(f"tile_size + gap ({tile} + {config.gap}) must fit in cell_size {cell}")
    return TileGrid(GRID_CELLS_PER_SIDE, cell, tile, config.gap)


def shuffle_tiles(tiles: tf.Tensor, labels: tf.Tensor, permutations: tf.Tensor) -> tf.Tensor:
    """``shuffled[b, i] = tiles[b, permutations[labels[b], i]]`` (the module's convention)."""
    order = tf.gather(permutations, labels)
    return tf.gather(tiles, order, batch_dims=1)


def make_puzzles(images: tf.Tensor, seed: tf.Tensor, permutations: tf.Tensor, grid: TileGrid,
                 normalization: str = "tile",
                 grayscale_probability: float = DEFAULT_GRAYSCALE_PROBABILITY,
                 ) -> tuple[tf.Tensor, tf.Tensor]:
    """``[b, s, s, 3]`` images → (``[b, 9, t, t, 3]`` shuffled tiles, ``[b]`` int64 labels).

    Labels are uniform over the permutation set; every step is a batched TF op.
    """
    gray_seed, tile_seed, label_seed = split_seed(seed, 3)
    images = random_grayscale(images, grayscale_probability, gray_seed)
    tiles, _ = grid_tiles(images, grid, tile_seed)
    tiles = normalize_patches(tiles, normalization)
    labels = tf.random.stateless_uniform([tf.shape(images)[0]], label_seed, 0,
                                         tf.shape(permutations)[0], dtype=tf.int32)
    return shuffle_tiles(tiles, labels, permutations), tf.cast(labels, tf.int64)


class JigsawTask(Task):
    """Jigsaw puzzle pretext task (Noroozi & Favaro 2016): permutation classification."""

    config_class = JigsawConfig

    def __init__(self, config: JigsawConfig) -> None:
        super().__init__(config)
        self.grid = jigsaw_grid(config)
        self._permutations: np.ndarray | None = None

    @property
    def permutations(self) -> np.ndarray:
        """``[num_permutations, 9]`` permutation set (generated once, then read from cache)."""
        if self._permutations is None:
            config = self.config
            self._permutations = permutation_set(config.num_permutations,
                                                 config.permutation_seed,
                                                 config.permutation_criterion)
        return self._permutations

    def build_model(self) -> PatchSetModel:
        model = PatchSetModel(self.build_backbone(), NUM_JIGSAW_TILES,
                              (tuple(range(NUM_JIGSAW_TILES)),), self.config.num_permutations,
                              self.config.head_hidden_units,
                              synchronized_bn=self.config.synchronized_bn, name="jigsaw")
        return build_checked(model, self.grid.tile_size, self.config.backbone)

    def dummy_inputs(self) -> tf.Tensor:
        tile = self.grid.tile_size
        return tf.zeros([1, NUM_JIGSAW_TILES, tile, tile, 3])

    def build_inputs(self, input_context: tf.distribute.InputContext | None = None
                     ) -> tf.data.Dataset:
        config = self.config
        table = tf.constant(self.permutations, tf.int32)

        def puzzles(batch, seed):
            return make_puzzles(batch, seed, table, self.grid, config.normalization,
                                config.grayscale_probability)

        return self.map_training_images(puzzles, input_context)


TASKS.register("jigsaw", JigsawTask)
