"""action_recognition: fine-tuning from a pretrained run, the two optimizer groups, training on
the real sample clips and clip/video evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import (
    VIDEO_TINY,
    assert_encoder_restores,
    assert_two_replicas_match_one_device,
    initial_weights,
    train_in_process,
)
from selfsup.models.backbone import variable_map
from selfsup.models.registry import ConfigError
from selfsup.tasks.action_recognition import (
    ENCODER_GROUP,
    HEAD_GROUP,
    ActionRecognitionConfig,
    ActionRecognitionTask,
)
from selfsup.tasks.base import BACKBONE_NAME
from selfsup.tasks.checkpoints import RUN_CONFIG_FILE, build_encoder
from selfsup.tasks.trainer import Trainer, TrainerConfig

TINY = dict(VIDEO_TINY, synchronized_bn=False)


def write_run_config_only(model_dir: Path, seed: int = 7) -> dict:
    run_config = {"task": "rotnet3d", **VIDEO_TINY, "frame_stride": 1, "data_dir": None,
                  "seed": seed}
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / RUN_CONFIG_FILE).write_text(json.dumps(run_config))
    return run_config


def write_pretrained_run(model_dir: Path, seed: int = 7) -> keras.Model:
    """A video run dir as selfsup-train leaves it (run config + a backbone checkpoint) whose
    encoder is a seeded random init; returns that encoder."""
    import selfsup.tasks.rotnet3d  # noqa: F401  (registers the run's task)

    encoder = build_encoder(write_run_config_only(model_dir, seed), seed)
    tf.train.Checkpoint(model={f"{BACKBONE_NAME}/{key}": variable for key, variable
                               in variable_map(encoder).items()}).save(str(model_dir / "ckpt"))
    return encoder


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"encoder_learning_rate_scale": -0.1}, "must not be negative"),
     ({"dropout": 1.0}, r"dropout must lie in \[0, 1\)"),
     ({"num_classes": 1}, "at least 2"),
     ({"eval_clips_per_video": 0}, "must be positive")])
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        ActionRecognitionConfig(**TINY, **settings)


def test_init_from_a_run_of_another_architecture_is_refused(tmp_path):
    write_run_config_only(tmp_path / "pretrained")
    wider = dict(TINY, backbone_kwargs={"width_multiplier": 0.25})
    with pytest.raises(ConfigError, match=r"init_from: .* trained r3d_18 \{'width_multiplier': "
                                          r"0.125\}, this task builds r3d_18"):
        ActionRecognitionTask(ActionRecognitionConfig(
            **wider, init_from=str(tmp_path / "pretrained"))).build_model()
    with pytest.raises(ConfigError, match="does not exist"):
        ActionRecognitionTask(ActionRecognitionConfig(
            **TINY, init_from=str(tmp_path / "nothing"))).build_model()


def test_init_from_restores_the_encoder_and_groups_step_with_their_own_rates(tmp_path):
    """The trainer builds the model from a pretrained run: its encoder is that run's, exactly.
    Its optimizers (SGD, Nesterov momentum 0.9, constant rate) for scale 0.1: the first step
    moves each weight by −(1 + 0.9)·rate·gradient, the encoder's rate a tenth of the head's;
    the gradient is taken here with a tape on the cross-entropy."""
    pretrained = write_pretrained_run(tmp_path / "pretrained")
    task = ActionRecognitionTask(ActionRecognitionConfig(
        **TINY, init_from=str(tmp_path / "pretrained"), encoder_learning_rate_scale=0.1,
        global_batch_size=4))
    keras.utils.set_random_seed(3)  # another init than the pretrained run's seed 7
    trainer = Trainer(task, TrainerConfig(model_dir=str(tmp_path / "run"), learning_rate=0.2,
                                          lr_schedule="constant", weight_decay=0.0),
                      tf.distribute.OneDeviceStrategy("/cpu:0"))
    model = trainer.model
    restored, expected = variable_map(model.backbone), variable_map(pretrained)
    assert restored.keys() == expected.keys()
    for key, variable in restored.items():
        np.testing.assert_array_equal(variable.numpy(), expected[key].numpy(), err_msg=key)
    assert model.head.dense.kernel.shape == (64, 8)  # pool of r3d_18 at 1/8 width; 8 scenes

    assert list(trainer.optimizers) == [ENCODER_GROUP, HEAD_GROUP]
    assert float(trainer.optimizers[ENCODER_GROUP].learning_rate) == pytest.approx(0.02)
    assert float(trainer.optimizers[HEAD_GROUP].learning_rate) == pytest.approx(0.2)
    groups = task.optimizer_groups(model)
    encoder_ids = {id(v) for v in groups[ENCODER_GROUP].variables}
    assert encoder_ids == {id(v) for v in model.backbone.trainable_variables}
    assert {id(v) for v in groups[HEAD_GROUP].variables} == {
        id(v) for v in model.head.trainable_variables}

    rng = np.random.default_rng(0)
    clips = tf.constant(rng.uniform(size=(4, 8, 32, 32, 3)), tf.float32)
    labels = tf.constant([0, 3, 5, 7], tf.int64)
    variables = model.trainable_variables
    before = [v.numpy() for v in variables]
    with tf.GradientTape() as tape:
        logits = model(clips, training=True)["logits"]
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
    gradients = [g.numpy() for g in tape.gradient(loss, variables)]
    task.train_step((clips, labels), model, trainer.optimizers, trainer.metrics)
    for variable, old, gradient in zip(variables, before, gradients, strict=True):
        rate = 0.02 if id(variable) in encoder_ids else 0.2
        np.testing.assert_allclose(variable.numpy() - old, -1.9 * rate * gradient,
                                   rtol=1e-3, atol=1e-7, err_msg=variable.path)


@pytest.mark.slow
def test_two_replicas_match_one_device(two_replica_strategy):
    """Slow only for the budget: 10 s alone on a quiet machine, 56 s when the 2 cores were
    shared with other test runs (3D convolutions on two logical CPUs)."""
    task = ActionRecognitionTask(ActionRecognitionConfig(**VIDEO_TINY, global_batch_size=4))
    rng = np.random.default_rng(5)
    clips = rng.uniform(size=(4, 8, 32, 32, 3)).astype(np.float32)
    labels = np.array([1, 2, 6, 1], np.int64)
    _, weights = initial_weights(task)
    assert_two_replicas_match_one_device(task, weights, (clips, labels), two_replica_strategy,
                                         learning_rate=0.1)


def test_fine_tuning_lowers_the_loss_and_scores_clips_and_videos(tmp_path):
    """On the real sample clips: the loss falls, the run dir restores the encoder, and
    ``evaluate`` scores every test video's clips (after 6 steps the BatchNorm moving statistics
    are far from the batch ones, so the scores are near chance; the scoring itself is checked
    against a numpy loop in test_video_eval)."""
    task = ActionRecognitionTask(ActionRecognitionConfig(**TINY, global_batch_size=8,
                                                         eval_clips_per_video=2, seed=4))
    losses, trainer = train_in_process(task, "action_recognition", tmp_path, train_steps=6,
                                       log_every=3, checkpoint_every=6, learning_rate=0.05,
                                       weight_decay=0.0)
    # Chance: log 8 ≈ 2.08; the means of 3 steps fall.
    assert len(losses) == 2 and losses[1] < losses[0] - 0.2, losses
    assert_encoder_restores(tmp_path, trainer, "action_recognition")
    scores = task.evaluate(trainer.model, log=lambda message: None)
    assert (scores["videos"], scores["clips"]) == (8, 16)
    assert 0.0 <= scores["clip_top1"] <= 100.0 and 0.0 <= scores["video_top1"] <= 100.0


@pytest.mark.slow
def test_finetune_protocol_from_a_short_pretrain_against_from_scratch(tmp_path):
    """``selfsup-eval --protocol=finetune`` on a video_simclr run (150 SGD steps of 8 videos ×
    2 clips): 200 fine-tuning steps (batch 8, SGD 0.05) from the pretrained encoder and from
    random init, scored on the 8 test videos × 8 clips; 83 s in all. Measured: clip / video
    top-1 100 / 100 from the pretrained encoder vs 87.5 / 87.5 from scratch (93.75 / 100 after
    300 pretraining steps): one video of 8, within noise at this size, so not asserted.
    Asserted: the protocol runs end to end through the CLI, writes both columns, and both
    fine-tuned runs fit their training clips (final loss < 0.7)."""
    from test_video_eval import pretrain_video_task

    from helpers import run_cli
    from selfsup.tasks.video_simclr import VideoSimCLRConfig

    pretrain_video_task("video_simclr", VideoSimCLRConfig(global_batch_size=8, **VIDEO_TINY),
                        tmp_path, train_steps=150, learning_rate=0.1)
    result = run_cli("selfsup-eval", f"--model_dir={tmp_path}", "--protocol=finetune",
                     "--finetune_steps=200", "--finetune_batch_size=8", "--clips_per_video=8",
                     timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    print(result.stdout[-600:])
    results = json.loads((tmp_path / "eval" / "finetune.json").read_text())
    for column in ("trained", "random_init"):
        assert results[column]["videos"] == 8 and results[column]["clips"] == 64
        assert results[column]["final_loss"] < 0.7, results[column]
    assert "random init" in result.stdout
