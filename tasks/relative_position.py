"""Relative position: predict where a patch sits relative to the centre patch (8 classes).

Doersch, Gupta & Efros, "Unsupervised Visual Representation Learning by Context Prediction",
ICCV 2015. Per image, the centre patch of a 3×3 patch grid and one of its 8 neighbours are cut
with a gap and jitter between them, encoded by one shared-weight encoder, and the two feature
vectors, concatenated (centre first), are classified into the neighbour's position.

Sampling: the paper draws one pair per image with a uniform label (the default). With
``all_neighbours=True`` the whole 3×3 patch grid of every image is cut and all 8 (centre,
neighbour) pairs are classified, as RotNet puts all four rotations of an image in the batch;
each patch is encoded once (the centre for its 8 pairs), so a step yields 8 labelled pairs per
9 encoded patches instead of 1 per 2. On Fashion-MNIST at equal compute (600 steps of 64
images in that mode, 2200 in the paper's) the two gave the same probe accuracy (86.3 vs 86.1).

Labels, row-major around the centre with the centre skipped (the paper's Fig. 2 numbering
1..8, 0-indexed), as (row, column) steps from the centre::

    0 (-1, -1)   1 (-1, 0)   2 (-1, +1)
    3 ( 0, -1)     centre    4 ( 0, +1)
    5 (+1, -1)   6 (+1, 0)   7 (+1, +1)

Geometry (:func:`relative_position_grid`): the paper's 96 px patches with a 48 px gap and up to
7 px of jitter per patch (§3) put patch corners 144 px apart with at least 34 px between
patches; we keep those proportions of the cell (patch 2/3, minimum gap 34/144, the rest is
jitter). Cells are at least MIN_CELL_SIZE px, so a 28 px image is resized to 54 px: 12 px
patches, gap ≥ 4 px, jitter 0..2 px.

Against chromatic aberration (§4), each patch either keeps one random colour channel
("color dropping", the paper's) or turns gray; neither matters on gray data such as
Fashion-MNIST.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from selfsup.datasets.patches import (
    NORMALIZATIONS,
    TileGrid,
    crop_patches,
    drop_color_channels,
    fit_to_side,
    grid_tile_corners,
    grid_tiles,
    normalize_patches,
    split_seed,
)
from selfsup.datasets.preprocess import gray_rgb
from selfsup.models.registry import ConfigError
from selfsup.tasks.base import TASKS, Task, TaskConfig
from selfsup.tasks.patch_model import PatchSetModel, build_checked

GRID_CELLS_PER_SIDE = 3
CENTRE_CELL = 4  # row-major index of the middle cell of the 3×3 grid
# Label k → grid cell of the neighbour (row-major, centre skipped) and its (row, col) step.
NEIGHBOUR_CELLS = (0, 1, 2, 3, 5, 6, 7, 8)
NEIGHBOUR_OFFSETS = tuple((cell // 3 - 1, cell % 3 - 1) for cell in NEIGHBOUR_CELLS)
NUM_POSITIONS = len(NEIGHBOUR_CELLS)
# (centre, neighbour) patch indices of the model's groups: one pair, or all 8 from a grid.
PAIR_GROUPS = ((0, 1),)
NEIGHBOURHOOD_GROUPS = tuple((CENTRE_CELL, cell) for cell in NEIGHBOUR_CELLS)
# Doersch et al. 2015 §3: 96 px patches, 48 px gap, jitter up to 7 px → 144 px cells,
# minimum gap 48 − 2·7 = 34 px.
PATCH_TO_CELL_RATIO = 96 / 144
GAP_TO_CELL_RATIO = 34 / 144
MIN_CELL_SIZE = 18
COLOR_AUGMENTATIONS = ("drop", "grayscale", "none")


@dataclasses.dataclass(frozen=True)
class RelativePositionConfig(TaskConfig):
    """Relative-position settings. ``None`` geometry fields are derived from ``image_size``."""

    cell_size: int | None = None
    patch_size: int | None = None
    gap: int | None = None
    normalization: str = "none"
    color_augmentation: str = "drop"
    all_neighbours: bool = False
    head_hidden_units: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.normalization not in NORMALIZATIONS:
            raise ConfigError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, "
                              f"got {self.normalization!r}")
        if self.color_augmentation not in COLOR_AUGMENTATIONS:
            raise ConfigError(f"color_augmentation must be one of "
                              f"{', '.join(COLOR_AUGMENTATIONS)}, got {self.color_augmentation!r}")
        if self.gap is not None and self.gap < 1:
            raise ConfigError(f"gap must be at least 1 px so patches never touch, got {self.gap}")
        for name in ("cell_size", "patch_size"):  # 0 would silently mean "derive it"
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive (or None: derived from "
                                  f"image_size), got {getattr(self, name)}")
        if any(units < 1 for units in self.head_hidden_units):
            raise ConfigError(f"head_hidden_units must be positive, got {self.head_hidden_units}")
        relative_position_grid(self)  # geometry errors surface with the config


def relative_position_grid(config: RelativePositionConfig) -> TileGrid:
    """The patch grid of ``config`` (Doersch's proportions, cells of at least 18 px)."""
    cell = config.cell_size or max(config.image_size // GRID_CELLS_PER_SIDE, MIN_CELL_SIZE)
    patch = config.patch_size or int(round(PATCH_TO_CELL_RATIO * cell))
    gap = config.gap if config.gap is not None else max(1, int(round(GAP_TO_CELL_RATIO * cell)))
    if patch < 1 or patch + gap > cell:
        raise ConfigError(f"patch_size + gap ({patch} + {gap}) must fit in cell_size {cell}")
    return TileGrid(GRID_CELLS_PER_SIDE, cell, patch, gap)


def pair_corners(grid_corners: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """``[b, 9, 2]`` grid corners, ``[b]`` labels → ``[b, 2, 2]`` (centre, neighbour) corners."""
    neighbour_cells = tf.gather(tf.constant(NEIGHBOUR_CELLS, tf.int32), labels)
    neighbours = tf.gather(grid_corners, neighbour_cells, batch_dims=1)
    return tf.stack([grid_corners[:, CENTRE_CELL], neighbours], axis=1)


def _augment(patches: tf.Tensor, seed: tf.Tensor, normalization: str,
             color_augmentation: str) -> tf.Tensor:
    """Per-patch colour augmentation, then normalisation, of ``[b, n, t, t, 3]`` patches."""
    if color_augmentation == "drop":
        patches = drop_color_channels(patches, seed)
    elif color_augmentation == "grayscale":
        patches = gray_rgb(patches)
    return normalize_patches(patches, normalization)


def make_patch_pairs(images: tf.Tensor, seed: tf.Tensor, grid: TileGrid,
                     normalization: str = "none", color_augmentation: str = "drop",
                     ) -> tuple[tf.Tensor, tf.Tensor]:
    """``[b, s, s, 3]`` images → (``[b, 2, t, t, 3]`` (centre, neighbour), ``[b]`` int64 labels).

    The paper's sampling: one pair per image, the label uniform over the 8 positions.
    """
    fit_seed, corner_seed, label_seed, color_seed = split_seed(seed, 4)
    fitted = fit_to_side(images, grid.side, fit_seed)
    batch = tf.shape(images)[0]
    labels = tf.random.stateless_uniform([batch], label_seed, 0, NUM_POSITIONS, dtype=tf.int32)
    corners = pair_corners(grid_tile_corners(batch, grid, corner_seed), labels)
    pairs = _augment(crop_patches(fitted, corners, grid.tile_size), color_seed, normalization,
                     color_augmentation)
    return pairs, tf.cast(labels, tf.int64)


def make_neighbourhoods(images: tf.Tensor, seed: tf.Tensor, grid: TileGrid,
                        normalization: str = "none", color_augmentation: str = "drop",
                        ) -> tuple[tf.Tensor, tf.Tensor]:
    """``[b, s, s, 3]`` images → (``[b, 9, t, t, 3]`` grid patches, ``[8b]`` int64 labels).

    All 8 (centre, neighbour) pairs of every image, for :data:`NEIGHBOURHOOD_GROUPS`: label
    row ``k + 8i`` is ``k``, the pair of image ``i``'s centre with its neighbour ``k``. Each
    patch is encoded once for its 8 (centre) or 1 (neighbour) examples.
    """
    tiles_seed, color_seed = split_seed(seed, 2)
    tiles, _ = grid_tiles(images, grid, tiles_seed)
    labels = tf.tile(tf.range(NUM_POSITIONS, dtype=tf.int64), [tf.shape(images)[0]])
    return _augment(tiles, color_seed, normalization, color_augmentation), labels


class RelativePositionTask(Task):
    """Relative patch position pretext task (Doersch et al. 2015): 8-way classification."""

    config_class = RelativePositionConfig

    def __init__(self, config: RelativePositionConfig) -> None:
        super().__init__(config)
        self.grid = relative_position_grid(config)

    def build_model(self) -> PatchSetModel:
        if self.config.all_neighbours:
            num_patches, groups = self.grid.num_cells, NEIGHBOURHOOD_GROUPS
        else:
            num_patches, groups = 2, PAIR_GROUPS
        model = PatchSetModel(self.build_backbone(), num_patches, groups, NUM_POSITIONS,
                              self.config.head_hidden_units,
                              synchronized_bn=self.config.synchronized_bn,
                              name="relative_position")
        return build_checked(model, self.grid.tile_size, self.config.backbone)

    def dummy_inputs(self) -> tf.Tensor:
        size = self.grid.tile_size
        num_patches = self.grid.num_cells if self.config.all_neighbours else 2
        return tf.zeros([1, num_patches, size, size, 3])

    def build_inputs(self, input_context: tf.distribute.InputContext | None = None
                     ) -> tf.data.Dataset:
        config = self.config
        make = make_neighbourhoods if config.all_neighbours else make_patch_pairs

        def examples(batch, seed):
            return make(batch, seed, self.grid, config.normalization, config.color_augmentation)

        return self.map_training_images(examples, input_context)


TASKS.register("relative_position", RelativePositionTask)
