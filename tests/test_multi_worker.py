"""Scale: worker processes on 127.0.0.1, the launcher, tf.data service and the flag checks.

The reference for multi-worker runs is one process with MirroredStrategy over the session's
two logical CPUs: the same global batch split the same way (4 + 4), synchronized BatchNorm
over both replicas, and the same per-replica data and augmentation seeds (each worker keeps
its replicas' share of the one-process stream: ``replica_batches``).
"""

from __future__ import annotations

import collections
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from helpers import ONE_STAGE, SUBSET, checkpoint_tensors, run_cli
from selfsup.models.registry import ConfigError
from selfsup.tasks import task_class
from selfsup.tasks.distributed_inputs import (
    check_data_service_address,
    replica_batches,
    through_data_service,
)
from selfsup.tasks.launch import check_launch_flags, free_ports, launch_local_workers, worker_args
from selfsup.tasks.strategies import check_strategy_flags, make_strategy, read_tf_config
from selfsup.tasks.trainer import TrainerConfig
from selfsup.tasks.training import run_training

STEPS, BATCH, SEED, LEARNING_RATE = 3, 8, 3, 0.05
# The command-line twin of ``_one_process_run``'s configs (flag defaults = config defaults).
TINY_FLAGS = [f"--train_split={SUBSET}", f"--batch_size={BATCH}", f"--train_steps={STEPS}",
              "--log_every=1", "--checkpoint_every=1", f"--learning_rate={LEARNING_RATE}",
              "--lr_schedule=constant", f"--seed={SEED}",
              *(f"--backbone_param={name}={value!r}" for name, value in ONE_STAGE.items())]


def _one_process_run(task_name: str, model_dir: Path, strategy) -> None:
    cls = task_class(task_name)
    task_config = cls.config_class(train_split=SUBSET, global_batch_size=BATCH, seed=SEED,
                                   backbone_kwargs=dict(ONE_STAGE))
    trainer_config = TrainerConfig(model_dir=str(model_dir), train_steps=STEPS, log_every=1,
                                   checkpoint_every=1, learning_rate=LEARNING_RATE,
                                   lr_schedule="constant")
    run_training(task_name, task_config, trainer_config, strategy, out=io.StringIO())


def _assert_same_final_weights(workers_dir: Path, reference_dir: Path) -> None:
    """The chief's last checkpoint equals the reference's within 1e-5, and the steps moved
    the weights far more than that (step 1 → step 3 of the reference)."""
    workers = checkpoint_tensors(str(workers_dir / f"ckpt-{STEPS}"))
    reference = checkpoint_tensors(str(reference_dir / f"ckpt-{STEPS}"))
    assert workers.keys() == reference.keys()
    assert len([name for name in reference if "kernel" in name]) >= 4
    for name, value in reference.items():
        np.testing.assert_allclose(workers[name], value, atol=1e-5, rtol=0, err_msg=name)
    first = checkpoint_tensors(str(reference_dir / "ckpt-1"))
    moved = max(float(np.abs(reference[name] - first[name]).max())
                for name in reference if "kernel" in name)
    assert moved > 1e-3, moved


def _assert_chief_alone_wrote(model_dir: Path, output: str) -> None:
    """Progress and summaries come from worker 0 only; the others' temporary checkpoints are
    gone."""
    assert f"[worker 0] step {STEPS}/{STEPS}" in output, output
    assert "[worker 1] step" not in output, output
    assert len(list((model_dir / "train").glob("events.out.tfevents.*"))) == 1
    assert not list(model_dir.glob(".worker-tmp*"))


def test_two_worker_processes_end_with_the_weights_of_one_process_rotnet(
        tmp_path, two_replica_strategy):
    out, err = io.StringIO(), io.StringIO()
    code = launch_local_workers(2, ["--task=rotnet", f"--model_dir={tmp_path / 'workers'}",
                                    *TINY_FLAGS], out=out, err=err)
    assert code == 0, out.getvalue() + err.getvalue()
    _one_process_run("rotnet", tmp_path / "one", two_replica_strategy)
    _assert_same_final_weights(tmp_path / "workers", tmp_path / "one")
    _assert_chief_alone_wrote(tmp_path / "workers", out.getvalue())


