"""CPC: patch grid, offsets, loss against a numpy loop, causality, replicas, training."""

import math

import numpy as np
import pytest
import tensorflow as tf

from helpers import (
    ONE_STAGE,
    assert_encoder_restores,
    assert_export_reproduces,
    assert_two_replicas_match_one_device,
    initial_weights,
    pretrain_and_probe,
    train_in_process,
)
from selfsup.models.registry import ConfigError
from selfsup.tasks import task_class
from selfsup.tasks.cpc import (
    CPCConfig,
    CPCTask,
    PatchGeometry,
    RowCausalContext,
    cpc_loss,
    patch_grid,
    prediction_offsets,
    resolve_geometry,
)

# A two-stage, narrow resnet_small: the tests are about the task, not the encoder's capacity.
TINY = {"stage_blocks": (1, 1), "stage_widths": (8, 16), "stem_width": 8}


def numpy_cpc_loss(z: np.ndarray, predictions: dict[int, np.ndarray]) -> float:
    """Every prediction of row i + k scored against every z of the batch, written as loops."""
    batch, grid = z.shape[0], z.shape[1]
    candidates = [(n, i, j) for n in range(batch) for i in range(grid) for j in range(grid)]
    losses = []
    for k, predicted in predictions.items():
        for n in range(batch):
            for i in range(grid - k):
                for j in range(grid):
                    query = predicted[n, i, j].astype(np.float64)
                    scores = [query @ z[c] for c in candidates]
                    positive = candidates.index((n, i + k, j))
                    log_norm = max(scores) + math.log(sum(math.exp(s - max(scores))
                                                          for s in scores))
                    losses.append(log_norm - scores[positive])
    return float(np.mean(losses))


def test_geometry_reproduces_the_papers_grid_and_adapts_to_small_images():
    papers = resolve_geometry(256)
    assert (papers.grid_size, papers.patch_size, papers.stride) == (7, 64, 32)
    assert papers.footprint == 256
    fashion = resolve_geometry(28)
    assert (fashion.grid_size, fashion.patch_size, fashion.stride) == (7, 8, 4)
    assert fashion.footprint == 32
    assert resolve_geometry(28, grid_size=5, patch_size=12, stride=4).footprint == 28


def test_patches_are_the_image_windows_in_row_major_order():
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(2, 13, 13, 3)).astype(np.float32)
    geometry = PatchGeometry(grid_size=4, patch_size=4, stride=3)  # footprint 13: no resize
    patches = patch_grid(tf.constant(images), geometry).numpy()
    assert patches.shape == (2, 4, 4, 4, 4, 3)
    for n in range(2):
        for i in range(4):
            for j in range(4):
                window = images[n, 3 * i:3 * i + 4, 3 * j:3 * j + 4]
                np.testing.assert_array_equal(patches[n, i, j], window)


def test_images_are_resized_to_the_grids_footprint():
    images = tf.random.uniform([3, 28, 28, 3], seed=1)
    patches = patch_grid(images, resolve_geometry(28))
    assert patches.shape == (3, 7, 7, 8, 8, 3)
    resized = tf.image.resize(images, [32, 32]).numpy()
    np.testing.assert_allclose(patches.numpy()[:, 6, 6], resized[:, 24:, 24:], atol=1e-6)


def test_first_offset_is_the_first_row_sharing_no_pixels_with_the_context():
    geometry = resolve_geometry(28)
    offsets = prediction_offsets(geometry, 3)
    assert offsets == (2, 3, 4)
    assert prediction_offsets(geometry, 3, skip_overlapping_rows=False) == (1, 2, 3)
    stride, patch = geometry.stride, geometry.patch_size
    context_rows = set(range(0, patch))  # pixel rows of patch row 0
    for k in range(1, geometry.grid_size):
        target_rows = set(range(k * stride, k * stride + patch))
        assert bool(context_rows & target_rows) == (k < offsets[0])


