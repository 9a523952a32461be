"""Space-Time Cubic Puzzles: put four shuffled space-time pieces of a clip back in order.

Kim, Cho & Kweon, "Self-Supervised Video Representation Learning with Space-Time Cubic
Puzzles", AAAI 2019. A clip is cut into a 2 × 2 × 4 grid of cuboids (2 × 2 spatial cells, 4
temporal slots). Solving all 16! arrangements is hopeless, so one puzzle uses four cuboids in a
line: either the 2 × 2 spatial cells of one temporal slot (a *spatial* puzzle: where is each
piece) or the 4 temporal slots of one spatial cell (a *temporal* puzzle: which piece comes
first). The four pieces are shuffled by one of the 4! = 24 permutations, each is encoded by the
same 3D ConvNet (late fusion, as the context-free network of jigsaw puzzles), and the
concatenated features are classified into the permutation.

Classes: the 4! = 24 permutations of each puzzle direction; with both directions (the paper
samples either one for every puzzle) the label also says which direction, ``direction · 24 +
permutation index``, 48 classes (``puzzle_directions="spatial"`` or ``"temporal"`` alone: 24).
Telling the direction apart is our choice: pieces of both kinds have the same shape, and one
24-way label would ask a single output to mean "top-left cell" and "first slot" at once.
Permutations are ``itertools.permutations(range(4))`` in lexicographic order
(:func:`selfsup.tasks.permutations.all_permutations`): with 4 pieces every permutation is used,
so no Hamming-distance selection is needed. Convention as in :mod:`selfsup.tasks.jigsaw`: input
slot ``i`` holds piece ``perm[label][i]`` (spatial pieces in row-major cell order, temporal
pieces in time order), so putting slot ``i`` back at ``perm[i]`` restores the clip.

Jitter: each piece is cut as a ``cell − jitter`` square at a random offset inside its cell (the
same offset for all frames of the piece), so pieces do not continue each other's edges exactly
(the shortcut Noroozi & Favaro's gaps remove from 2D puzzles). By default ``jitter`` is an
eighth of the cell side, kept at 0 where that would make pieces smaller than 16 px (the smallest
frame the video backbones take): 112 px crops give 56 px cells and 49 px pieces, 32 px crops
16 px pieces without jitter. A piece has ``clip_length / 4`` frames (16-frame clips: 4).
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from selfsup.models import FEATURE_ENDPOINT
from selfsup.models.heads import MLPHead
from selfsup.models.registry import ConfigError
from selfsup.tasks.base import TASKS
from selfsup.tasks.jigsaw import shuffle_tiles
from selfsup.tasks.permutations import all_permutations
from selfsup.tasks.video_base import VideoTask, VideoTaskConfig

GRID_SIDE = 2  # 2 × 2 spatial cells of the 2 × 2 × 4 grid (Kim et al. 2019)
TIME_SLOTS = 4  # 4 temporal slots of the 2 × 2 × 4 grid (Kim et al. 2019)
NUM_PIECES = 4  # pieces per puzzle: a 2 × 2 spatial tuple or a 4 × 1 temporal tuple
DIRECTIONS = ("spatial", "temporal")
PUZZLE_DIRECTIONS = ("both", *DIRECTIONS)
MIN_PIECE_SIZE = 16  # the smallest frame side the video backbones take (issue 7 contract)
JITTER_FRACTION = 0.125


@dataclasses.dataclass(frozen=True)
class CubicPuzzleConfig(VideoTaskConfig):
    """Cubic puzzle settings (see the module docstring). ``jitter=None``: derived from the cell
    side (an eighth of it, 0 if pieces would drop below 16 px)."""

    puzzle_directions: str = "both"
    jitter: int | None = None
    head_hidden_units: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.puzzle_directions not in PUZZLE_DIRECTIONS:
            raise ConfigError(f"puzzle_directions must be one of {', '.join(PUZZLE_DIRECTIONS)}, "
                              f"got {self.puzzle_directions!r}")
        if self.clip_length % TIME_SLOTS:
            raise ConfigError(f"clip_length must be a multiple of {TIME_SLOTS} (the temporal "
                              f"slots of the puzzle grid), got {self.clip_length}")
        if self.image_size % GRID_SIDE:
            raise ConfigError(f"image_size must be even (2 × 2 spatial cells), "
                              f"got {self.image_size}")
        if self.jitter is not None and not 0 <= self.jitter < self.image_size // GRID_SIDE:
            raise ConfigError(f"jitter must be in 0..{self.image_size // GRID_SIDE - 1} px, "
                              f"got {self.jitter}")
        if any(units < 1 for units in self.head_hidden_units):
            raise ConfigError(f"head_hidden_units must be positive, got {self.head_hidden_units}")

    @property
    def cell_size(self) -> int:
        return self.image_size // GRID_SIDE

    @property
    def piece_jitter(self) -> int:
        if self.jitter is not None:
            return self.jitter
        jitter = int(round(JITTER_FRACTION * self.cell_size))
        return jitter if self.cell_size - jitter >= MIN_PIECE_SIZE else 0

    @property
    def piece_size(self) -> int:
        return self.cell_size - self.piece_jitter

    @property
    def piece_frames(self) -> int:
        return self.clip_length // TIME_SLOTS

    @property
    def directions(self) -> tuple[str, ...]:
        return DIRECTIONS if self.puzzle_directions == "both" else (self.puzzle_directions,)


def puzzle_permutations() -> np.ndarray:
    """``[24, 4]`` int32: every permutation of 4 pieces, lexicographic order."""
    return all_permutations(NUM_PIECES).astype(np.int32)


def cuboid_grid(clips: tf.Tensor) -> tf.Tensor:
    """``[b, t, s, s, c]`` → ``[b, 4, 4, t/4, s/2, s/2, c]``: grid[b, slot, cell] is the
    cuboid of temporal slot ``slot`` (in time order) and spatial cell ``cell`` (row-major:
    0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right). Exact slicing by reshapes."""
    frames, height, width, channels = clips.shape[1:]
    if frames % TIME_SLOTS or height % GRID_SIDE or width % GRID_SIDE:
        raise ValueError(f"clips of {frames} frames of {height}×{width} do not split into "
                         f"{TIME_SLOTS} slots of 2 × 2 cells")
    t, h, w = frames // TIME_SLOTS, height // GRID_SIDE, width // GRID_SIDE
    grid = tf.reshape(clips, [-1, TIME_SLOTS, t, GRID_SIDE, h, GRID_SIDE, w, channels])
    grid = tf.transpose(grid, [0, 1, 3, 5, 2, 4, 6, 7])  # [b, slot, row, col, t, h, w, c]
    return tf.reshape(grid, [-1, TIME_SLOTS, GRID_SIDE * GRID_SIDE, t, h, w, channels])


def select_pieces(grid: tf.Tensor, directions: tf.Tensor, positions: tf.Tensor) -> tf.Tensor:
    """The four pieces of each puzzle, unshuffled: ``[b, 4, t', h', w', c]``.

    ``directions[b]``: 0 spatial (the four cells of temporal slot ``positions[b]``), 1 temporal
    (the four slots of spatial cell ``positions[b]``)."""
    shape = [tf.shape(directions)[0], NUM_PIECES]
    order = tf.broadcast_to(tf.range(NUM_PIECES, dtype=tf.int32)[None, :], shape)
    position = tf.broadcast_to(tf.cast(positions, tf.int32)[:, None], shape)
    spatial = tf.equal(tf.cast(directions, tf.int32), 0)[:, None]
    slots = tf.where(spatial, position, order)
    cells = tf.where(spatial, order, position)
    return tf.gather_nd(grid, tf.stack([slots, cells], axis=-1), batch_dims=1)


def crop_pieces(pieces: tf.Tensor, offsets: tf.Tensor, size: int) -> tf.Tensor:
    """``[b, n, t, h, w, c]`` pieces → their ``size × size`` windows at ``offsets [b, n, 2]``
    (top, left), the same window for every frame of a piece. Exact gathers, no resampling."""
    steps = tf.range(size, dtype=tf.int32)
    offsets = tf.cast(offsets, tf.int32)
    rows = offsets[..., 0:1] + steps          # [b, n, size]
    columns = offsets[..., 1:2] + steps
    pieces = tf.gather(pieces, rows, axis=3, batch_dims=2)
    return tf.gather(pieces, columns, axis=4, batch_dims=2)


def make_cubic_puzzles(clips: tf.Tensor, seed: tf.Tensor, permutations: tf.Tensor,
                       directions: tuple[str, ...] = DIRECTIONS, jitter: int = 0
                       ) -> tuple[tf.Tensor, tf.Tensor]:
    """``[b, t, s, s, 3]`` clips → (``[b, 4, t/4, s/2 − jitter, s/2 − jitter, 3]`` shuffled
    pieces, ``[b]`` int64 labels ``direction_index · 24 + permutation``).

    The direction (among ``directions``), its position (slot or cell), the jitter offsets and
    the permutation are drawn per clip from the stateless ``seed``; every step is a batched op.
    """
    for direction in directions:
        if direction not in DIRECTIONS:
            raise ValueError(f"puzzle direction must be one of {DIRECTIONS}, got {direction!r}")
    direction_seed, position_seed, offset_seed, label_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 4))
    batch = tf.shape(clips)[0]
    choice = tf.random.stateless_uniform([batch], direction_seed, 0, len(directions),
                                         dtype=tf.int32)
    codes = tf.constant([DIRECTIONS.index(d) for d in directions], tf.int32)
    direction = tf.gather(codes, choice)
    positions = tf.random.stateless_uniform([batch], position_seed, 0, NUM_PIECES,
                                            dtype=tf.int32)
    pieces = select_pieces(cuboid_grid(clips), direction, positions)
    cell = clips.shape[2] // GRID_SIDE
    if jitter:
        offsets = tf.random.stateless_uniform([batch, NUM_PIECES, 2], offset_seed, 0,
                                              jitter + 1, dtype=tf.int32)
        pieces = crop_pieces(pieces, offsets, cell - jitter)
    permutation = tf.random.stateless_uniform([batch], label_seed, 0,
                                              tf.shape(permutations)[0], dtype=tf.int32)
    shuffled = shuffle_tiles(pieces, permutation, permutations)
    labels = choice * tf.shape(permutations)[0] + permutation
    return shuffled, tf.cast(labels, tf.int64)


class CuboidSetModel(keras.Model):
    """Late fusion over puzzle pieces (Kim et al. 2019): the video backbone encodes every piece
    with shared weights, the pooled features are concatenated in input order, and a head
    classifies the arrangement.

    ``call(pieces)``: ``[b, n, t, h, w, 3]`` → ``{"features": [b, n·d], "logits": [b,
    classes]}``; the transferred encoder is ``model.backbone``.
    """

    def __init__(self, backbone: keras.Model, num_pieces: int, num_classes: int,
                 hidden_units: tuple[int, ...] = (), synchronized_bn: bool = False,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone
        self.num_pieces = num_pieces
        self.head = MLPHead(hidden_units, num_classes, synchronized_bn=synchronized_bn,
                            name="head")

    def call(self, pieces, training=None):
        piece_shape = pieces.shape[2:]
        stacked = tf.reshape(pieces, [-1, *piece_shape])
        features = self.backbone(stacked, training=training)[FEATURE_ENDPOINT]
        joined = tf.reshape(features, [-1, self.num_pieces * features.shape[-1]])
        return {"features": joined, "logits": self.head(joined, training=training)}


class CubicPuzzleTask(VideoTask):
    """Space-Time Cubic Puzzles (Kim et al. 2019): permutation classification of 4 cuboids."""

    config_class = CubicPuzzleConfig
    config: CubicPuzzleConfig

    def __init__(self, config: CubicPuzzleConfig) -> None:
        super().__init__(config)
        self.permutations = puzzle_permutations()

    @property
    def num_classes(self) -> int:
        return len(self.permutations) * len(self.config.directions)

    def build_model(self) -> CuboidSetModel:
        config = self.config
        model = CuboidSetModel(self.build_backbone(), NUM_PIECES, self.num_classes,
                               config.head_hidden_units, synchronized_bn=config.synchronized_bn,
                               name="cubic_puzzle")
        # Built through its own call, so the encoder's variables are "backbone/...".
        model(self.dummy_inputs(), training=False)
        return model

    def dummy_inputs(self) -> tf.Tensor:
        config = self.config
        size = config.piece_size
        return tf.zeros([1, NUM_PIECES, config.piece_frames, size, size, 3])

    def build_inputs(self, input_context: tf.distribute.InputContext | None = None
                     ) -> tf.data.Dataset:
        config = self.config
        table = tf.constant(self.permutations, tf.int32)

        def puzzles(windows, seed):
            return make_cubic_puzzles(windows[:, 0], seed, table, config.directions,
                                      config.piece_jitter)

        return self.map_training_clips(puzzles, input_context)


TASKS.register("cubic_puzzle", CubicPuzzleTask)
