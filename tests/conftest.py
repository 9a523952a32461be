"""Test-session setup: two logical CPU devices (for mirrored-vs-one-device checks), quiet logs.

Logical devices must be configured before TensorFlow initialises its runtime, so this runs at
import time, before any test module touches TensorFlow.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def two_replica_strategy() -> tf.distribute.MirroredStrategy:
    """One MirroredStrategy over the two logical CPUs, shared by every test that needs one.

    A second strategy on the same devices would reuse collective instance keys, which
    TensorFlow rejects once the dtype of an all-reduce/all-gather differs.
    """
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    return strategy
