"""Jigsaw puzzles: tile geometry from pixel coordinates, the permutation convention, training."""

import numpy as np
import pytest
import tensorflow as tf

from helpers import losses_on_one_batch, pretrain_and_probe, train_on_replicas_and_restore
from selfsup.datasets.patches import TileGrid, grid_tiles, normalize_patches, random_grayscale
from selfsup.models.registry import ConfigError
from selfsup.tasks import task_class
from selfsup.tasks.jigsaw import JigsawConfig, jigsaw_grid, make_puzzles
from selfsup.tasks.permutations import generate_permutation_set


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Permutation sets go to a per-test cache, never the user's."""
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))


def coordinate_images(batch: int, size: int) -> np.ndarray:
    """Images whose pixel (r, c) holds (r, c, 0): every pixel says where it came from."""
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    image = np.stack([rows, cols, np.zeros_like(rows)], axis=-1).astype(np.float32)
    return np.broadcast_to(image, (batch, size, size, 3)).copy()


def tile_origin(tile: np.ndarray) -> tuple[int, int]:
    """Source (row, col) of a tile's top-left pixel, after checking it is an exact crop."""
    top, left = int(tile[0, 0, 0]), int(tile[0, 0, 1])
    size = tile.shape[0]
    np.testing.assert_array_equal(tile[:, :, 0], np.repeat(top + np.arange(size)[:, None],
                                                           size, axis=1))
    np.testing.assert_array_equal(tile[:, :, 1], np.repeat(left + np.arange(size)[None, :],
                                                           size, axis=0))
    return top, left


@pytest.mark.parametrize("image_size", [48, 100])
def test_tiles_never_touch_and_stay_in_their_cells(image_size):
    """Pixel values give each tile's true position; adjacent tiles keep ≥ gap px between them.

    At 48 px the image is the grid (16 px cells, 12 px tiles, jitter 0..3); at 100 px the 99 px
    grid is cropped at random (33 px cells, 25 px tiles, jitter 0..7).
    """
    grid = jigsaw_grid(JigsawConfig(image_size=image_size))
    assert grid.gap == 1 and grid.jitter >= 3
    images = tf.constant(coordinate_images(64, image_size))
    tiles, _ = grid_tiles(images, grid, tf.constant([1, 2]))
    tiles = tiles.numpy()
    t = grid.tile_size
    gaps = []
    for b in range(len(tiles)):
        origins = np.array([tile_origin(tiles[b, k]) for k in range(9)]).reshape(3, 3, 2)
        # In its cell, up to the random crop of the grid from the image (0 at 48 px, 0..1 px
        # at 100 px) that shifts every tile alike.
        crop = image_size - grid.side
        for r in range(3):
            for c in range(3):
                for axis, cell in ((0, r), (1, c)):
                    assert cell * grid.cell_size <= origins[r, c, axis]
                    assert origins[r, c, axis] + t <= (cell + 1) * grid.cell_size + crop
        gaps += list((origins[:, 1:, 1] - (origins[:, :-1, 1] + t)).ravel())  # left → right
        gaps += list((origins[1:, :, 0] - (origins[:-1, :, 0] + t)).ravel())  # top → bottom
    # Never touching, and the bound is tight: the extreme jitters do occur.
    assert min(gaps) == grid.gap
    assert max(gaps) == grid.gap + 2 * grid.jitter
    assert max(tile_origin(tiles[b, 0])[0] for b in range(len(tiles))) > min(
        tile_origin(tiles[b, 0])[0] for b in range(len(tiles)))


