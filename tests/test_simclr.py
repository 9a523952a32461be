"""SimCLR: its views pipeline, replica independence of a train step, training and restoring."""


import numpy as np
import pytest
import tensorflow as tf

from helpers import (
    assert_encoder_restores,
    assert_two_replicas_match_one_device,
    initial_weights,
    pretrain_and_probe,
    train_in_process,
)
from selfsup.models.heads import MLPHead
from selfsup.models.registry import ConfigError
from selfsup.tasks.simclr import SimCLRConfig, SimCLRTask

# A two-stage, narrow resnet_small: the tests are about the task, not the encoder's capacity.
TINY = {"stage_blocks": (1, 1), "stage_widths": (8, 16), "stem_width": 8}


@pytest.fixture(scope="module")
def first_global_batch():
    """The first batch of views of a one-device pipeline (filling the shuffle buffer is slow,
    so the pipeline tests share it)."""
    return next(iter(SimCLRTask(SimCLRConfig(global_batch_size=8)).build_inputs()))


def test_pipeline_gives_two_differing_views_of_fashion_mnist(first_global_batch):
    view_a, view_b = first_global_batch
    assert view_a.shape == view_b.shape == (8, 28, 28, 3) and view_a.dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(view_a)) and float(tf.reduce_max(view_b)) <= 1.0
    per_image = tf.reduce_mean(tf.abs(view_a - view_b), axis=[1, 2, 3]).numpy()
    assert per_image.min() > 1e-3


def test_views_are_seeded_and_independent_of_how_replicas_split_the_batch(first_global_batch):
    whole_a, whole_b = first_global_batch
    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                         num_replicas_in_sync=2)
    task = SimCLRTask(SimCLRConfig(global_batch_size=8))
    halves = list(task.build_inputs(context).take(2))
    assert halves[0][0].shape == (4, 28, 28, 3)
    np.testing.assert_array_equal(tf.concat([h[0] for h in halves], 0).numpy(), whole_a.numpy())
    np.testing.assert_array_equal(tf.concat([h[1] for h in halves], 0).numpy(), whole_b.numpy())


def test_projection_head_is_a_relu_mlp_without_norm_when_asked():
    head = MLPHead((6,), 3, batch_norm=False)
    features = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    out = head(features).numpy()
    w1, b1 = head.hidden[0].kernel.numpy(), head.hidden[0].bias.numpy()
    w2, b2 = head.out.kernel.numpy(), head.out.bias.numpy()
    np.testing.assert_allclose(out, np.maximum(features @ w1 + b1, 0) @ w2 + b2, atol=1e-5)


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="temperature must be positive"):
        SimCLRConfig(temperature=0.0)
    with pytest.raises(ConfigError, match="crop_min_area"):
        SimCLRConfig(crop_min_area=0.0)


def test_two_replicas_match_one_device_at_the_train_step(two_replica_strategy):
    """Same global batch: the same loss and the same weights after a step (synchronized BN in
    the encoder and the head, negatives gathered across replicas)."""
    task = SimCLRTask(SimCLRConfig(global_batch_size=8, image_size=16, backbone_kwargs=TINY,
                                   projection_hidden_units=(32,), projection_dim=16))
    rng = np.random.default_rng(0)
    views = tuple(rng.uniform(size=(8, 16, 16, 3)).astype(np.float32) for _ in range(2))
    _, weights = initial_weights(task)
    assert_two_replicas_match_one_device(task, weights, views, two_replica_strategy)


def test_trainer_lowers_the_loss_and_its_checkpoint_restores_the_encoder(tmp_path):
    task = SimCLRTask(SimCLRConfig(global_batch_size=32, backbone_kwargs=TINY,
                                   synchronized_bn=False, seed=2))
    losses, trainer = train_in_process(task, "simclr", tmp_path, train_steps=30, log_every=5,
                                       checkpoint_every=30, learning_rate=0.1,
                                       weight_decay=0.0)
    assert len(losses) == 6
    # Chance level: log(2N − 1) = log 63 ≈ 4.14 with 32 pairs; the means of 5 steps fall.
    assert losses[0] > 3.5 and losses[-1] < losses[0] - 0.3, losses
    assert_encoder_restores(tmp_path, trainer, "simclr")


@pytest.mark.slow
def test_short_pretrain_beats_random_init_in_the_linear_probe(tmp_path):
    """300 steps of batch 128 (≈ 3 CPU-min of training, ≈ 4.5 CPU-min with the probes).

    Measured: best layer 86.9 % trained vs 84.1 % random init (REFERENCE.md: 88.8 after
    10 CPU-min at batch 256). The margin, 1 point, is over 3× the seed-to-seed spread of the
    random encoder (±0.3) and about a third of the measured gain.
    """
    results = pretrain_and_probe("simclr", tmp_path, train_steps=300, batch_size=128,
                                 learning_rate=0.3, task_params={"temperature": 0.2})
    print("simclr probe", results["best"], results["losses"])
    assert results["best"]["trained"] > results["best"]["random_init"] + 1.0, results["best"]
