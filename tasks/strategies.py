"""tf.distribute strategies by name; the trainer creates one before any other TF op runs."""

from __future__ import annotations

import tensorflow as tf

from selfsup.models.registry import ConfigError

STRATEGIES = ("mirrored", "one_device", "multi_worker")


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


def make_strategy(name: str, num_cpu_replicas: int = 1) -> tf.distribute.Strategy:
    """``mirrored`` (all GPUs, else ``num_cpu_replicas`` logical CPUs), ``one_device``, or
    ``multi_worker`` (MultiWorkerMirroredStrategy configured by the TF_CONFIG variable)."""
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; valid names: {', '.join(STRATEGIES)}")
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_physical_devices("GPU")
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    if gpus:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.MirroredStrategy(split_cpu(num_cpu_replicas))
