"""Pictures of a frozen encoder: grid sizes worked out by hand from the grid rules, numbers
against numpy references, and every picture drawn from a real (briefly trained) checkpoint."""

import math
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from matplotlib import colormaps

from helpers import ONE_STAGE, SUBSET, fashion_mnist_folder, train_in_process
from selfsup.datasets import open_source
from selfsup.models.registry import ConfigError
from selfsup.tasks import TaskConfig, task_class
from selfsup.tasks.checkpoints import restore_encoder
from selfsup.tasks.eval_pictures import (
    OTHER_CLASS_COLOUR,
    SAME_CLASS_COLOUR,
    embed_2d,
    feature_map_grid,
    kernel_grid,
    kernel_picture,
    make_pictures,
    nearest_neighbour_grid,
    nearest_neighbours,
    write_pictures,
)

CURVES = {"trained": {"stem": 84.0, "res2": 86.5, "pool": 71.0},
          "random_init": {"stem": 84.5, "res2": 85.0, "pool": 62.0}}
PAD = 2  # tasks/pictures.GRID_PADDING: white pixels around every cell


def cell(grid: np.ndarray, row: int, column: int, height: int, width: int) -> np.ndarray:
    """The pixels of one grid cell (cells of height × width, PAD px of white around each)."""
    top, left = PAD + row * (height + PAD), PAD + column * (width + PAD)
    return grid[top:top + height, left:left + width]


@pytest.fixture(scope="module")
def trained_encoder(tmp_path_factory):
    """The one-stage resnet_small after 2 RotNet steps on Fashion-MNIST, restored from its
    checkpoint."""
    model_dir = tmp_path_factory.mktemp("rotnet")
    task = task_class("rotnet")(TaskConfig(backbone_kwargs=ONE_STAGE, global_batch_size=8,
                                           synchronized_bn=False, train_split=SUBSET))
    losses, _ = train_in_process(task, "rotnet", model_dir, train_steps=2, log_every=1,
                                 checkpoint_every=2, learning_rate=0.05, weight_decay=0.0)
    assert len(losses) == 2 and all(np.isfinite(losses))
    encoder, _ = restore_encoder(model_dir)
    return encoder


@pytest.fixture(scope="module")
def drawn(trained_encoder, tmp_path_factory):
    """make_pictures on the restored encoder, called as a plain function (as a SavedModel's
    encoder is) with the kernels taken from the Keras model; written with write_pictures."""
    lines = []

    def frozen(images, training=False):
        return trained_encoder(images, training=training)

    folder = fashion_mnist_folder(tmp_path_factory.mktemp("fashion_mnist"), 400, 250)
    pictures = make_pictures(frozen, open_source(f"image_folder:{folder}"), image_size=28,
                             kernels_from=trained_encoder, probe_curves=CURVES, queries=4,
                             neighbours=5, bank_examples=300, embedding_examples=200,
                             feature_map_images=2, feature_map_channels=4, seed=0,
                             log=lines.append)
    out_dir = tmp_path_factory.mktemp("pictures")
    paths = write_pictures(out_dir, pictures, summary_dir=out_dir / "summaries", step=3)
    return pictures, paths, out_dir / "summaries", lines


def test_every_picture_of_a_trained_checkpoint_is_a_png_of_the_hand_computed_size(drawn):
    pictures, paths, _, lines = drawn
    # Kernels: 8 stem kernels 3×3 upsampled ×8 (to ≥ 24 px) = 24 px tiles, ceil(√8) = 3 columns
    # and 3 rows: 3·(24+2)+2 = 80. Grids of 28 px images are enlarged ×2 (to ≥ 56 px): cells
    # of 56 px, 58 with padding. Feature maps: 2 images × 2 endpoints (stem, res2) = 4 rows,
    # 1 + 4 channels = 5 columns. Neighbours: 4 queries, 1 + 5 columns. Plots: fixed sizes.
    expected = {"kernels": (80, 80), "feature_maps": (4 * 58 + 2, 5 * 58 + 2),
                "nearest_neighbours": (4 * 58 + 2, 6 * 58 + 2), "embedding": (800, 800),
                "probe_curve": (600, 900)}
    assert list(pictures) == list(expected)
    for name, (height, width) in expected.items():
        assert paths[name] == paths[name].parent / f"{name}.png"
        decoded = tf.io.decode_png(paths[name].read_bytes(), channels=3).numpy()
        assert decoded.shape == (height, width, 3), name
        np.testing.assert_array_equal(decoded, pictures[name], err_msg=name)
        # Not blank: a spread of pixel values and many distinct colours.
        assert decoded.std() > 20, (name, decoded.std())
        packed = decoded.astype(np.int32) @ np.array([1 << 16, 1 << 8, 1])
        assert len(np.unique(packed)) > 20, name
    assert "pictures: kernels of stem_conv" in lines
    assert any("retrieval and embedding use pool" in line for line in lines)


