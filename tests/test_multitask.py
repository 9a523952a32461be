"""Multi-task: one shared encoder, the loss is the weighted sum of the sub-tasks' own losses,
config and flag validation, training through the trainer and restoring the shared encoder."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import (
    ONE_STAGE,
    assert_encoder_restores,
    pretrain_and_probe,
    run_cli,
    train_in_process,
)
from selfsup.models.backbone import variable_map
from selfsup.models.registry import ConfigError
from selfsup.tasks import task_class
from selfsup.tasks.base import parse_task_params
from selfsup.tasks.multitask import (
    MultiTask,
    MultiTaskConfig,
    multitask_params,
    shareable_task_names,
)

SUBTASKS = ("rotnet", "relative_position")


def multitask(**overrides) -> MultiTask:
    settings = dict(subtasks=SUBTASKS, weights=(1.0, 0.25), backbone_kwargs=ONE_STAGE,
                    global_batch_size=8, synchronized_bn=False)
    return MultiTask(MultiTaskConfig(**{**settings, **overrides}))


def test_subtasks_share_one_encoder_named_backbone():
    task = multitask()
    model = task.build_model()
    model(task.dummy_inputs(), training=False)
    assert all(submodel.backbone is model.backbone for submodel in model.submodels)
    keys = variable_map(model)
    encoder_keys = [key for key in keys if key.startswith("backbone/")]
    assert encoder_keys and len(encoder_keys) == len(model.backbone.variables)
    # Every variable is the encoder's or one head's, each once.
    assert len(keys) == len(model.variables) == len({id(v) for v in model.variables})
    assert {key.split("/")[0] for key in keys} == {"backbone", "rotnet", "relative_position"}


def test_loss_is_the_weighted_sum_of_the_subtask_losses_computed_alone():
    task = multitask()
    keras.utils.set_random_seed(3)
    model = task.build_model()
    model(task.dummy_inputs(), training=False)
    batch = next(iter(task.build_inputs()))
    total, _, parts = task.compute_loss(batch, model, training=False)
    alone = []
    for index, name in enumerate(SUBTASKS):
        # A separate task and model, with the multitask's weights copied in by name.
        single = task_class(name)(task.subtasks[index].config)
        single_model = single.build_model()
        single_model(single.dummy_inputs(), training=False)
        source = {key: value for key, value in variable_map(model).items()}
        for key, variable in variable_map(single_model).items():
            origin = key if key.startswith("backbone/") else f"{name}/{key}"
            variable.assign(source[origin])
        loss, _, _ = single.compute_loss(batch[index], single_model, training=False)
        alone.append(float(loss))
        assert float(parts[f"{name}_loss"]) == pytest.approx(alone[-1], rel=1e-5)
    assert float(total) == pytest.approx(1.0 * alone[0] + 0.25 * alone[1], rel=1e-5)
    assert min(alone) > 0.1  # chance-level losses, not zeros that would hide a wrong weight


def test_config_refuses_tasks_that_cannot_share_and_bad_weights():
    shareable = set(shareable_task_names())
    assert {"rotnet", "jigsaw", "relative_position", "counting", "simclr"} <= shareable
    # The multitask config is an image config: video tasks are not sub-tasks.
    assert not shareable & {"rotnet3d", "vcop", "video_simclr", "action_recognition"}
    for name in ("moco", "cmc", "cpc", "deepcluster", "multitask", "rotnet3d", "vcop"):
        with pytest.raises(ConfigError, match=f"task '{name}' cannot share"):
            MultiTaskConfig(subtasks=("rotnet", name))
    with pytest.raises(ConfigError, match="unknown task 'nosuch'"):
        MultiTaskConfig(subtasks=("rotnet", "nosuch"))
    with pytest.raises(ConfigError, match="1 weights for 2 sub-tasks"):
        MultiTaskConfig(subtasks=SUBTASKS, weights=(1.0,))
    with pytest.raises(ConfigError, match="non-negative"):
        MultiTaskConfig(subtasks=SUBTASKS, weights=(1.0, -1.0))
    with pytest.raises(ConfigError, match="distinct"):
        MultiTaskConfig(subtasks=("rotnet", "rotnet"))


def test_subtask_options_reach_their_subtask_only():
    params = parse_task_params(MultiTaskConfig, ["relative_position.gap=2", "weights=2,1"])
    assert params == {"subtask_params": ("relative_position.gap=2",), "weights": (2.0, 1.0)}
    config = MultiTaskConfig(subtasks=SUBTASKS, **params)
    rotnet_config, position_config = config.subtask_configs()
    assert position_config.gap == 2 and not hasattr(rotnet_config, "gap")
    with pytest.raises(ConfigError, match="unknown task parameter 'nosuch'"):
        MultiTaskConfig(subtasks=SUBTASKS, subtask_params=("rotnet.nosuch=1",))
    with pytest.raises(ConfigError, match="must start with one of the sub-tasks"):
        MultiTaskConfig(subtasks=SUBTASKS, subtask_params=("jigsaw.gap=1",))


def test_trainer_lowers_both_losses_and_restores_the_shared_encoder(tmp_path):
    task = multitask(global_batch_size=16, seed=1)
    losses, trainer = train_in_process(task, "multitask", tmp_path, train_steps=24, log_every=6,
                                       checkpoint_every=24, learning_rate=0.1)
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    encoder = assert_encoder_restores(tmp_path, trainer, "multitask")
    images = tf.random.uniform([2, 28, 28, 3], seed=1)
    np.testing.assert_allclose(encoder(images, training=False)["pool"].numpy(),
                               trainer.model.backbone(images, training=False)["pool"].numpy(),
                               atol=1e-6)


def test_subtask_flags_are_checked_before_training(tmp_path):
    assert multitask_params("multitask", ["rotnet", "jigsaw"], ["1", "0.5"]) == {
        "subtasks": ("rotnet", "jigsaw"), "weights": (1.0, 0.5)}
    assert multitask_params("rotnet", None, None) == {}
    with pytest.raises(ConfigError, match="apply to --task=multitask only"):
        multitask_params("rotnet", ["rotnet", "jigsaw"], None)
    with pytest.raises(ConfigError, match="--weights must be numbers"):
        multitask_params("multitask", None, ["1", "x"])
    result = run_cli("selfsup-train", "--task=multitask", "--subtasks=rotnet,moco",
                     f"--model_dir={tmp_path}")
    assert result.returncode == 2
    assert "task 'moco' cannot share its encoder in multitask" in result.stderr
    assert len(result.stderr.strip().splitlines()[-1]) < 300


@pytest.mark.slow
def test_short_multitask_pretrain_beats_random_init_in_the_linear_probe(tmp_path):
    """RotNet + relative position on one encoder, 300 SGD steps at batch 64 (each sub-task
    gets its own batch of 64 images), then the per-layer probe of the trained and the
    random-init encoder. Measured 2026-11-30 (on a loaded 2-core machine, 10.5 min): best layer
    86.22 % vs 84.09 % random init; the 1-point margin is over 3× the random encoder's seed
    spread and under half the gain."""
    results = pretrain_and_probe("multitask", tmp_path, train_steps=300, batch_size=64,
                                 learning_rate=0.1,
                                 task_params={"subtasks": ("rotnet", "relative_position")})
    print("multitask probe", results["best"], results["losses"])
    assert results["best"]["trained"] > results["best"]["random_init"] + 1.0, results["best"]
