"""Colorization (Zhang et al. 2016) and its regression baseline: targets, losses, the L-only
encoder, replicas, training, restoring, exporting and the colourised samples."""

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
from selfsup.datasets import color_bins
from selfsup.datasets.color import lab_to_rgb, rgb_to_lab
from selfsup.datasets.pipelines import image_label_dataset
from selfsup.models import build_backbone
from selfsup.models.backbone import variable_map
from selfsup.models.color_encoders import LightnessEncoder
from selfsup.models.registry import ConfigError
from selfsup.tasks import task_class
from selfsup.tasks.colorization import (
    ColorizationConfig,
    ColorizationRegressionTask,
    ColorizationTask,
    ColorTargetConfig,
    colorization_targets,
    colorize,
    masked_ab_regression_loss,
    nearest_bin_counts,
    weighted_soft_cross_entropy,
)
from selfsup.tasks.multitask import MultiTask, MultiTaskConfig

# One narrow stage of resnet_small: the tests are about the task, not the encoder's capacity.


def coloured_and_gray_images(size: int = 8) -> np.ndarray:
    """Two random colour images and one gray one, RGB in [0, 1]."""
    rng = np.random.default_rng(0)
    colour = rng.uniform(size=(2, size, size, 3))
    gray = np.repeat(rng.uniform(size=(1, size, size, 1)), 3, axis=-1)
    return np.concatenate([colour[:1], gray, colour[1:]]).astype(np.float32)


