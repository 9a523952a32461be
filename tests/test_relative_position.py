"""Relative position: labels ↔ neighbour offsets from pixel coordinates, colour drop, training."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import losses_on_one_batch, pretrain_and_probe, train_on_replicas_and_restore
from selfsup.datasets.patches import TileGrid, drop_color_channels
from selfsup.models.registry import ConfigError
from selfsup.tasks import task_class
from selfsup.tasks.patch_model import PatchSetModel
from selfsup.tasks.relative_position import (
    NEIGHBOUR_OFFSETS,
    NEIGHBOURHOOD_GROUPS,
    RelativePositionConfig,
    make_neighbourhoods,
    make_patch_pairs,
    relative_position_grid,
)

# Hand-worked (row, col) step of the neighbour from the centre for labels 0..7.
OFFSETS = {0: (-1, -1), 1: (-1, 0), 2: (-1, 1), 3: (0, -1), 4: (0, 1), 5: (1, -1), 6: (1, 0),
           7: (1, 1)}
# Without jitter (6 px cells, 4 px patches, gap 2) patch corners sit at (6r + 1, 6c + 1): the
# neighbour's corner for each label, around the centre's (7, 7).
HAND_WORKED_CORNERS = {0: (1, 1), 1: (1, 7), 2: (1, 13), 3: (7, 1), 4: (7, 13), 5: (13, 1),
                       6: (13, 7), 7: (13, 13)}


class PatchMeanEncoder(keras.Model):
    """A weightless stand-in encoder: ``"pool"`` = a patch's mean pixel (mean row, col, 0)."""

    def call(self, images, training=None):
        return {"pool": tf.reduce_mean(images, axis=[1, 2])}


def coordinate_images(batch: int, size: int) -> np.ndarray:
    """Images whose pixel (r, c) holds (r, c, 0): every pixel says where it came from."""
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    image = np.stack([rows, cols, np.zeros_like(rows)], axis=-1).astype(np.float32)
    return np.broadcast_to(image, (batch, size, size, 3)).copy()


def patch_origin(patch: np.ndarray) -> tuple[int, int]:
    """Source (row, col) of a patch's top-left pixel, after checking it is an exact crop."""
    top, left = int(patch[0, 0, 0]), int(patch[0, 0, 1])
    size = patch.shape[0]
    np.testing.assert_array_equal(patch[:, :, 0], np.repeat(top + np.arange(size)[:, None],
                                                            size, axis=1))
    np.testing.assert_array_equal(patch[:, :, 1], np.repeat(left + np.arange(size)[None, :],
                                                            size, axis=0))
    return top, left


def test_pair_labels_give_the_hand_worked_neighbour_coordinates():
    grid = TileGrid(3, cell_size=6, tile_size=4, gap=2)
    assert grid.jitter == 0
    pairs, labels = make_patch_pairs(tf.constant(coordinate_images(64, 18)), tf.constant([0, 1]),
                                     grid, normalization="none", color_augmentation="none")
    pairs, labels = pairs.numpy(), labels.numpy()
    assert pairs.shape == (64, 2, 4, 4, 3) and set(labels.tolist()) == set(range(8))
    for b in range(64):
        assert patch_origin(pairs[b, 0]) == (7, 7)
        assert patch_origin(pairs[b, 1]) == HAND_WORKED_CORNERS[int(labels[b])]


def test_neighbourhood_rows_pair_the_centre_with_the_labelled_neighbour():
    """All-neighbours mode end to end: pipeline labels, the model's groups and its row order."""
    grid = TileGrid(3, cell_size=6, tile_size=4, gap=2)
    tiles, labels = make_neighbourhoods(tf.constant(coordinate_images(3, 18)),
                                        tf.constant([0, 2]), grid, normalization="none",
                                        color_augmentation="none")
    assert tiles.shape == (3, 9, 4, 4, 3)
    model = PatchSetModel(PatchMeanEncoder(), 9, NEIGHBOURHOOD_GROUPS, 8)
    features = model(tiles)["features"].numpy()  # [3 · 8, 2 · 3]: (centre, neighbour) means
    assert features.shape == (24, 6)
    for row, label in enumerate(labels.numpy()):
        # A 4 px patch's mean coordinate is its corner + 1.5.
        np.testing.assert_allclose(features[row, :2], [7 + 1.5, 7 + 1.5])
        np.testing.assert_allclose(features[row, 3:5],
                                   np.array(HAND_WORKED_CORNERS[int(label)]) + 1.5)
    np.testing.assert_array_equal(labels.numpy(), np.tile(np.arange(8), 3))


