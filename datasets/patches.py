"""In-graph tiles and patches for context pretext tasks (jigsaw, relative position), per batch.

Pure functions over a batch ``[b, h, w, c]``: no Python loop per image, randomness from
stateless ops seeded by an explicit ``[2]`` int seed, so a pipeline is reproducible and a test
can replay it.

Geometry (:class:`TileGrid`): the image is fitted to a square of ``cells_per_side × cell_size``
pixels (random crop if larger, bilinear resize if smaller); each cell holds one ``tile_size``
tile whose top-left corner is jittered independently in rows and columns. A margin of ``gap``
pixels is split between the two sides of every cell (⌊gap/2⌋ before, the rest after) and the
tile jitters inside what is left, so two adjacent tiles are always at least ``gap`` pixels
apart, however they jitter (Noroozi & Favaro 2016 and Doersch et al. 2015 both separate
tiles so that the network cannot match continuing edges or textures across a border).
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from selfsup.datasets.preprocess import gray_rgb

NORMALIZATIONS = ("tile", "image", "none")
# Standardised tiles are mapped back into the [0, 1] input convention of the backbones (they
# rescale [0, 1] → [-1, 1] themselves) at this mean and standard deviation, so the encoder and
# its BatchNorm statistics see inputs in the range it gets whole images in at probe time.
NORMALIZED_MEAN = 0.5
NORMALIZED_STD = 0.25
NORMALIZATION_EPSILON = 1e-3
# Doersch et al. 2015 §4: dropped colour channels become Gaussian noise with a standard
# deviation of about 1/100 of the remaining channel's.
COLOR_DROP_NOISE_RATIO = 0.01


@dataclasses.dataclass(frozen=True)
class TileGrid:
    """A square grid of jittered tiles with a minimum gap (see the module docstring)."""

    cells_per_side: int
    cell_size: int
    tile_size: int
    gap: int

    def __post_init__(self) -> None:
        if self.cells_per_side < 1 or self.tile_size < 1 or self.gap < 0:
            raise ValueError(f"invalid tile grid {self}")
        if self.jitter < 0:
            raise ValueError(f"tile_size + gap ({self.tile_size} + {self.gap}) exceeds the cell "
                             f"size {self.cell_size}")

    @property
    def jitter(self) -> int:
        """Largest random offset of a tile inside its cell (offsets are 0..jitter)."""
        return self.cell_size - self.tile_size - self.gap

    @property
    def side(self) -> int:
        """Side of the square the image is fitted to."""
        return self.cells_per_side * self.cell_size

    @property
    def num_cells(self) -> int:
        return self.cells_per_side ** 2


def split_seed(seed: tf.Tensor, num: int) -> list[tf.Tensor]:
    """``num`` independent ``[2]`` seeds derived from one."""
    return tf.unstack(tf.random.experimental.stateless_split(seed, num))


def crop_patches(images: tf.Tensor, corners: tf.Tensor, size: int) -> tf.Tensor:
    """``[b, h, w, c]`` images, ``[b, n, 2]`` int (row, col) corners → ``[b, n, size, size, c]``.

    Patch ``[i, j]`` is ``images[i, r:r + size, c:c + size]`` for ``(r, c) = corners[i, j]``;
    two gathers with batch dimensions, vectorised over images and patches.
    """
    offsets = tf.range(size, dtype=corners.dtype)
    rows = corners[..., 0:1] + offsets  # [b, n, size]
    cols = corners[..., 1:2] + offsets
    picked_rows = tf.gather(images, rows, axis=1, batch_dims=1)  # [b, n, size, w, c]
    return tf.gather(picked_rows, cols, axis=3, batch_dims=2)


def random_crop_corners(batch: tf.Tensor, limit: int, seed: tf.Tensor,
                        num: int = 1) -> tf.Tensor:
    """``[batch, num, 2]`` int32 corners, each coordinate uniform in ``0..limit``."""
    return tf.random.stateless_uniform([batch, num, 2], seed, 0, limit + 1, dtype=tf.int32)


def fit_to_side(images: tf.Tensor, side: int, seed: tf.Tensor) -> tf.Tensor:
    """Square ``[b, s, s, c]`` images → ``[b, side, side, c]``.

    Larger images give a random ``side`` crop per image (the papers' random crop before
    tiling); smaller ones are resized bilinearly (whole batch); equal sizes pass through.
    """
    size = images.shape[1]
    if size is None or images.shape[2] != size:
        raise ValueError(f"fit_to_side needs square images of static size, got {images.shape}")
    if size == side:
        return images
    if size < side:
        return tf.image.resize(images, [side, side], method="bilinear")
    corners = random_crop_corners(tf.shape(images)[0], size - side, seed)
    return crop_patches(images, corners, side)[:, 0]


def grid_tile_corners(batch: tf.Tensor | int, grid: TileGrid, seed: tf.Tensor) -> tf.Tensor:
    """``[batch, cells, 2]`` int32 (row, col) tile corners, cells in row-major order.

    Cell ``(r, c)`` (index ``r * cells_per_side + c``) puts its tile's corner at
    ``(r * cell + ⌊gap/2⌋ + jr, c * cell + ⌊gap/2⌋ + jc)`` with ``jr, jc`` uniform in
    ``0..jitter``, drawn independently for every tile.
    """
    cells = tf.range(grid.cells_per_side, dtype=tf.int32)
    cell_rows = tf.repeat(cells, grid.cells_per_side)
    cell_cols = tf.tile(cells, [grid.cells_per_side])
    base = tf.stack([cell_rows, cell_cols], axis=-1) * grid.cell_size + grid.gap // 2
    jitter = tf.random.stateless_uniform([batch, grid.num_cells, 2], seed, 0, grid.jitter + 1,
                                         dtype=tf.int32)
    return base[None] + jitter


def normalize_patches(patches: tf.Tensor, mode: str) -> tf.Tensor:
    """Standardises ``[b, n, t, t, c]`` patches per tile or per image (Noroozi & Favaro §3.2).

    ``"tile"``: every patch gets the same mean and standard deviation, so low-level statistics
    cannot tell which tiles belong together; ``"image"``: one mean/std over all patches of an
    image; ``"none"``: unchanged. Standardised values are mapped to mean NORMALIZED_MEAN and
    std NORMALIZED_STD (not clipped); a flat patch becomes constant NORMALIZED_MEAN.
    """
    if mode not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {mode!r}")
    if mode == "none":
        return patches
    axes = [2, 3, 4] if mode == "tile" else [1, 2, 3, 4]
    mean, variance = tf.nn.moments(patches, axes=axes, keepdims=True)
    std = tf.maximum(tf.sqrt(variance), NORMALIZATION_EPSILON)
    return (patches - mean) / std * NORMALIZED_STD + NORMALIZED_MEAN


def _per_leading_mask(x: tf.Tensor, probability: float, seed: tf.Tensor,
                      leading_dims: int) -> tf.Tensor:
    """A boolean draw per element of ``x``'s leading dims, broadcastable to ``x``."""
    shape = tf.shape(x)[:leading_dims]
    draw = tf.random.stateless_uniform(shape, seed) < probability
    return tf.reshape(draw, tf.concat([shape, tf.ones([x.shape.rank - leading_dims],
                                                      tf.int32)], 0))


