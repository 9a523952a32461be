"""tf.distribute strategies by name; the trainer creates one before any other TF op runs.

``multi_worker`` is MultiWorkerMirroredStrategy configured by the ``TF_CONFIG`` variable (one
process per worker, e.g. from :mod:`selfsup.tasks.launch`); ``tpu`` is TPUStrategy on a Cloud
TPU named by ``--tpu`` (a TPU name or ``grpc://host:port``). No TPU is reachable on the machines
this project is tested on, so only the checks before connecting are exercised there.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from selfsup.models.registry import ConfigError

STRATEGIES = ("mirrored", "one_device", "multi_worker", "tpu")


def split_cpu(num_replicas: int) -> list[str]:
    """Splits the CPU into ``num_replicas`` logical devices (for mirrored training on a CPU).

    Must run before TensorFlow initialises its runtime; if it already has that many logical
    CPUs (e.g. a test session configured them) they are reused.
    """
    # Only list_logical_devices starts the runtime; the checks before it must not.
    physical = tf.config.list_physical_devices("CPU")[0]
    configured = tf.config.get_logical_device_configuration(physical) or []
    if len(configured) < num_replicas:
        try:
            tf.config.set_logical_device_configuration(
                physical, [tf.config.LogicalDeviceConfiguration()] * num_replicas)
        except RuntimeError as error:
            raise ConfigError(f"cannot split the CPU into {num_replicas} devices after "
                              f"TensorFlow started ({error})") from None
    cpus = tf.config.list_logical_devices("CPU")
    return [device.name for device in cpus[:num_replicas]]


def read_tf_config(environ: dict[str, str] | None = None) -> dict | None:
    """The parsed ``TF_CONFIG`` (None when unset), checked for what a worker needs.

    A cluster with workers (or a chief) and this process's ``task`` type and index inside it;
    anything else is a one-line ConfigError, not an error deep inside TensorFlow.
    """
    text = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    if not text:
        return None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({error})") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not (cluster.get("worker") or cluster.get("chief")):
        raise ConfigError('TF_CONFIG needs "cluster" with a "worker" (or "chief") address list')
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ConfigError('TF_CONFIG needs "task": {"type": "worker", "index": <i>}')
    members = cluster.get(task["type"]) or []
    if not isinstance(task["index"], int) or not 0 <= task["index"] < len(members):
        raise ConfigError(f"TF_CONFIG task {task['type']}:{task['index']} is not in its "
                          f"cluster ({len(members)} {task['type']} address(es))")
    return config


def check_strategy_flags(name: str, tpu: str | None) -> None:
    """Rejects unknown names and a ``tpu`` address without (or missing for) ``tpu``."""
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; valid names: {', '.join(STRATEGIES)}")
    if name == "tpu" and not tpu:
        raise ConfigError("--strategy=tpu needs --tpu=<TPU name or grpc://host:port>")
    if name != "tpu" and tpu:
        raise ConfigError(f"--tpu is only used with --strategy=tpu (got --strategy={name})")


def tpu_strategy(tpu: str) -> tf.distribute.TPUStrategy:
    """Connects to the TPU ``tpu`` (name or ``grpc://host:port``), initialises it and returns
    a TPUStrategy over its cores (TensorFlow's documented sequence for Cloud TPUs)."""
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else error
        raise ConfigError(f"cannot reach TPU {tpu!r}: {first_line}") from None
    return tf.distribute.TPUStrategy(resolver)


def make_strategy(name: str, num_cpu_replicas: int = 1,
                  tpu: str | None = None) -> tf.distribute.Strategy:
    """``mirrored`` (all GPUs, else ``num_cpu_replicas`` logical CPUs), ``one_device``,
    ``multi_worker`` (MultiWorkerMirroredStrategy configured by the TF_CONFIG variable; without
    it a single local worker) or ``tpu`` (TPUStrategy on ``tpu``)."""
    check_strategy_flags(name, tpu)
    if name == "tpu":
        return tpu_strategy(tpu)
    if name == "multi_worker":
        read_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_physical_devices("GPU")
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    if gpus:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.MirroredStrategy(split_cpu(num_cpu_replicas))