def test_loss_matches_a_numpy_loop():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(2, 4, 4, 3))
    predictions = {1: rng.normal(size=(2, 4, 4, 3)), 3: rng.normal(size=(2, 4, 4, 3))}
    got = cpc_loss(tf.constant(z, tf.float32),
                   {k: tf.constant(v, tf.float32) for k, v in predictions.items()})
    assert float(got) == pytest.approx(numpy_cpc_loss(z, predictions), abs=1e-4)


def test_equal_scores_give_log_of_the_number_of_patches_in_the_batch():
    z = tf.random.normal([3, 5, 5, 4], seed=2)
    zero = {2: tf.zeros([3, 5, 5, 4]), 3: tf.zeros([3, 5, 5, 4])}
    assert float(cpc_loss(z, zero)) == pytest.approx(math.log(3 * 25), rel=1e-6)
    # The model's maps start at zero: a fresh model is at the same identity.
    task = CPCTask(CPCConfig(global_batch_size=2, backbone_kwargs=ONE_STAGE))
    model = task.build_model()
    patches = tf.random.uniform([2, 7, 7, 8, 8, 3], seed=3)
    fresh = task.build_losses(None, model(patches, training=False))
    assert float(fresh) == pytest.approx(math.log(2 * 49), rel=1e-6)


def test_context_at_row_r_ignores_every_row_below_r():
    context = RowCausalContext(units=8, num_blocks=3)
    z = tf.random.normal([2, 7, 7, 5], seed=4)
    base = context(z).numpy()
    for row in range(6):
        perturbed = tf.concat([z[:, :row + 1], z[:, row + 1:] + 3.0], axis=1)
        changed = context(perturbed).numpy()
        np.testing.assert_allclose(changed[:, :row + 1], base[:, :row + 1], atol=1e-5)
        assert np.abs(changed[:, row + 1] - base[:, row + 1]).max() > 1e-3
    # Three blocks of 3-row kernels: row 6 sees row 0 (the whole grid above).
    top = tf.concat([z[:, :1] + 3.0, z[:, 1:]], axis=1)
    assert np.abs(context(top).numpy()[:, 6] - base[:, 6]).max() > 1e-4


def test_model_context_ignores_patches_below_in_inference():
    task = CPCTask(CPCConfig(global_batch_size=2, backbone_kwargs=ONE_STAGE))
    model = task.build_model()
    patches = tf.random.uniform([2, 7, 7, 8, 8, 3], seed=5)
    base = model(patches, training=False)["context"].numpy()
    lower = tf.concat([patches[:, :3], 1.0 - patches[:, 3:]], axis=1)
    changed = model(lower, training=False)["context"].numpy()
    np.testing.assert_allclose(changed[:, :3], base[:, :3], atol=1e-5)
    assert np.abs(changed[:, 3:] - base[:, 3:]).max() > 1e-3


def test_encoder_averages_the_patch_vectors_of_the_training_grid():
    task = CPCTask(CPCConfig(backbone_kwargs=TINY))
    encoder = task.build_backbone()
    images = tf.random.uniform([2, 28, 28, 3], seed=6)
    outputs = encoder(images, training=False)
    assert {name: tuple(value.shape) for name, value in outputs.items()} == {
        "stem": (2, 7, 7, 8), "res2": (2, 7, 7, 8), "res3": (2, 7, 7, 16), "pool": (2, 16)}
    assert encoder.output_specs((None, 28, 28, 3))["res3"] == (None, 7, 7, 16)
    # Reference: the patch encoder on each window of the 32 px resize, one patch at a time.
    resized = tf.image.resize(images, [32, 32])
    per_patch = np.zeros((2, 7, 7, 16))
    res3_means = np.zeros((2, 7, 7, 16))
    for i in range(7):
        for j in range(7):
            window = resized[:, 4 * i:4 * i + 8, 4 * j:4 * j + 8]
            single = encoder.patch_encoder(window, training=False)
            per_patch[:, i, j] = single["pool"].numpy()
            res3_means[:, i, j] = single["res3"].numpy().mean(axis=(1, 2))
    np.testing.assert_allclose(outputs["pool"].numpy(), per_patch.mean(axis=(1, 2)), atol=1e-5)
    np.testing.assert_allclose(outputs["res3"].numpy(), res3_means, atol=1e-5)
    patches = patch_grid(images, task.config.geometry())
    np.testing.assert_allclose(encoder(patches, training=False, from_patches=True).numpy(),
                               per_patch, atol=1e-5)