def numpy_block_mean(values: np.ndarray, stride: int) -> np.ndarray:
    b, h, w, c = values.shape
    return values.reshape(b, h // stride, stride, w // stride, stride, c).mean(axis=(2, 4))


def test_targets_are_soft_encoded_block_means_weighted_by_their_nearest_bin():
    images = coloured_and_gray_images()
    bin_weights = np.random.default_rng(1).uniform(0.5, 2.0, size=313).astype(np.float32)
    targets = colorization_targets(tf.constant(images), 4, 5, tf.constant(bin_weights))
    assert targets["bins"].shape == targets["bin_targets"].shape == (3, 2, 2, 5)
    assert targets["weights"].shape == (3, 2, 2)
    ab = numpy_block_mean(rgb_to_lab(images).numpy()[..., 1:], 4).astype(np.float64)
    centres = color_bins.ab_bin_centres().astype(np.float64)
    distances = ((ab[..., None, :] - centres) ** 2).sum(-1)
    nearest_five = np.argsort(distances, axis=-1)[..., :5]
    np.testing.assert_array_equal(targets["bins"].numpy(), nearest_five)
    gaussian = np.exp(-np.take_along_axis(distances, nearest_five, -1) / (2 * 5.0 ** 2))
    np.testing.assert_allclose(targets["bin_targets"].numpy(),
                               gaussian / gaussian.sum(-1, keepdims=True), atol=1e-5)
    expected = bin_weights[nearest_five[..., 0]] * np.array([1.0, 0.0, 1.0])[:, None, None]
    np.testing.assert_allclose(targets["weights"].numpy(), expected, rtol=1e-6)


def numpy_weighted_cross_entropy(logits, bins, bin_targets, weights):
    total = 0.0
    for index in np.ndindex(weights.shape):
        row = logits[index].astype(np.float64)
        log_p = row - (np.log(np.exp(row - row.max()).sum()) + row.max())
        soft = np.zeros(row.shape[-1])
        soft[bins[index]] = bin_targets[index]
        total += weights[index] * -(soft * log_p).sum()
    return total / weights.size


def test_loss_matches_a_numpy_loop_and_masking_removes_grayscale_images():
    images = coloured_and_gray_images()
    targets = colorization_targets(tf.constant(images), 4, 5, tf.ones([313]))
    bins, bin_targets, weights = (targets[key].numpy()
                                  for key in ("bins", "bin_targets", "weights"))
    logits = np.random.default_rng(2).normal(size=(3, 2, 2, 313)).astype(np.float32)

    def loss_of(rows, logit_values):
        return float(weighted_soft_cross_entropy(logit_values, bins[rows], bin_targets[rows],
                                                 weights[rows]))

    loss = loss_of(slice(None), logits)
    assert loss == pytest.approx(numpy_weighted_cross_entropy(logits, bins, bin_targets,
                                                              weights), rel=1e-5)
    # The gray image (row 1) has weight 0: its logits do not matter...
    other = logits.copy()
    other[1] = np.random.default_rng(3).normal(size=other[1].shape) * 10
    assert loss_of(slice(None), other) == pytest.approx(loss, rel=1e-6)
    # ...and the normalisation counts every pixel (replica-consistent), masked ones included.
    assert loss == pytest.approx(loss_of(slice(None, None, 2), logits[::2]) * 2 / 3, rel=1e-5)


def test_regression_loss_matches_numpy_and_ignores_grayscale_images():
    rng = np.random.default_rng(4)
    predicted, target = rng.normal(size=(2, 3, 2, 3, 2)).astype(np.float32)
    weights = np.array([1.0, 0.0, 1.0], np.float32)[:, None, None] * np.ones((3, 2, 3))
    expected = sum(weights[i, y, x] * ((predicted[i, y, x] - target[i, y, x]) ** 2).sum()
                   for i in range(3) for y in range(2) for x in range(3)) / weights.size
    got = float(masked_ab_regression_loss(predicted, target, weights.astype(np.float32)))
    assert got == pytest.approx(expected, rel=1e-5)


def test_encoder_sees_only_lightness_and_has_no_variables_of_its_own():
    inner = build_backbone("resnet_small", input_size=16, name="backbone", **ONE_STAGE)
    encoder = LightnessEncoder(inner, name="backbone")
    images = tf.constant(np.random.default_rng(5).uniform(size=(2, 16, 16, 3)), tf.float32)
    lab = rgb_to_lab(images)
    same_l = lab_to_rgb(tf.concat([lab[..., :1], tf.zeros_like(lab[..., 1:])], -1))
    original, gray = encoder(images, training=False), encoder(same_l, training=False)
    assert list(original) == list(inner(images, training=False))
    for name in original:
        np.testing.assert_allclose(gray[name].numpy(), original[name].numpy(), atol=1e-4)
    # The inner backbone gets L / 100 on 3 channels (its rescale makes it (L − 50) / 50).
    direct = inner(tf.tile(lab[..., :1] / 100.0, [1, 1, 1, 3]), training=False)
    np.testing.assert_allclose(original["pool"].numpy(), direct["pool"].numpy(), atol=1e-5)
    assert {id(v) for v in encoder.variables} == {id(v) for v in inner.variables}


def test_build_backbone_wraps_a_shared_encoder():
    task = ColorizationTask(ColorizationConfig(image_size=16, backbone_kwargs=ONE_STAGE))
    shared = build_backbone("resnet_small", input_size=16, name="backbone", **ONE_STAGE)
    task.share_backbone(shared)
    wrapper = task.build_backbone()
    assert isinstance(wrapper, LightnessEncoder) and wrapper.inner is shared
    assert task_class("colorization") is ColorizationTask
    assert task_class("colorization_regression") is ColorizationRegressionTask


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="target_stride"):
        ColorizationConfig(image_size=28, target_stride=3)
    with pytest.raises(ConfigError, match="neighbours"):
        ColorizationConfig(neighbours=0)
    with pytest.raises(ConfigError, match="rebalancing_lambda"):
        ColorizationConfig(rebalancing_lambda=1.5)
    assert ColorTargetConfig().target_size == 7


def test_colorize_with_the_true_ab_gives_back_the_image():
    images = tf.constant(coloured_and_gray_images(), tf.float32)
    ab = rgb_to_lab(images)[..., 1:]
    np.testing.assert_allclose(colorize(images, ab).numpy(), images.numpy(), atol=2e-3)