def test_reassembling_tiles_by_the_label_restores_the_grid():
    """Position i of the shuffled input holds the tile of cell perm[label][i]."""
    grid = TileGrid(3, 16, 12, 1)
    perms = generate_permutation_set(100, seed=0)
    images = tf.constant(coordinate_images(32, 48))
    shuffled, labels = make_puzzles(images, tf.constant([4, 2]), tf.constant(perms), grid,
                                    normalization="none", grayscale_probability=0.0)
    shuffled, labels = shuffled.numpy(), labels.numpy()
    assert shuffled.shape == (32, 9, 12, 12, 3) and labels.dtype == np.int64
    assert len(set(labels.tolist())) > 10
    for b in range(len(shuffled)):
        restored = np.zeros_like(shuffled[b])
        for position in range(9):
            restored[perms[labels[b]][position]] = shuffled[b, position]
        for cell in range(9):
            top, left = tile_origin(restored[cell])
            assert (top // 16, left // 16) == divmod(cell, 3)
        # Read without the label, the input is in the permuted order, not the grid's.
        order = [3 * (tile_origin(tile)[0] // 16) + tile_origin(tile)[1] // 16
                 for tile in shuffled[b]]
        assert order == perms[labels[b]].tolist()


def test_per_tile_normalisation_equalises_tile_statistics():
    rng = np.random.default_rng(0)
    tiles = rng.uniform(0, 1, size=(3, 9, 5, 5, 3)).astype(np.float32)
    tiles[0, 2] = 0.7  # a flat tile
    tiles *= rng.uniform(0.2, 1.0, size=(3, 9, 1, 1, 1)).astype(np.float32)
    per_tile = normalize_patches(tf.constant(tiles), "tile").numpy()
    for b in range(3):
        for k in range(9):
            if (b, k) == (0, 2):
                np.testing.assert_allclose(per_tile[b, k], 0.5, atol=1e-4)
                continue
            assert abs(per_tile[b, k].mean() - 0.5) < 1e-5
            assert abs(per_tile[b, k].std() - 0.25) < 1e-4
    per_image = normalize_patches(tf.constant(tiles), "image").numpy()
    for b in range(3):
        assert abs(per_image[b].mean() - 0.5) < 1e-5 and abs(per_image[b].std() - 0.25) < 1e-4
        # One affine map per image: tile contrasts keep their ratios.
        expected = (tiles[b] - tiles[b].mean()) / tiles[b].std() * 0.25 + 0.5
        np.testing.assert_allclose(per_image[b], expected, atol=1e-4)


def test_grayscale_turns_whole_images_gray_with_the_given_probability():
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(400, 4, 4, 3)).astype(np.float32)
    out = random_grayscale(tf.constant(images), 0.66, tf.constant([0, 7])).numpy()
    luma = images @ np.array([0.2989, 0.5870, 0.1140], np.float32)
    gray = np.array([np.allclose(out[i], luma[i][..., None], atol=1e-6) for i in range(400)])
    kept = np.array([np.array_equal(out[i], images[i]) for i in range(400)])
    assert np.all(gray ^ kept)  # every image entirely one or the other
    assert 0.6 < gray.mean() < 0.72


def test_pipeline_gives_shuffled_fashion_mnist_tiles_reproducibly():
    task = task_class("jigsaw")(JigsawConfig(global_batch_size=8))
    batches = iter(task.build_inputs())
    tiles, labels = next(batches)
    # Every batch draws its own labels (a per-batch seed), reproducibly across pipelines.
    assert not np.array_equal(labels.numpy(), next(batches)[1].numpy())
    assert tiles.shape == (8, 9, 12, 12, 3) and tiles.dtype == tf.float32
    assert labels.dtype == tf.int64
    assert 0 <= int(tf.reduce_min(labels)) and int(tf.reduce_max(labels)) < 100
    again, again_labels = next(iter(task.build_inputs()))
    np.testing.assert_array_equal(tiles.numpy(), again.numpy())
    np.testing.assert_array_equal(labels.numpy(), again_labels.numpy())
    # Per-tile normalisation: mean 0.5 and std 0.25, less for (near-)flat background tiles
    # whose std is below the 1e-3 floor and is not blown up.
    stds = tiles.numpy().reshape(8, 9, -1).std(-1)
    means = tiles.numpy().reshape(8, 9, -1).mean(-1)
    np.testing.assert_allclose(means, 0.5, atol=1e-5)
    assert np.all(stds < 0.25 + 1e-4) and np.mean(np.abs(stds - 0.25) < 1e-4) > 0.5


def test_geometry_defaults_and_config_errors():
    assert jigsaw_grid(JigsawConfig()) == TileGrid(3, 16, 12, 1)
    assert jigsaw_grid(JigsawConfig(image_size=96)) == TileGrid(3, 32, 24, 1)
    with pytest.raises(ConfigError, match="gap"):
        JigsawConfig(gap=0)
    with pytest.raises(ConfigError, match="fit in cell_size"):
        JigsawConfig(cell_size=16, tile_size=16)
    with pytest.raises(ConfigError, match="num_permutations"):
        JigsawConfig(num_permutations=50)


def test_default_and_alexnet_backbones_take_the_tiles():
    for backbone in ("resnet_small", "alexnet_bn"):
        task = task_class("jigsaw")(JigsawConfig(backbone=backbone, synchronized_bn=False))
        outputs = task.build_model()(task.dummy_inputs(), training=False)
        assert outputs["logits"].shape == (1, 100)
    # AlexNet's ImageNet stem (built for 96 px images) cannot take 24 px tiles: a config error.
    task = task_class("jigsaw")(JigsawConfig(backbone="alexnet", image_size=96,
                                             synchronized_bn=False))
    with pytest.raises(ConfigError, match="cannot encode 24 px.*at least 57 px"):
        task.build_model()


def test_loss_goes_down_on_fashion_mnist_puzzles():
    task = task_class("jigsaw")(JigsawConfig(global_batch_size=16, synchronized_bn=False))
    losses = losses_on_one_batch(task)
    assert abs(losses[0] - np.log(100)) < 1.0  # starts near chance
    assert losses[-1] < 0.5 * losses[0], losses


def test_two_replicas_train_through_the_trainer_and_restore_the_encoder(
        tmp_path, two_replica_strategy):
    train_on_replicas_and_restore("jigsaw", JigsawConfig(global_batch_size=8), tmp_path / "run",
                                  two_replica_strategy)


@pytest.mark.slow
def test_short_pretraining_beats_a_random_init_encoder(tmp_path):
    results = pretrain_and_probe("jigsaw", tmp_path / "jigsaw", train_steps=600, batch_size=64,
                                 learning_rate=0.1)
    print("jigsaw probe", results["best"], "losses", results["losses"])
    assert results["losses"][-1] < results["losses"][0]
    # Measured: best layer 86.1 % (res2) trained vs 84.1 % random init (600 steps, ~2.5
    # CPU-min). Random-init encoders vary by ±0.3 over seeds (REFERENCE), so a 1-point margin
    # is well outside that noise and still half the measured gain.
    assert results["best"]["trained"] > results["best"]["random_init"] + 1.0
