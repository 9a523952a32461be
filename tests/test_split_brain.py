"""Split-brain autoencoders (Zhang et al. 2017): targets, loss, the two heads, training."""

import numpy as np
import pytest
import tensorflow as tf

from helpers import ONE_STAGE, assert_encoder_restores, pretrain_and_probe, train_in_process
from selfsup.datasets import color_bins
from selfsup.datasets.color import lab_to_rgb, rgb_to_lab
from selfsup.models.backbone import variable_map
from selfsup.models.registry import ConfigError
from selfsup.tasks import task_class
from selfsup.tasks.cmc import SplitColorEncoder
from selfsup.tasks.split_brain import (
    SplitBrainConfig,
    SplitBrainTask,
    masked_cross_entropy,
    split_brain_targets,
)


def test_targets_are_the_nearest_ab_bin_and_the_l_bin_of_each_block_mean():
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(3, 8, 8, 3)).astype(np.float32)
    images[1] = images[1, ..., :1]  # gray
    targets = split_brain_targets(tf.constant(images), 4, 50)
    lab = rgb_to_lab(images).numpy().reshape(3, 2, 4, 2, 4, 3).mean(axis=(2, 4))
    centres = color_bins.ab_bin_centres()
    for i, y, x in np.ndindex(3, 2, 2):
        a_b = lab[i, y, x, 1:]
        assert targets["ab_bins"][i, y, x] == np.argmin(((centres - a_b) ** 2).sum(axis=1))
        assert targets["l_bins"][i, y, x] == min(int(lab[i, y, x, 0] // 2), 49)
    np.testing.assert_array_equal(targets["weights"].numpy(),
                                  np.array([1, 0, 1])[:, None, None] * np.ones((3, 2, 2)))


def test_masked_cross_entropy_matches_a_numpy_loop():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 3, 3, 50)).astype(np.float32)
    labels = rng.integers(0, 50, size=(2, 3, 3))
    weights = np.array([0.0, 1.0], np.float32)[:, None, None] * np.ones((2, 3, 3), np.float32)
    total = 0.0
    for index in np.ndindex(2, 3, 3):
        row = logits[index].astype(np.float64)
        log_sum = np.log(np.exp(row - row.max()).sum()) + row.max()
        total += weights[index] * (log_sum - row[labels[index]])
    got = float(masked_cross_entropy(logits, labels, weights))
    assert got == pytest.approx(total / 18, rel=1e-5)


def test_each_head_reads_its_own_sub_network():
    """Removing the colour (same L) leaves the L network's ab prediction unchanged and changes
    the ab network's L prediction."""
    task = SplitBrainTask(SplitBrainConfig(image_size=16, backbone_kwargs=ONE_STAGE,
                                           decoder_width=8))
    model = task.build_model()
    images = tf.constant(np.random.default_rng(2).uniform(size=(2, 16, 16, 3)), tf.float32)
    lab = rgb_to_lab(images)
    same_l = lab_to_rgb(tf.concat([lab[..., :1], tf.zeros_like(lab[..., 1:])], -1))
    original, gray = model(images, training=False), model(same_l, training=False)
    assert original["ab_logits"].shape == (2, 4, 4, 313)
    assert original["l_logits"].shape == (2, 4, 4, 50)
    np.testing.assert_allclose(gray["ab_logits"].numpy(), original["ab_logits"].numpy(),
                               atol=1e-4)
    assert np.abs(gray["l_logits"].numpy() - original["l_logits"].numpy()).max() > 1e-3
    assert isinstance(model.backbone, SplitColorEncoder)
    keys = list(variable_map(model))
    assert all(key.startswith(("backbone/l_net/", "backbone/ab_net/", "ab_head/", "l_head/"))
               for key in keys), keys


def test_sub_networks_are_half_width_and_config_is_checked():
    assert task_class("split_brain") is SplitBrainTask
    assert not SplitBrainTask.shares_backbone
    task = SplitBrainTask(SplitBrainConfig(image_size=16, backbone_kwargs=ONE_STAGE))
    specs = task.build_backbone().output_specs((None, 16, 16, 3))
    # One stage of width 8, halved, per sub-network.
    assert specs["l_pool"] == specs["ab_pool"] == (None, 4) and specs["pool"] == (None, 8)
    with pytest.raises(ConfigError, match="no width_multiplier"):
        SplitBrainConfig(backbone="alexnet", width_multiplier=0.5)
    with pytest.raises(ConfigError, match="lightness_bins"):
        SplitBrainConfig(lightness_bins=1)


def test_trainer_lowers_the_loss_and_its_checkpoint_restores_the_encoder(tmp_path):
    task = SplitBrainTask(SplitBrainConfig(global_batch_size=32, backbone_kwargs=ONE_STAGE,
                                           synchronized_bn=False, tint_gray_images=True,
                                           decoder_width=16, seed=5))
    losses, trainer = train_in_process(task, "split_brain", tmp_path, train_steps=20,
                                       log_every=5, checkpoint_every=20, learning_rate=3e-3,
                                       optimizer="adam", weight_decay=0.0)
    # Chance level: log 313 + log 50 ≈ 9.66 (times the share of unmasked pixels, all here).
    assert len(losses) == 4 and losses[0] > 8.0 and losses[-1] < losses[0] - 0.5, losses
    encoder = assert_encoder_restores(tmp_path, trainer, "split_brain")
    assert isinstance(encoder, SplitColorEncoder)
    assert (tmp_path / "samples" / "colorized-000020.png").is_file()


@pytest.mark.slow
def test_short_pretrain_beats_random_init_in_the_linear_probe(tmp_path):
    """300 SGD steps at batch 64 on tinted Fashion-MNIST, then the per-layer probe of the
    trained and the random-init half-width pair. Measured 2026-11-30 (9 min wall on a shared,
    heavily loaded 2-core machine): best layer 84.01 % vs 82.23 % random init; loss (means
    over 60 steps) 5.19 → 3.75 (chance ≈ 9.66). The 1-point margin is over 3× the random
    encoder's seed spread (0.3, REFERENCE.md) and under the measured gain of 1.8."""
    results = pretrain_and_probe("split_brain", tmp_path, train_steps=300, batch_size=64,
                                 learning_rate=0.1, task_params={"tint_gray_images": True})
    print("split_brain probe", results["best"], results["losses"])
    assert results["best"]["trained"] > results["best"]["random_init"] + 1.0, results["best"]