def test_two_replicas_match_one_device_at_the_train_step(two_replica_strategy):
    """One replica's half holds a gray image: with the fixed-count normalisation the replicas'
    mean loss is still the global batch's."""
    task = ColorizationTask(ColorizationConfig(global_batch_size=8, image_size=16,
                                               backbone_kwargs=ONE_STAGE, decoder_width=8,
                                               class_rebalancing=False))
    rng = np.random.default_rng(6)
    images = rng.uniform(size=(8, 16, 16, 3)).astype(np.float32)
    images[1] = images[1, ..., :1]  # gray
    targets = {key: value.numpy() for key, value in task.make_targets(images).items()}
    assert targets["weights"][1].max() == 0.0
    _, weights = initial_weights(task)
    assert_two_replicas_match_one_device(task, weights, (images, targets), two_replica_strategy)


def test_trainer_lowers_the_loss_restores_the_encoder_and_it_exports(tmp_path):
    task = ColorizationTask(ColorizationConfig(
        global_batch_size=32, backbone_kwargs=ONE_STAGE, synchronized_bn=False,
        tint_gray_images=True, prior_examples=256, decoder_width=16, seed=3))
    (tmp_path / "run").mkdir()
    losses, trainer = train_in_process(task, "colorization", tmp_path / "run", train_steps=30,
                                       log_every=5, checkpoint_every=30, learning_rate=1e-2,
                                       optimizer="adam", weight_decay=0.0)
    # Means of 5 steps (noisy: the rebalancing weights vary by batch); chance level with
    # weights of mean ≈ 1 is ≈ log 313 = 5.7. Measured 5.55 → 5.00, 5.07.
    assert len(losses) == 6 and np.mean(losses[-2:]) < losses[0] - 0.3, losses
    # The trainer wrote the colourised samples as a PNG grid.
    assert (tmp_path / "run" / "samples" / "colorized-000030.png").is_file()
    encoder = assert_encoder_restores(tmp_path / "run", trainer, "colorization")
    assert isinstance(encoder, LightnessEncoder)
    images = np.random.default_rng(7).uniform(size=(3, 28, 28, 3)).astype(np.float32)
    assert_export_reproduces(encoder, tmp_path / "export", "colorization", images)


def test_prior_counts_the_nearest_bins_of_colour_images_only():
    images = coloured_and_gray_images()
    counts = nearest_bin_counts(tf.constant(images), 4).numpy()
    ab = numpy_block_mean(rgb_to_lab(images).numpy()[..., 1:], 4)[[0, 2]].reshape(-1, 2)
    centres = color_bins.ab_bin_centres()
    expected = np.bincount(((ab[:, None] - centres) ** 2).sum(-1).argmin(-1), minlength=313)
    np.testing.assert_array_equal(counts, expected)


def test_sample_images_are_colour_images_of_the_right_shape():
    task = ColorizationTask(ColorizationConfig(backbone_kwargs=ONE_STAGE, decoder_width=8,
                                               tint_gray_images=True, global_batch_size=8))
    model = task.build_model()
    samples = task.sample_images(model)
    assert set(samples) == {"colorized", "original"}
    for images in samples.values():
        assert images.shape == (16, 28, 28, 3)
        assert np.isfinite(images.numpy()).all()
        assert images.numpy().min() >= 0.0 and images.numpy().max() <= 1.0
    # The first 16 training images in file order, each gray one tinted.
    first = next(iter(image_label_dataset(task.source, "train", 28).batch(16)))[0].numpy()
    tinted = samples["original"].numpy()
    colour = tinted.sum(axis=(1, 2)) / first.sum(axis=(1, 2))          # [16, 3]
    np.testing.assert_allclose(tinted, first * colour[:, None, None, :], atol=1e-5)
    assert np.abs(rgb_to_lab(tinted)[..., 1:].numpy()).max(axis=(1, 2, 3)).min() > 5.0


