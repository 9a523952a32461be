"""The task contract's extension points: typed task parameters, replicated assignment from a
replica step, and the trainer's between-epoch hook."""

import dataclasses
import io

import numpy as np
import pytest
import tensorflow as tf

from selfsup.models.registry import ConfigError
from selfsup.tasks.base import TaskConfig, parse_task_params
from selfsup.tasks.distributed import assign_replicated, gather_from_replicas
from selfsup.tasks.rotnet import RotNetTask
from selfsup.tasks.trainer import Trainer, TrainerConfig


@dataclasses.dataclass(frozen=True)
class _ExampleConfig(TaskConfig):
    temperature: float = 0.5
    queue_size: int = 16
    shuffle_bn: bool = False
    grid: tuple[int, ...] = (3, 3)
    cache_dir: str | None = None


def test_task_params_are_converted_to_the_field_types():
    params = parse_task_params(_ExampleConfig, [
        "temperature=0.2", "queue_size=64", "shuffle_bn=true", "grid=2,4", "cache_dir=none"])
    assert params == {"temperature": 0.2, "queue_size": 64, "shuffle_bn": True, "grid": (2, 4),
                      "cache_dir": None}
    config = _ExampleConfig(**params)
    assert config.grid == (2, 4) and config.backbone == TaskConfig().backbone


@pytest.mark.parametrize("item, message", [
    ("tau=0.2", "unknown task parameter 'tau'; valid: temperature, queue_size"),
    ("temperature", "not of the form name=value"),
    ("queue_size=1.5", "queue_size='1.5' is not a valid int"),
    ("shuffle_bn=maybe", "shuffle_bn='maybe' is not a valid bool"),
    ("backbone=alexnet", "unknown task parameter 'backbone'"),  # common fields have own flags
])
def test_bad_task_params_name_the_problem(item, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        parse_task_params(_ExampleConfig, [item])


def test_a_task_without_parameters_says_so():
    with pytest.raises(ConfigError, match="valid: none"):
        parse_task_params(TaskConfig, ["x=1"])


def test_assign_replicated_writes_every_copy_from_a_replica_step(two_replica_strategy):
    strategy = two_replica_strategy
    with strategy.scope():
        variable = tf.Variable(tf.zeros([4]))

    @tf.function
    def step():
        def replica_fn():
            context = tf.distribute.get_replica_context()
            local = tf.fill([2], tf.cast(context.replica_id_in_sync_group, tf.float32) + 1.0)
            gathered, offset = gather_from_replicas(local)
            assign_replicated([variable], [gathered * 10.0])
            return offset

        return strategy.run(replica_fn)

    offsets = strategy.experimental_local_results(step())
    assert [int(offset) for offset in offsets] == [0, 2]
    copies = [value.numpy() for value in strategy.experimental_local_results(variable)]
    for copy in copies:
        np.testing.assert_array_equal(copy, [10.0, 10.0, 20.0, 20.0])


def test_assign_replicated_without_a_strategy_is_a_plain_assign():
    variable = tf.Variable([1.0, 2.0])
    assign_replicated([variable], [tf.constant([3.0, 4.0])])
    np.testing.assert_array_equal(variable.numpy(), [3.0, 4.0])
    with pytest.raises(ValueError, match="1 variables but 2 values"):
        assign_replicated([variable], [tf.constant(1.0), tf.constant(2.0)])


class _EpochRecordingTask(RotNetTask):
    """RotNet with 3-step epochs whose hook records when the trainer calls it."""

    calls: list[int] = []

    def steps_per_epoch(self) -> int:
        return 3

    def begin_epoch(self, epoch, model, optimizer, strategy):
        self.calls.append(epoch)
        return {"marker": float(epoch) + 0.5}


def test_trainer_calls_the_epoch_hook_at_every_boundary_and_on_resume(tmp_path):
    task_config = TaskConfig(global_batch_size=4, synchronized_bn=False)
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")

    def train(steps):
        out = io.StringIO()
        _EpochRecordingTask.calls = []
        config = TrainerConfig(model_dir=str(tmp_path), train_steps=steps, log_every=1,
                               checkpoint_every=1)
        Trainer(_EpochRecordingTask(task_config), config, strategy, out=out).train()
        return list(_EpochRecordingTask.calls), out.getvalue()

    epochs, printed = train(7)
    assert epochs == [0, 1, 2]  # before steps 0, 3 and 6
    assert "epoch 2 (step 6) prepared" in printed and "marker 2.5000" in printed
    assert printed.count("step ") >= 7
    epochs, printed = train(8)  # resumes at step 7, inside epoch 2: the hook runs again
    assert epochs == [2]
    assert "resuming from step 7" in printed


def test_resuming_with_other_task_settings_is_refused(tmp_path):
    from selfsup.tasks.checkpoints import write_run_config
    from selfsup.tasks.training import check_resume_compatible

    write_run_config(tmp_path, "example", _ExampleConfig(grid=(2, 2)), {})
    check_resume_compatible(tmp_path, "example", _ExampleConfig(grid=(2, 2)))  # tuple vs JSON list
    with pytest.raises(ConfigError, match="holds a run with queue_size=16, not 32"):
        check_resume_compatible(tmp_path, "example", _ExampleConfig(grid=(2, 2), queue_size=32))
