"""Pictures for people: a batch of images tiled into one grid, written as a PNG file."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import tensorflow as tf

from selfsup.tasks.atomic_files import write_bytes_atomically

GRID_PADDING = 2  # pixels of white between the cells of a grid


def image_grid(images, columns: int | None = None, padding: int = GRID_PADDING) -> np.ndarray:
    """Float RGB ``[n, h, w, 3]`` in [0, 1] (values outside are clipped) → uint8
    ``[rows·(h+p)+p, columns·(w+p)+p, 3]``: row-major cells on a white background.

    ``columns`` defaults to ``ceil(sqrt(n))``; cells past ``n`` stay white.
    """
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise ValueError(f"expected a non-empty [n, h, w, 3] batch, got shape {images.shape}")
    count, height, width, _ = images.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    pixels = np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
    # Each cell gets white padding below and to its right; empty cells are all white.
    cells = np.pad(pixels, ((0, rows * columns - count), (0, padding), (0, padding), (0, 0)),
                   constant_values=255)
    cells = cells.reshape(rows, columns, height + padding, width + padding, 3)
    grid = cells.transpose(0, 2, 1, 3, 4).reshape(rows * (height + padding),
                                                  columns * (width + padding), 3)
    grid = np.pad(grid, ((padding, 0), (padding, 0), (0, 0)), constant_values=255)
    return grid


def interleave(*groups) -> tf.Tensor:
    """Equal-shaped ``[n, h, w, c]`` batches → ``[k·n, h, w, c]`` with image ``i`` of every
    group side by side (``a₀, b₀, a₁, b₁, …``; with k columns per row of a grid, each row shows
    whole groups); 1-channel maps become gray RGB."""
    groups = [tf.image.grayscale_to_rgb(g) if g.shape[-1] == 1 else g for g in groups]
    stacked = tf.stack([tf.cast(g, tf.float32) for g in groups], axis=1)
    return tf.reshape(stacked, [-1, *stacked.shape[2:]])


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Writes a uint8 ``[h, w, 3]`` image as PNG atomically (a reader never sees half a file)."""
    return write_bytes_atomically(path, tf.io.encode_png(tf.constant(image, tf.uint8)).numpy())