def test_regression_trains_and_restores(tmp_path):
    task = ColorizationRegressionTask(ColorTargetConfig(
        global_batch_size=32, backbone_kwargs=ONE_STAGE, synchronized_bn=False,
        tint_gray_images=True, decoder_width=16, seed=4))
    losses, trainer = train_in_process(task, "colorization_regression", tmp_path,
                                       train_steps=15, log_every=5, checkpoint_every=15,
                                       learning_rate=3e-3, optimizer="adam", weight_decay=0.0)
    assert len(losses) == 3 and losses[-1] < 0.7 * losses[0], losses
    assert isinstance(assert_encoder_restores(tmp_path, trainer, "colorization_regression"),
                      LightnessEncoder)


def test_multitask_shares_the_raw_encoder_and_colorization_feeds_it_lightness():
    task = MultiTask(MultiTaskConfig(subtasks=("rotnet", "colorization"), image_size=16,
                                     backbone_kwargs=ONE_STAGE))
    model = task.build_model()
    model(task.dummy_inputs(), training=False)
    colorization = model.submodels[1]
    assert colorization.backbone.inner is model.backbone
    keys = sorted(variable_map(model))
    assert [key for key in keys if not key.startswith(("backbone/", "rotnet/", "colorization/"))
            ] == []
    assert any(key.startswith("colorization/head/") for key in keys)


@pytest.mark.slow
def test_short_pretrain_beats_random_init_in_the_linear_probe(tmp_path):
    """300 SGD steps at batch 64 on tinted Fashion-MNIST (prior from 2,000 images), then the
    per-layer probe of the trained and the random-init L-only encoder. Measured 2026-11-30
    (4.3–7.5 min wall on a shared 2-core machine; rerun identical after the sparse targets):
    best layer 84.73 % vs 83.90 % random init; loss (means over 60 steps) 4.48 → 3.45.
    A small gain: the hue of a tinted
    gray image is random, so only where colour goes is learnable (see the task's docstring).
    The 0.5-point margin is above the random encoder's seed spread (0.3, REFERENCE.md) and
    under the measured 0.8."""
    results = pretrain_and_probe("colorization", tmp_path, train_steps=300, batch_size=64,
                                 learning_rate=0.1,
                                 task_params={"tint_gray_images": True, "prior_examples": 2000})
    print("colorization probe", results["best"], results["losses"])
    assert results["best"]["trained"] > results["best"]["random_init"] + 0.5, results["best"]


@pytest.mark.slow
def test_short_regression_pretrain_does_not_beat_random_init_on_tinted_gray_data(tmp_path):
    """300 Adam steps (lr 1e-3; SGD at lr 0.1 diverged to NaN by step 60) at batch 64 on
    tinted Fashion-MNIST, then the per-layer probe. Measured 2026-11-30 (4.5 min wall on a
    shared 2-core machine): best layer 84.09 % vs 83.90 % random init, a gain within the
    random encoder's seed spread (0.3); loss (means over 60 steps) 0.646 → 0.090. Expected:
    the tint's hue is uniform, so the L2-optimal ab given L is close to gray (the mean over
    hues), which is the failure of regression that Zhang et al. 2016 answer with
    classification over bins (the classification task gains 0.8 at this budget). Asserted:
    the loss falls and the encoder is no worse than random init by more than a point."""
    results = pretrain_and_probe("colorization_regression", tmp_path, train_steps=300,
                                 batch_size=64, learning_rate=1e-3, optimizer="adam",
                                 task_params={"tint_gray_images": True})
    print("colorization_regression probe", results["best"], results["losses"])
    assert results["losses"][-1] < 0.5 * results["losses"][0], results["losses"]
    assert results["best"]["trained"] > results["best"]["random_init"] - 1.0, results["best"]