def random_grayscale(images: tf.Tensor, probability: float, seed: tf.Tensor,
                     leading_dims: int = 1) -> tf.Tensor:
    """Turns each element of the leading dims (an image, or a patch) gray with ``probability``.

    Noroozi & Favaro 2016 and later jigsaw code train on gray images part of the time so that
    colour fringes (chromatic aberration) cannot give tile positions away.
    """
    if probability <= 0.0:
        return images
    mask = _per_leading_mask(images, probability, seed, leading_dims)
    return tf.where(mask, gray_rgb(images), images)


def drop_color_channels(patches: tf.Tensor, seed: tf.Tensor,
                        noise_ratio: float = COLOR_DROP_NOISE_RATIO) -> tf.Tensor:
    """Doersch et al. 2015 §4 "color dropping": per patch, keep one random channel.

    ``patches`` is ``[..., t, t, 3]``. The two dropped channels become the kept channel's mean
    over the patch plus Gaussian noise with ``noise_ratio`` times its standard deviation
    (the paper fills them with noise around zero in its mean-subtracted input space; the
    patch mean keeps them inside our [0, 1] range).
    """
    keep_seed, noise_seed = split_seed(seed, 2)
    leading = tf.shape(patches)[:-3]
    kept = tf.random.stateless_uniform(leading, keep_seed, 0, 3, dtype=tf.int32)
    keep_mask = tf.one_hot(kept, 3, on_value=True, off_value=False, dtype=tf.bool)
    keep_mask = keep_mask[..., None, None, :]  # [..., 1, 1, 3]
    kept_channel = tf.reduce_sum(tf.where(keep_mask, patches, 0.0), -1, keepdims=True)
    mean, variance = tf.nn.moments(kept_channel, axes=[-3, -2, -1], keepdims=True)
    noise = tf.random.stateless_normal(tf.shape(patches), noise_seed, dtype=patches.dtype)
    filler = mean + noise * noise_ratio * tf.sqrt(variance)
    return tf.where(keep_mask, patches, filler)


def grid_tiles(images: tf.Tensor, grid: TileGrid, seed: tf.Tensor
               ) -> tuple[tf.Tensor, tf.Tensor]:
    """``[b, s, s, c]`` images → (``[b, cells, t, t, c]`` tiles, ``[b, cells, 2]`` corners).

    The image is fitted to ``grid.side`` (:func:`fit_to_side`) and one jittered tile is cut
    from every cell (:func:`grid_tile_corners`); corners are in the fitted image's pixels.
    """
    fit_seed, corner_seed = split_seed(seed, 2)
    fitted = fit_to_side(images, grid.side, fit_seed)
    corners = grid_tile_corners(tf.shape(images)[0], grid, corner_seed)
    return crop_patches(fitted, corners, grid.tile_size), corners