@pytest.mark.slow
@pytest.mark.parametrize("task_name", ["simclr", "moco"])
def test_two_worker_processes_from_the_command_line_match_one_process(
        tmp_path, two_replica_strategy, task_name):
    """Cross-replica negatives gathered across processes (SimCLR; MoCo's queue and momentum
    update), via ``selfsup-train --num_workers=2``."""
    result = run_cli("selfsup-train", "--num_workers=2", f"--task={task_name}",
                     f"--model_dir={tmp_path / 'workers'}", *TINY_FLAGS)
    assert result.returncode == 0, result.stdout + result.stderr
    _one_process_run(task_name, tmp_path / "one", two_replica_strategy)
    _assert_same_final_weights(tmp_path / "workers", tmp_path / "one")
    _assert_chief_alone_wrote(tmp_path / "workers", result.stdout)


# -- each input pipeline keeps its replicas' share of the one-process stream ----------------

def _batch_key(batch) -> bytes:
    return b"".join(np.asarray(part).tobytes() for part in tf.nest.flatten(batch))


@pytest.mark.parametrize("task_name", ["rotnet", pytest.param("simclr", marks=pytest.mark.slow)])
def test_each_pipeline_gets_its_replicas_batches_of_the_one_process_stream(task_name):
    cls = task_class(task_name)
    task = cls(cls.config_class(train_split=SUBSET, global_batch_size=16, seed=SEED))
    one = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                     num_replicas_in_sync=4)
    whole = [_batch_key(b) for b in task.build_inputs(one).take(12).as_numpy_iterator()]
    assert len(set(whole)) == 12  # distinct batches: the check below can tell them apart
    # 4 replicas on 2 workers: worker p feeds replicas 2p and 2p + 1 of every step.
    for pipeline in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline,
                                             num_replicas_in_sync=4)
        got = [_batch_key(b) for b in
               replica_batches(task.build_inputs, context).take(4).as_numpy_iterator()]
        expected = [whole[step * 4 + pipeline * 2 + j] for step in range(2) for j in range(2)]
        assert got == expected
        resumed = replica_batches(task.build_inputs, context, start_step=1)
        first = _batch_key(next(resumed.as_numpy_iterator()))
        assert first == whole[4 + pipeline * 2]


# -- tf.data service --------------------------------------------------------------------

class _DataService:
    """A dispatcher and ``num_workers`` tf.data workers in this process on 127.0.0.1."""

    def __init__(self, num_workers: int) -> None:
        service = tf.data.experimental.service
        ports = free_ports(num_workers)
        addresses = [f"127.0.0.1:{port}" for port in ports]
        # Static (HINT) sharding needs the dispatcher to know its workers.
        self.dispatcher = service.DispatchServer(
            service.DispatcherConfig(port=0, worker_addresses=addresses))
        self.address = self.dispatcher.target
        # Workers learn of new jobs on their heartbeat: a short one keeps the test short.
        self.workers = [
            service.WorkerServer(service.WorkerConfig(
                dispatcher_address=self.address.removeprefix("grpc://"), worker_address=address,
                port=port, heartbeat_interval_ms=100))
            for address, port in zip(addresses, ports, strict=True)]


def test_tf_data_service_serves_the_local_batches_as_a_multiset():
    service = _DataService(num_workers=2)
    cls = task_class("rotnet")
    task = cls(cls.config_class(train_split=SUBSET, global_batch_size=8, seed=SEED))
    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                         num_replicas_in_sync=1)

    def stream():
        return replica_batches(task.build_inputs, context).take(6)

    local = collections.Counter(_batch_key(b) for b in stream().as_numpy_iterator())
    served = collections.Counter(
        _batch_key(b) for b in through_data_service(stream(), service.address)
        .as_numpy_iterator())
    assert len(local) == 6
    assert served == local