def test_jittered_pairs_keep_their_direction_and_gap():
    """The default 28 px geometry at its 54 px working size: 12 px patches, gap ≥ 4, jitter 2."""
    grid = relative_position_grid(RelativePositionConfig())
    assert grid == TileGrid(3, 18, 12, 4)
    assert dict(enumerate(NEIGHBOUR_OFFSETS)) == OFFSETS
    pairs, labels = make_patch_pairs(tf.constant(coordinate_images(256, 54)),
                                     tf.constant([3, 1]), grid, normalization="none",
                                     color_augmentation="none")
    pairs, labels = pairs.numpy(), labels.numpy()
    separations = []
    for b in range(len(pairs)):
        centre, neighbour = np.array(patch_origin(pairs[b, 0])), np.array(
            patch_origin(pairs[b, 1]))
        step = np.array(OFFSETS[int(labels[b])])
        assert np.all(np.abs(centre - 18 - 2) <= 2)  # the centre cell's corner, jittered
        for axis in range(2):
            if step[axis] == 0:
                assert abs(neighbour[axis] - centre[axis]) <= grid.jitter
            else:  # beyond the centre patch on that side, with at least `gap` px between
                far, near = (neighbour, centre) if step[axis] > 0 else (centre, neighbour)
                separations.append(far[axis] - (near[axis] + 12))
    assert min(separations) == grid.gap  # never touching; the bound is reached
    assert max(separations) == grid.gap + 2 * grid.jitter


def test_color_dropping_keeps_one_channel_and_fills_the_others_with_faint_noise():
    rng = np.random.default_rng(0)
    patches = rng.uniform(size=(300, 2, 8, 8, 3)).astype(np.float32)
    dropped = drop_color_channels(tf.constant(patches), tf.constant([5, 5])).numpy()
    kept_counts = np.zeros(3)
    for b in range(300):
        for p in range(2):
            same = [np.array_equal(dropped[b, p, ..., k], patches[b, p, ..., k]) for k in range(3)]
            assert sum(same) == 1
            kept = same.index(True)
            kept_counts[kept] += 1
            source = patches[b, p, ..., kept]
            for k in range(3):
                if k != kept:
                    noise = dropped[b, p, ..., k] - source.mean()
                    assert abs(noise.mean()) < 0.01 * source.std()
                    assert 0.002 * source.std() < noise.std() < 0.02 * source.std()
    assert np.all(kept_counts > 150)  # each channel kept about a third of the time


def test_grayscale_option_gives_gray_patches_of_colour_images():
    rng = np.random.default_rng(1)
    images = rng.uniform(size=(4, 54, 54, 3)).astype(np.float32)
    pairs, _ = make_patch_pairs(tf.constant(images), tf.constant([0, 3]),
                                relative_position_grid(RelativePositionConfig()),
                                color_augmentation="grayscale")
    pairs = pairs.numpy()
    np.testing.assert_array_equal(pairs[..., 0], pairs[..., 1])
    np.testing.assert_array_equal(pairs[..., 0], pairs[..., 2])
    assert pairs[..., 0].std() > 0.05


def test_pipeline_gives_patch_pairs_or_neighbourhoods_of_fashion_mnist():
    task = task_class("relative_position")(RelativePositionConfig(global_batch_size=16))
    pairs, labels = next(iter(task.build_inputs()))
    assert pairs.shape == (16, 2, 12, 12, 3) and pairs.dtype == tf.float32
    assert labels.dtype == tf.int64
    assert 0 <= int(tf.reduce_min(labels)) and int(tf.reduce_max(labels)) < 8
    task = task_class("relative_position")(RelativePositionConfig(global_batch_size=16,
                                                                  all_neighbours=True))
    patches, labels = next(iter(task.build_inputs()))
    assert patches.shape == (16, 9, 12, 12, 3)
    np.testing.assert_array_equal(labels.numpy(), np.tile(np.arange(8), 16))


def test_config_errors():
    with pytest.raises(ConfigError, match="gap"):
        RelativePositionConfig(gap=0)
    with pytest.raises(ConfigError, match="fit in cell_size"):
        RelativePositionConfig(cell_size=12, patch_size=10, gap=3)
    with pytest.raises(ConfigError, match="color_augmentation"):
        RelativePositionConfig(color_augmentation="sepia")


def test_loss_goes_down_on_fashion_mnist_pairs():
    task = task_class("relative_position")(RelativePositionConfig(global_batch_size=32,
                                                                  synchronized_bn=False))
    losses = losses_on_one_batch(task)
    assert abs(losses[0] - np.log(8)) < 1.0  # starts near chance
    assert losses[-1] < 0.5 * losses[0], losses


def test_two_replicas_train_through_the_trainer_and_restore_the_encoder(
        tmp_path, two_replica_strategy):
    encoder = train_on_replicas_and_restore(
        "relative_position", RelativePositionConfig(global_batch_size=8), tmp_path / "run",
        two_replica_strategy)
    assert encoder(tf.zeros([2, 28, 28, 3]), training=False)["pool"].shape == (2, 64)


@pytest.mark.slow
def test_short_pretraining_beats_a_random_init_encoder(tmp_path):
    results = pretrain_and_probe("relative_position", tmp_path / "rp", train_steps=2200,
                                 batch_size=64, learning_rate=0.1)
    print("relative_position probe", results["best"], "losses", results["losses"])
    assert results["losses"][-1] < results["losses"][0]
    # Measured: best layer 86.1 % (res3) trained vs 84.1 % random init (2200 steps of one pair
    # per image, ~2.5 CPU-min). Random-init encoders vary by ±0.3 over seeds (REFERENCE), so a
    # 1-point margin is well outside that noise and still half the measured gain.
    assert results["best"]["trained"] > results["best"]["random_init"] + 1.0