def test_kernel_grid_of_the_trained_stem_maps_each_kernel_from_0_to_255(trained_encoder, drawn):
    kernel = next(v for v in trained_encoder.variables
                  if v.path.endswith("stem_conv/kernel")).numpy()
    assert kernel.shape == (3, 3, 3, 8)
    grid = kernel_grid(trained_encoder)
    np.testing.assert_array_equal(grid, drawn[0]["kernels"])
    for j in range(8):
        tile = cell(grid, j // 3, j % 3, 24, 24)
        weights = kernel[..., j]
        low, high = weights.min(), weights.max()
        expected = np.zeros((24, 24, 3), np.uint8)
        for y in range(24):
            for x in range(24):
                for channel in range(3):
                    value = (weights[y // 8, x // 8, channel] - low) / (high - low)
                    expected[y, x, channel] = np.round(value * 255)
        np.testing.assert_array_equal(tile, expected, err_msg=f"kernel {j}")
        assert tile.min() == 0 and tile.max() == 255
    assert (cell(grid, 2, 2, 24, 24) == 255).all()  # the ninth cell is empty


def test_kernel_grid_of_a_one_channel_conv3d_shows_the_middle_time_slice_in_gray():
    model = keras.Sequential([keras.Input((5, 6, 6, 1)), keras.layers.Conv3D(2, 3)])
    kernel = np.arange(3 * 3 * 3 * 1 * 2, dtype=np.float32).reshape(3, 3, 3, 1, 2) ** 2
    kernel[1, ..., 1] = 7.0  # the second kernel is constant in the middle slice
    model.layers[0].kernel.assign(kernel)
    grid = kernel_grid(model)
    # 2 kernels: ceil(√2) = 2 columns, 1 row of 24 px tiles (3 px ×8).
    assert grid.shape == (26 + 2, 2 * 26 + 2, 3)
    middle = kernel[1, :, :, 0, 0]
    normalised = (middle - middle.min()) / (middle.max() - middle.min())
    expected = np.round(np.kron(normalised, np.ones((8, 8))) * 255)
    first = cell(grid, 0, 0, 24, 24)
    for channel in range(3):
        np.testing.assert_array_equal(first[..., channel], expected)
    # A constant kernel has no range: it shows as mid-gray (0.5 → 127.5, rounded to even 128).
    assert (cell(grid, 0, 1, 24, 24) == 128).all()


def test_kernel_grid_of_a_two_channel_conv_shows_each_input_channel_in_gray():
    model = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(2, 3)])
    kernel = np.random.default_rng(1).normal(size=(3, 3, 2, 2)).astype(np.float32)
    model.layers[0].kernel.assign(kernel)
    grid = kernel_grid(model, scale=1, padding=1)
    # 2 kernels × 2 input channels = 4 gray 3 px tiles, kernel-major; each kernel's 2 tiles
    # side by side: 2 · ceil(√2) = 4 columns, 1 row: 1·(3+1)+1 by 4·(3+1)+1.
    assert grid.shape == (5, 17, 3)
    for j in range(2):
        low, high = kernel[..., j].min(), kernel[..., j].max()  # one range per kernel
        for channel in range(2):
            left = 1 + 4 * (2 * j + channel)
            tile = grid[1:4, left:left + 3]
            expected = np.round((kernel[:, :, channel, j] - low) / (high - low) * 255)
            for rgb in range(3):
                np.testing.assert_array_equal(tile[..., rgb], expected)


def test_kernel_picture_is_skipped_with_a_log_line_without_keras_layers(trained_encoder):
    lines = []
    assert kernel_picture(lambda images, training=False: {}, log=lines.append) is None
    assert len(lines) == 1 and "kernels skipped" in lines[0] and "SavedModel" in lines[0]
    dense_only = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    assert kernel_picture(dense_only, log=lines.append) is None
    assert "no Conv2D or Conv3D" in lines[1]
    np.testing.assert_array_equal(kernel_picture(trained_encoder, log=lines.append),
                                  kernel_grid(trained_encoder))


def brute_force_ranking(queries, bank, k, own=None):
    """Bank indices by descending cosine similarity (ties: lower index), a double loop."""
    ranking = []
    for i, query in enumerate(queries):
        scored = []
        for j, row in enumerate(bank):
            if own is not None and own[i] == j:
                continue
            cosine = float(np.dot(query, row) / (np.linalg.norm(query) * np.linalg.norm(row)))
            scored.append((-cosine, j))
        ranking.append([j for _, j in sorted(scored)[:k]])
    return np.array(ranking)


def test_nearest_neighbours_equal_a_brute_force_cosine_ranking():
    rng = np.random.default_rng(3)
    queries, bank = rng.normal(size=(5, 6)), rng.normal(size=(40, 6))
    bank[17] = 4.0 * queries[2]  # query 2 "is" bank row 17 (scaled: cosine is scale-free)
    indices, similarities = nearest_neighbours(queries, bank, 7)
    np.testing.assert_array_equal(indices, brute_force_ranking(queries, bank, 7))
    assert indices[2, 0] == 17 and similarities[2, 0] == pytest.approx(1.0)
    for i in range(5):
        for rank in range(7):
            row = bank[indices[i, rank]]
            expected = queries[i] @ row / np.linalg.norm(queries[i]) / np.linalg.norm(row)
            assert similarities[i, rank] == pytest.approx(expected)
    own = [-1, -1, 17, -1, 0]
    indices, _ = nearest_neighbours(queries, bank, 7, query_bank_indices=own)
    np.testing.assert_array_equal(indices, brute_force_ranking(queries, bank, 7, own))
    assert 17 not in indices[2] and 0 not in indices[4]


def test_nearest_neighbours_break_ties_by_bank_order():
    # Hand-worked cosines of [1, 0]: 0, 1, 1, 1/√2, −1.
    bank = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 0.0], [1.0, 1.0], [-1.0, 0.0]])
    indices, similarities = nearest_neighbours(np.array([[1.0, 0.0]]), bank, 5)
    np.testing.assert_array_equal(indices, [[1, 2, 3, 0, 4]])
    np.testing.assert_allclose(similarities, [[1, 1, 1 / math.sqrt(2), 0, -1]], atol=1e-12)
    indices, _ = nearest_neighbours(np.array([[1.0, 0.0]]), bank, 4, query_bank_indices=[1])
    np.testing.assert_array_equal(indices, [[2, 3, 0, 4]])
    with pytest.raises(ConfigError, match="k must lie in"):
        nearest_neighbours(np.array([[1.0, 0.0]]), bank, 5, query_bank_indices=[1])