@pytest.mark.slow
def test_training_through_tf_data_service_matches_local_training(tmp_path):
    """One tf.data worker serves the stream in order: the same weights as a local run."""
    service = _DataService(num_workers=1)
    weights = {}
    for name, address in (("local", None), ("service", service.address)):
        cls = task_class("rotnet")
        task_config = cls.config_class(train_split=SUBSET, global_batch_size=BATCH, seed=SEED,
                                       backbone_kwargs=dict(ONE_STAGE))
        trainer_config = TrainerConfig(model_dir=str(tmp_path / name), train_steps=STEPS,
                                       log_every=1, checkpoint_every=STEPS,
                                       learning_rate=LEARNING_RATE, tf_data_service=address)
        run_training("rotnet", task_config, trainer_config,
                     tf.distribute.OneDeviceStrategy("/cpu:0"), out=io.StringIO())
        weights[name] = checkpoint_tensors(str(tmp_path / name / f"ckpt-{STEPS}"))
    for key, value in weights["local"].items():
        np.testing.assert_array_equal(weights["service"][key], value, err_msg=key)


@pytest.mark.parametrize("address", ["localhost:5050", "grpc://:5050", "grpc://host:port",
                                     "http://host:5050"])
def test_malformed_data_service_address_is_a_config_error(address):
    with pytest.raises(ConfigError, match="grpc://<dispatcher host>:<port>"):
        check_data_service_address(address)
    assert check_data_service_address("grpc://10.0.0.2:5050") == "grpc://10.0.0.2:5050"


# -- DeepCluster: every worker trains on the chief's clusters ----------------------------

_DEEPCLUSTER_WORKER = """
import json, os, sys
import tensorflow as tf
strategy = tf.distribute.MultiWorkerMirroredStrategy()  # before any other TF op
import keras
from selfsup.tasks.clustering import cluster_features
from selfsup.tasks.deepcluster import DeepClusterConfig, DeepClusterTask, _epoch_seed
index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
config = DeepClusterConfig(train_split="train[:256]", global_batch_size=8, num_clusters=4,
                           cluster_examples=64, feature_batch_size=64,
                           backbone_kwargs=json.loads(sys.argv[1]))
task = DeepClusterTask(config)
# Built outside the strategy, seeded per worker: each worker has its own weights, so its own
# features and its own local clustering.
keras.utils.set_random_seed(100 + index)
model = task.build_model()
model(task.dummy_inputs(), training=False)
optimizer = keras.optimizers.SGD(0.1)
optimizer.build(model.trainable_variables)
own = cluster_features(task.extract_features(model), 4, config.pca_dim, _epoch_seed(0, 0),
                       config.kmeans_iterations)
task.begin_epoch(0, model, optimizer, strategy)
print("result", json.dumps({"own": own.tolist(), "used": task.assignments.tolist()}))
"""


@pytest.mark.slow
def test_deepcluster_workers_train_on_the_chiefs_assignments(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_DEEPCLUSTER_WORKER)
    kwargs = json.dumps({key: list(value) if isinstance(value, tuple) else value
                         for key, value in ONE_STAGE.items()})
    out, err = io.StringIO(), io.StringIO()
    code = launch_local_workers(2, [kwargs], out=out, err=err,
                                program=[sys.executable, str(script)])
    assert code == 0, out.getvalue() + err.getvalue()
    results = {}
    for line in out.getvalue().splitlines():
        if " result " in line:
            worker = int(line.split("]")[0].removeprefix("[worker "))
            results[worker] = json.loads(line.split(" result ", 1)[1])
    assert sorted(results) == [0, 1]
    # The workers' own clusterings differ (different weights), the ones used do not.
    assert results[0]["own"] != results[1]["own"]
    assert results[0]["used"] == results[1]["used"] == results[0]["own"]


# -- the launcher ------------------------------------------------------------------------

_FAKE_WORKER = """
import json, os, sys, time
config = json.loads(os.environ["TF_CONFIG"])
index = config["task"]["index"]
print(json.dumps({"config": config, "args": sys.argv[1:], "pid": os.getpid()}), flush=True)
if index == 1:
    sys.exit(3)
time.sleep(600)
"""


