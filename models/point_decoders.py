"""Decoders from a feature vector to a point cloud ``[batch, points, 3]``.

* :class:`FullyConnectedPointDecoder` (Achlioptas, Diamanti, Mitliagkas & Guibas, ICML 2018,
  appendix): fully connected layers of 256 and 256 units with ReLU and a linear layer of
  ``points × 3`` outputs, reshaped to the points (no BatchNorm, as in the paper's AE decoder).
* :class:`FoldingDecoder` (Yang, Feng, Shen & Tian, "FoldingNet", CVPR 2018): a fixed
  2-D grid of 45 × 45 = 2,025 points is "folded" twice into 3-D; each fold is a shared
  3-layer perceptron (512, 512, 3 units, ReLU between) on every grid point concatenated with
  the codeword (the first fold reads the 2-D grid point, the second the first fold's 3-D
  output). The grid's extent, [−1, 1]², is our choice (shapes here live in the unit ball).
  It outputs the grid's point count whatever the input's (the Chamfer distance compares sets
  of different sizes).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from selfsup.models.registry import ConfigError

FC_DECODER_WIDTHS = (256, 256)  # Achlioptas et al. 2018, appendix
FOLDING_GRID_SIDE = 45  # Yang et al. 2018: m = 2025 grid points
FOLDING_WIDTH = 512  # Yang et al. 2018: folding perceptrons 512-512-3
GRID_EXTENT = 1.0


class FullyConnectedPointDecoder(keras.layers.Layer):
    """Feature vector ``[b, d]`` → ``[b, num_points, 3]`` through fully connected layers."""

    def __init__(self, num_points: int, widths: Sequence[int] = FC_DECODER_WIDTHS,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if num_points <= 0:
            raise ConfigError(f"num_points must be positive, got {num_points}")
        self.num_points = num_points
        self.hidden = [keras.layers.Dense(width, activation="relu", name=f"fc{i}")
                       for i, width in enumerate(widths, start=1)]
        self.output_layer = keras.layers.Dense(num_points * 3, name="points")

    def call(self, features, training=None):
        for layer in self.hidden:
            features = layer(features)
        return tf.reshape(self.output_layer(features), [-1, self.num_points, 3])


def folding_grid(side: int, extent: float = GRID_EXTENT) -> np.ndarray:
    """The ``side × side`` square grid over [−extent, extent]², float32 ``[side², 2]`` (row by
    row)."""
    axis = np.linspace(-extent, extent, side, dtype=np.float32)
    rows, columns = np.meshgrid(axis, axis, indexing="ij")
    return np.stack([rows.ravel(), columns.ravel()], axis=1)


class FoldingDecoder(keras.layers.Layer):
    """Codeword ``[b, d]`` → ``[b, grid_side², 3]`` by two folds of a 2-D grid (FoldingNet)."""

    def __init__(self, grid_side: int = FOLDING_GRID_SIDE, width: int = FOLDING_WIDTH,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if grid_side < 2 or width <= 0:
            raise ConfigError(f"folding needs grid_side >= 2 and width > 0, got {grid_side} "
                              f"and {width}")
        self.grid = tf.constant(folding_grid(grid_side))
        self.folds = [[keras.layers.Dense(width, activation="relu", name=f"fold{fold}_{i}")
                       for i in (1, 2)] + [keras.layers.Dense(3, name=f"fold{fold}_3")]
                      for fold in (1, 2)]

    @property
    def num_points(self) -> int:
        return int(self.grid.shape[0])

    def call(self, codewords, training=None):
        batch = tf.shape(codewords)[0]
        # Every grid point sees the whole codeword: [b, m, d].
        tiled = tf.tile(codewords[:, None, :], [1, self.num_points, 1])
        points = tf.tile(self.grid[None], [batch, 1, 1])
        for layers in self.folds:
            points = tf.concat([tiled, points], axis=-1)
            for layer in layers:
                points = layer(points)
        return points