def test_nearest_neighbour_grid_shows_query_then_neighbours_framed_by_class():
    gray = np.ones((1, 6, 6, 1), np.float32) / 255
    queries = np.concatenate([30 * gray, 90 * gray])
    bank = np.concatenate([120 * gray, 150 * gray, 180 * gray, 210 * gray])
    # Cosines: query [1, 0] ranks bank 0 ([1, .1]) then 2 ([1, 1]); query [0, 1]: 1 then 2.
    query_x = np.array([[1.0, 0.0], [0.0, 1.0]])
    bank_x = np.array([[1.0, 0.1], [0.1, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    grid = nearest_neighbour_grid(queries, bank, query_x, bank_x, k=2,
                                  query_labels=np.array([0, 1]),
                                  bank_labels=np.array([0, 1, 1, 0]), scale=2, border=2)
    # 6 px images ×2 = 12 px cells: 2 rows · 14 + 2 and 3 columns · 14 + 2.
    assert grid.shape == (30, 44, 3)
    green = np.round(np.array(SAME_CLASS_COLOUR) * 255)
    red = np.round(np.array(OTHER_CLASS_COLOUR) * 255)
    expected = {(0, 1): (120, green), (0, 2): (180, red), (1, 1): (150, green),
                (1, 2): (180, green)}
    for row, query_value in enumerate((30, 90)):
        assert (cell(grid, row, 0, 12, 12) == query_value).all()
    for (row, column), (value, colour) in expected.items():
        pixels = cell(grid, row, column, 12, 12)
        assert (pixels[2:10, 2:10] == value).all(), (row, column)
        frame = np.ones((12, 12), bool)
        frame[2:10, 2:10] = False
        np.testing.assert_array_equal(pixels[frame], np.broadcast_to(colour, (80, 3)))


def test_feature_map_grid_shows_the_strongest_channels_normalised_and_resized():
    maps = np.zeros((1, 2, 2, 3), np.float32)
    maps[0, ..., 0] = [[0, 1], [2, 3]]  # mean 1.5
    maps[0, ..., 1] = 5.0  # mean 5, constant
    maps[0, ..., 2] = [[10, 0], [0, 0]]  # mean 2.5

    def encoder(images, training=False):
        return {"maps": tf.constant(maps), "pool": tf.reduce_mean(maps, axis=[1, 2])}

    image = np.full((1, 4, 4, 3), 60 / 255, np.float32)
    grid = feature_map_grid(encoder, image, channels=4)
    # One row (1 image × 1 four-dimensional endpoint), 1 + 4 columns of 4 px cells.
    assert grid.shape == (6 + 2, 5 * 6 + 2, 3)
    assert (cell(grid, 0, 0, 4, 4) == 60).all()

    def coloured(values):  # 2×2 normalised map → 4×4 (each value 2×2) viridis uint8
        return np.round(colormaps["viridis"](np.kron(values, np.ones((2, 2))))[..., :3] * 255)

    strongest_first = [np.zeros((2, 2)), [[1, 0], [0, 0]], [[0, 1 / 3], [2 / 3, 1]]]
    for column, values in enumerate(strongest_first, start=1):
        np.testing.assert_array_equal(cell(grid, 0, column, 4, 4), coloured(np.array(values)))
    assert (cell(grid, 0, 4, 4, 4) == 255).all()  # only 3 channels: the last cell is blank
    with pytest.raises(ConfigError, match="valid: maps"):
        feature_map_grid(encoder, image, endpoints=["pool"])


def test_tsne_keeps_planted_clusters_apart_and_is_seeded():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=10.0, size=(3, 60))
    features = np.concatenate([centre + rng.normal(size=(30, 60)) for centre in centres])
    labels = np.repeat(np.arange(3), 30)
    points = embed_2d(features, seed=1)
    assert points.shape == (90, 2)
    distances = ((points[:, None] - points[None]) ** 2).sum(-1)
    np.fill_diagonal(distances, np.inf)
    assert (labels[distances.argmin(axis=1)] == labels).all()
    np.testing.assert_array_equal(embed_2d(features, seed=1), points)
    with pytest.raises(ConfigError, match="tsne, pca"):
        embed_2d(features, method="umap")


def count_near(picture: np.ndarray, colour, tolerance: int = 2) -> int:
    """How many pixels lie within ``tolerance`` of ``colour`` in every channel."""
    low = np.clip(np.asarray(colour) - tolerance, 0, 255)
    high = np.clip(np.asarray(colour) + tolerance, 0, 255)
    return int(((picture >= low) & (picture <= high)).all(axis=-1).sum())


def test_plots_draw_every_class_and_every_column_in_its_colour(drawn):
    pictures = drawn[0]
    # Probe curve: the two columns in matplotlib's first two cycle colours, opaque.
    for colour in ("#1f77b4", "#ff7f0e"):
        rgb = [int(colour[i:i + 2], 16) for i in (1, 3, 5)]
        assert count_near(pictures["probe_curve"], rgb, 0) > 100, colour
    # Embedding: 200 test images of Fashion-MNIST's 10 classes, tab10 at alpha 0.8 on white.
    for colour in colormaps["tab10"].colors:
        blended = np.round((0.8 * np.array(colour) + 0.2) * 255)
        assert count_near(pictures["embedding"], blended) > 10, colour


def test_write_pictures_puts_every_picture_in_the_event_file(drawn):
    pictures, _, summary_dir, _ = drawn
    found = {}
    for path in Path(summary_dir).glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                assert value.metadata.plugin_data.plugin_name == "images"
                width, height, png = tf.make_ndarray(value.tensor)
                found[value.tag] = (event.step, int(width), int(height), png)
    assert set(found) == set(pictures)
    for name, picture in pictures.items():
        step, width, height, png = found[name]
        assert (step, height, width) == (3, *picture.shape[:2])
        np.testing.assert_array_equal(tf.io.decode_png(png).numpy(), picture)


@pytest.mark.parametrize("settings, message", [
    ({"queries": 2, "feature_map_images": 3}, "must not exceed queries"),
    ({"embedding_method": "umap"}, "tsne, pca"),
    ({"neighbours": 10, "bank_examples": 10}, "below bank_examples"),
    ({"queries": 0}, "queries must be positive"),
])
def test_make_pictures_rejects_bad_settings_before_any_work(settings, message):
    with pytest.raises(ConfigError, match=message):
        make_pictures(lambda images, training=False: {}, open_source("fashion_mnist"),
                      image_size=28, **settings)


def test_write_pictures_rejects_names_that_are_not_file_names(tmp_path):
    with pytest.raises(ConfigError, match="plain file name"):
        write_pictures(tmp_path, {"a/b": np.zeros((2, 2, 3), np.uint8)})