def test_launcher_stops_the_other_workers_when_one_fails(tmp_path):
    """Worker 1 exits with 3 while worker 0 would wait forever (as a MultiWorkerMirrored
    peer would): the launcher stops worker 0 and exits with 3; each worker had its own
    TF_CONFIG on 127.0.0.1 and the forwarded flags."""
    script = tmp_path / "worker.py"
    script.write_text(_FAKE_WORKER)
    out, err = io.StringIO(), io.StringIO()
    start = time.monotonic()
    code = launch_local_workers(2, ["--task=rotnet", "--num_workers=2", "--seed=4"], out=out,
                                err=err, program=[sys.executable, str(script)])
    assert code == 3
    assert time.monotonic() - start < 60
    assert "worker 1 exited with code 3; stopped the other workers" in err.getvalue()
    reports = {}
    for line in out.getvalue().splitlines():
        worker, _, rest = line.partition("] ")
        reports[int(worker.removeprefix("[worker "))] = json.loads(rest)
    assert sorted(reports) == [0, 1]
    addresses = reports[0]["config"]["cluster"]["worker"]
    assert len(set(addresses)) == 2 and all(a.startswith("127.0.0.1:") for a in addresses)
    for index, report in reports.items():
        assert report["config"] == {"cluster": {"worker": addresses},
                                    "task": {"type": "worker", "index": index}}
        assert report["args"] == ["--task=rotnet", "--seed=4", "--strategy=multi_worker"]
    with pytest.raises(ProcessLookupError):
        os.kill(reports[0]["pid"], 0)  # stopped and reaped


def test_worker_args_drop_num_workers_in_both_spellings():
    assert worker_args(["--num_workers", "3", "--task=jigsaw", "--num_workers=3"]) == [
        "--task=jigsaw", "--strategy=multi_worker"]


def test_num_workers_needs_the_multi_worker_strategy():
    check_launch_flags(2, "mirrored", strategy_given=False)  # the default is replaced
    check_launch_flags(2, "multi_worker", strategy_given=True)
    with pytest.raises(ConfigError, match="runs --strategy=multi_worker, not --strategy=tpu"):
        check_launch_flags(2, "tpu", strategy_given=True)
    with pytest.raises(ConfigError, match="num_workers must be positive"):
        check_launch_flags(0, "mirrored", strategy_given=False)


# -- strategy flags ----------------------------------------------------------------------

def test_tpu_strategy_needs_a_tpu_address_and_the_address_needs_the_strategy():
    with pytest.raises(ConfigError, match="--strategy=tpu needs --tpu="):
        make_strategy("tpu")  # refused before any attempt to reach a TPU
    with pytest.raises(ConfigError, match="--tpu is only used with --strategy=tpu"):
        check_strategy_flags("mirrored", "grpc://10.0.0.2:8470")
    with pytest.raises(ConfigError, match="unknown strategy 'gpu'; valid names: mirrored"):
        check_strategy_flags("gpu", None)
    check_strategy_flags("tpu", "my-tpu")


@pytest.mark.slow
def test_tpu_without_address_is_a_one_line_error_on_the_command_line(tmp_path):
    result = run_cli("selfsup-train", "--strategy=tpu", f"--model_dir={tmp_path}")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "selfsup-train: error: --strategy=tpu needs --tpu=" in result.stderr


@pytest.mark.parametrize(("text", "message"), [
    ("{not json", "TF_CONFIG is not valid JSON"),
    ('{"task": {"type": "worker", "index": 0}}', 'needs "cluster" with a "worker"'),
    ('{"cluster": {"worker": ["a:1"]}}', 'needs "task"'),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}',
     "task worker:2 is not in its cluster (2 worker address(es))"),
])
def test_malformed_tf_config_is_a_config_error(text, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_tf_config({"TF_CONFIG": text})


def test_tf_config_of_a_worker_is_read():
    config = {"cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]},
              "task": {"type": "worker", "index": 1}}
    assert read_tf_config({"TF_CONFIG": json.dumps(config)}) == config
    assert read_tf_config({}) is None
