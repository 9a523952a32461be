"""Space-Time Cubic Puzzles: exact cuboids, labels that restore the clip, model, learning."""

import itertools
import math

import numpy as np
import pytest
import tensorflow as tf

from helpers import VIDEO_TINY, eager_losses_on_batch, seeded_first_batch
from selfsup.models.registry import ConfigError
from selfsup.tasks.cubic_puzzle import (
    CubicPuzzleConfig,
    CubicPuzzleTask,
    crop_pieces,
    cuboid_grid,
    make_cubic_puzzles,
    puzzle_permutations,
    select_pieces,
)


def numpy_cell(clips: np.ndarray, slot: int, cell: int) -> np.ndarray:
    """The cuboid of temporal slot ``slot`` and row-major spatial cell ``cell``, by slicing."""
    t, h, w = clips.shape[1] // 4, clips.shape[2] // 2, clips.shape[3] // 2
    row, column = divmod(cell, 2)
    return clips[:, slot * t:(slot + 1) * t, row * h:(row + 1) * h, column * w:(column + 1) * w]


def test_grid_cuboids_are_the_numpy_slices_and_reassemble_the_clip():
    clips = np.random.default_rng(0).uniform(size=(2, 8, 6, 10, 3)).astype(np.float32)
    grid = cuboid_grid(tf.constant(clips)).numpy()
    assert grid.shape == (2, 4, 4, 2, 3, 5, 3)
    for slot in range(4):
        for cell in range(4):
            np.testing.assert_array_equal(grid[:, slot, cell], numpy_cell(clips, slot, cell))
    # Reassembled by numpy: slots along time, cells as a 2 × 2 mosaic.
    rows = [np.concatenate([grid[:, :, 2 * r], grid[:, :, 2 * r + 1]], axis=4) for r in (0, 1)]
    mosaic = np.concatenate(rows, axis=3)                      # [b, slot, t', h, w, c]
    np.testing.assert_array_equal(mosaic.reshape(clips.shape), clips)


def test_spatial_and_temporal_tuples_are_the_right_four_cuboids():
    clips = np.random.default_rng(1).uniform(size=(3, 8, 4, 4, 1)).astype(np.float32)
    directions = tf.constant([0, 1, 1])      # spatial, temporal, temporal
    positions = tf.constant([2, 3, 0])       # slot 2; cell 3; cell 0
    pieces = select_pieces(cuboid_grid(tf.constant(clips)), directions, positions).numpy()
    for i in range(4):
        np.testing.assert_array_equal(pieces[0, i], numpy_cell(clips, 2, i)[0])
        np.testing.assert_array_equal(pieces[1, i], numpy_cell(clips, i, 3)[1])
        np.testing.assert_array_equal(pieces[2, i], numpy_cell(clips, i, 0)[2])


def test_jittered_pieces_are_windows_of_their_cells():
    pieces = np.random.default_rng(2).uniform(size=(2, 4, 2, 6, 6, 3)).astype(np.float32)
    offsets = np.random.default_rng(3).integers(0, 3, size=(2, 4, 2))
    cropped = crop_pieces(tf.constant(pieces), tf.constant(offsets), 4).numpy()
    for b, i in itertools.product(range(2), range(4)):
        top, left = offsets[b, i]
        np.testing.assert_array_equal(cropped[b, i], pieces[b, i, :, top:top + 4, left:left + 4])


def test_permutations_are_all_24_in_itertools_order():
    np.testing.assert_array_equal(puzzle_permutations(),
                                  np.array(list(itertools.permutations(range(4)))))


def test_putting_each_piece_back_by_the_label_restores_the_clip():
    clips = np.random.default_rng(4).uniform(size=(16, 8, 8, 8, 3)).astype(np.float32)
    table = puzzle_permutations()
    shuffled, labels = make_cubic_puzzles(tf.constant(clips), tf.constant([5, 6], tf.int64),
                                          tf.constant(table))
    shuffled, labels = shuffled.numpy(), labels.numpy()
    assert shuffled.shape == (16, 4, 2, 4, 4, 3) and labels.min() >= 0 and labels.max() < 48
    directions = labels // 24
    assert set(directions) == {0, 1}  # both kinds of puzzle occur in a batch of 16
    for b in range(16):
        permutation = table[labels[b] % 24]
        pieces = np.empty_like(shuffled[b])
        pieces[permutation] = shuffled[b]           # slot i goes back to piece perm[i]
        if directions[b] == 0:   # spatial: a 2 × 2 mosaic of one temporal slot
            mosaic = np.concatenate([np.concatenate(pieces[0:2], axis=2),
                                     np.concatenate(pieces[2:4], axis=2)], axis=1)
            assert any(np.array_equal(mosaic, clips[b, 2 * s:2 * s + 2]) for s in range(4))
        else:                    # temporal: one spatial cell through the whole clip
            column = np.concatenate(pieces, axis=0)
            assert any(np.array_equal(column, clips[b, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4])
                       for r in range(2) for c in range(2))
    # One direction only: 24 classes; the same seed gives the same puzzles.
    again, temporal = make_cubic_puzzles(tf.constant(clips), tf.constant([5, 6], tf.int64),
                                         tf.constant(table), ("temporal",))
    assert temporal.numpy().max() < 24
    _, repeat = make_cubic_puzzles(tf.constant(clips), tf.constant([5, 6], tf.int64),
                                   tf.constant(table), ("temporal",))
    np.testing.assert_array_equal(repeat.numpy(), temporal.numpy())


