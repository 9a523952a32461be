"""Seeding and op determinism for a training run.

Every run is seeded from its config's ``seed``: Python's ``random``, NumPy, TensorFlow's global
seed and Keras' seed generators (``keras.utils.set_random_seed``), and the input pipelines take
their shuffle seeds and per-batch stateless augmentation seeds from the same ``seed``
(``datasets/pipelines.py``, ``datasets/augment.py``, ``datasets/clips.py``). ``deterministic``
adds TensorFlow op determinism: deterministic kernels and tf.data ordering, so the same command
on the same machine gives bitwise-equal weights, at some speed cost.

Not covered by seeds alone: ``tf.nn.dropout`` (``models/blocks.py``) and ``keras.random``
draw from stateful per-op streams, repeatable from a fresh process but not continued by a
resumed run (its dropout masks differ from an uninterrupted run's after the resume).
"""

from __future__ import annotations

import keras
import tensorflow as tf


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seeds Python, NumPy, TensorFlow and Keras with ``seed``; ``deterministic`` also turns on
    TensorFlow op determinism for the rest of the process (TF has no public way back)."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