def test_encoder_exports_as_a_hub_feature_vector(tmp_path):
    encoder = CPCTask(CPCConfig(backbone_kwargs=TINY)).build_backbone()
    images = np.random.default_rng(8).uniform(size=(3, 28, 28, 3)).astype(np.float32)
    assert_export_reproduces(encoder, tmp_path, "cpc", images)


def test_bad_settings_are_config_errors():
    assert task_class("cpc") is CPCTask
    with pytest.raises(ConfigError, match="do not fit"):
        CPCConfig(prediction_steps=6)  # offsets 2..7 on a 7-row grid (rows 0..6)
    with pytest.raises(ConfigError, match="patch_size"):
        CPCConfig(patch_size=0)
    assert CPCConfig(prediction_steps=5, skip_overlapping_rows=False).offsets() == (1, 2, 3,
                                                                                     4, 5)


def test_two_replicas_match_one_device_at_the_train_step(two_replica_strategy):
    """Same global batch: the same loss and weights after a step (synchronized BN, candidates
    gathered across replicas). The maps start from random values, not zero, so the first
    step's scores differ from each other."""
    task = CPCTask(CPCConfig(global_batch_size=4, image_size=12, grid_size=5, patch_size=4,
                             patch_stride=2, prediction_steps=2, context_units=8,
                             context_layers=2, backbone_kwargs=ONE_STAGE))
    images = np.random.default_rng(6).uniform(size=(4, 12, 12, 3)).astype(np.float32)
    patches = patch_grid(tf.constant(images), task.config.geometry()).numpy()
    initial, _ = initial_weights(task)
    initial.predictors.kernel.assign(
        np.random.default_rng(7).normal(scale=0.3, size=initial.predictors.kernel.shape))
    weights = [v.numpy() for v in initial.variables]
    loss = assert_two_replicas_match_one_device(task, weights, patches, two_replica_strategy,
                                                learning_rate=0.05, min_move=1e-3)
    assert abs(loss - math.log(4 * 25)) > 1e-2


def test_trainer_lowers_the_loss_and_its_checkpoint_restores_the_encoder(tmp_path):
    task = CPCTask(CPCConfig(global_batch_size=16, backbone_kwargs=TINY, synchronized_bn=False,
                             seed=2))
    losses, trainer = train_in_process(task, "cpc", tmp_path, train_steps=30, log_every=5,
                                       checkpoint_every=30, learning_rate=3e-3,
                                       optimizer="adam", weight_decay=0.0)
    assert len(losses) == 6
    # Chance level: log(16 · 49) ≈ 6.66 (the first step is exactly there); the means fall.
    assert losses[0] > 6.0 and losses[-1] < losses[0] - 0.3, losses
    encoder = assert_encoder_restores(tmp_path, trainer, "cpc")
    # The probed encoder takes whole images and cuts them into the training grid itself.
    assert encoder(tf.zeros([1, 28, 28, 3]), training=False)["pool"].shape == (1, 16)


@pytest.mark.slow
def test_short_pretrain_beats_random_init_in_the_linear_probe(tmp_path):
    """300 Adam steps at batch 32 (1,568 patches a step), then the per-layer probe on the patch
    grid: 5 CPU-min in all (8 min wall on a shared 2-core machine). Measured: best layer
    85.40 % (res4) vs 83.15 % random init; ``pool`` 77.0 vs 70.8. The 1-point margin is over
    3× the random encoder's seed spread (0.3, REFERENCE.md) and under half the measured gain."""
    results = pretrain_and_probe("cpc", tmp_path, train_steps=300, batch_size=32,
                                 learning_rate=1e-3, optimizer="adam", weight_decay=0.0)
    print("cpc probe", results["best"], results["losses"])
    assert results["best"]["trained"] > results["best"]["random_init"] + 1.0, results["best"]