def test_jittered_pieces_lie_inside_the_cells_the_label_names():
    """With jitter 2, every piece put back by its label is a 4 × 4 window (offset 0..2) of the
    cell it came from: the same slot for a spatial puzzle, the same cell for a temporal one."""
    clips = np.random.default_rng(7).uniform(size=(6, 8, 12, 12, 3)).astype(np.float32)
    table = puzzle_permutations()
    shuffled, labels = make_cubic_puzzles(tf.constant(clips), tf.constant([1, 9], tf.int64),
                                          tf.constant(table), jitter=2)
    shuffled, labels = shuffled.numpy(), labels.numpy()
    assert shuffled.shape == (6, 4, 2, 4, 4, 3)

    def windows_of(cuboid):
        return [cuboid[:, y:y + 4, x:x + 4] for y in range(3) for x in range(3)]

    for b in range(6):
        pieces = np.empty_like(shuffled[b])
        pieces[table[labels[b] % 24]] = shuffled[b]
        # (slot, cell) of piece k for each candidate position of the puzzle.
        if labels[b] // 24 == 0:
            layouts = [[(position, k) for k in range(4)] for position in range(4)]
        else:
            layouts = [[(k, position) for k in range(4)] for position in range(4)]
        assert any(all(any(np.array_equal(pieces[k], window)
                           for window in windows_of(numpy_cell(clips, *layout[k])[b]))
                       for k in range(4))
                   for layout in layouts), b


def test_config_geometry_and_validation():
    paper = CubicPuzzleConfig()                     # 16 frames of 112 px
    assert (paper.cell_size, paper.piece_jitter, paper.piece_size, paper.piece_frames) == \
        (56, 7, 49, 4)
    tiny = CubicPuzzleConfig(**VIDEO_TINY)          # 8 frames of 32 px: 16 px, no jitter
    assert (tiny.piece_jitter, tiny.piece_size, tiny.piece_frames) == (0, 16, 2)
    assert CubicPuzzleTask(tiny).num_classes == 48
    assert CubicPuzzleTask(CubicPuzzleConfig(puzzle_directions="spatial")).num_classes == 24
    with pytest.raises(ConfigError, match="multiple of 4"):
        CubicPuzzleConfig(clip_length=6)
    with pytest.raises(ConfigError, match="puzzle_directions"):
        CubicPuzzleConfig(puzzle_directions="diagonal")
    with pytest.raises(ConfigError, match="jitter"):
        CubicPuzzleConfig(jitter=56)


def test_model_encodes_each_piece_with_the_backbone_and_concatenates_in_order():
    task = CubicPuzzleTask(CubicPuzzleConfig(**VIDEO_TINY))
    model = task.build_model()
    # Built through the model's own call: the encoder's variables sit under "backbone/".
    assert all(v.path.startswith("cubic_puzzle/backbone/") for v in model.backbone.variables)
    assert {v.path.split("/")[1] for v in model.variables} == {"backbone", "head"}
    pieces = np.random.default_rng(5).uniform(size=(2, 4, 2, 16, 16, 3)).astype(np.float32)
    outputs = model(pieces, training=False)
    assert outputs["logits"].shape == (2, 48)
    pooled = [model.backbone(pieces[:, i], training=False)["pool"].numpy() for i in range(4)]
    np.testing.assert_allclose(outputs["features"].numpy(), np.concatenate(pooled, axis=1),
                               atol=1e-5)


def test_loss_falls_on_a_batch_of_real_puzzles():
    task = CubicPuzzleTask(CubicPuzzleConfig(global_batch_size=4, synchronized_bn=False,
                                             **VIDEO_TINY))
    batch = seeded_first_batch(task)
    pieces, labels = batch
    assert pieces.shape == (4, 4, 2, 16, 16, 3) and labels.shape == (4,)
    # Real footage: the four pieces of a puzzle are different pictures.
    assert np.abs(pieces[:, 0].numpy() - pieces[:, 1].numpy()).max() > 0.05
    losses = eager_losses_on_batch(task, batch, steps=8, learning_rate=0.05)
    # Chance level: log 48 ≈ 3.87.
    assert abs(losses[0] - math.log(48)) < 1.5 and losses[-1] < losses[0] - 1.0, losses


@pytest.mark.slow
def test_short_pretrain_learns_the_puzzle_and_keeps_clip_retrieval(tmp_path):
    """1000 SGD steps at 16 puzzles (64 pieces of 2 × 16 × 16) per step on the sample clips
    (VIDEO_TINY, both directions: 48 classes), then the video probe (4 clips per video) of the
    trained and the random-init encoder: 1.2–2.3 min on the shared 2-core machine. Measured: loss
    means 3.94, 3.51, 2.95, 2.77, 2.56 (chance log 48 ≈ 3.87; accuracy ≈ 15 %; spatial puzzles
    alone reach 72 % at this budget, the temporal ones of 2-frame pieces are the hard half); on
    the 32 test clips, ``pool`` triplet retrieval 0.932 vs 0.916 random init, nearest neighbour
    0.94 vs 0.81, but clip top-1 81.3 vs 84.4 % and best video top-1 100 vs 100 %. So at this
    budget the puzzle is learnt but the encoder does not clearly beat random init: asserted are
    the loss well below chance and retrieval no worse than random init."""
    from helpers import pretrain_and_probe_video, probe_summary

    config = CubicPuzzleConfig(global_batch_size=16, **VIDEO_TINY)
    results = pretrain_and_probe_video("cubic_puzzle", config, tmp_path, train_steps=1000,
                                       learning_rate=0.05)
    summary = probe_summary(results)
    print("cubic_puzzle probe", summary, results["losses"])
    assert results["losses"][-1] < math.log(48) - 0.8, results["losses"]
    assert summary["trained"]["pool_triplet"] > summary["random_init"]["pool_triplet"] - 0.01, \
        summary
