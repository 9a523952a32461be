"""What a training run leaves in its model dir, and how encoders are rebuilt from it.

``<model_dir>/run_config.json`` records the task, its config and the trainer settings;
``<model_dir>/ckpt-<step>`` are tf.train checkpoints of the model's variables keyed by their path
inside the model (``backbone/res2_block1/conv1/kernel``, ``head/logits/kernel``) plus the
optimizer. Keras 3 models do not expose their layers to tf.train's object graph, so the keys are
made explicit here; probes and exporters restore just the ``backbone/`` entries.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from selfsup.models.backbone import variable_map
from selfsup.models.registry import ConfigError
from selfsup.tasks.atomic_files import write_json_atomically
from selfsup.tasks.base import BACKBONE_NAME, Task, TaskConfig, task_class

RUN_CONFIG_FILE = "run_config.json"


def model_checkpoint(model: keras.Model, **extra) -> tf.train.Checkpoint:
    """A checkpoint of ``model``'s variables by path (and of ``extra`` trackables)."""
    return tf.train.Checkpoint(model=variable_map(model), **extra)


def write_run_config(model_dir: str | Path, task_name: str, task_config: TaskConfig,
                     trainer_settings: dict[str, Any]) -> dict[str, Any]:
    """Writes ``run_config.json`` (atomically) and returns what it wrote."""
    run_config = {"task": task_name, **dataclasses.asdict(task_config),
                  "trainer": trainer_settings}
    write_json_atomically(Path(model_dir) / RUN_CONFIG_FILE, run_config, sort_keys=True)
    return run_config


def read_run_config(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / RUN_CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{model_dir} is not a selfsup training dir (no {RUN_CONFIG_FILE})")
    return json.loads(path.read_text())


def task_from_run_config(run_config: dict[str, Any]) -> Task:
    """Rebuilds the Task (with its config) that produced ``run_config``."""
    cls = task_class(run_config["task"])
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    return cls(cls.config_class(**{k: v for k, v in run_config.items() if k in fields}))


def build_encoder(run_config: dict[str, Any], seed: int | None = None) -> keras.Model:
    """The run's encoder architecture (as its task builds it), freshly initialised and built.

    Synchronized BatchNorm is switched off: it only matters across replicas while training and
    has the same variables, so the result restores the run's checkpoints.
    """
    if seed is not None:
        keras.utils.set_random_seed(seed)
    task = task_from_run_config({**run_config, "synchronized_bn": False})
    encoder = task.build_backbone()
    encoder(encoder_example_input(encoder, run_config), training=False)
    return encoder


def encoder_example_input(encoder: keras.Model, run_config: dict[str, Any]) -> tf.Tensor:
    """One zero image ``[1, s, s, 3]`` (or clip ``[1, clip_length, s, s, 3]`` for a video
    encoder; zero points ``[1, num_points, 3]`` for a point-cloud encoder) of the run's input
    size: calling the encoder on it builds every variable."""
    size = run_config["image_size"]
    if getattr(encoder, "input_rank", 4) == 3:
        return tf.zeros([1, run_config.get("num_points", 1), 3])
    if getattr(encoder, "input_rank", 4) == 5:
        return tf.zeros([1, run_config.get("clip_length", 1), size, size, 3])
    return tf.zeros([1, size, size, 3])


def latest_checkpoint(model_dir: str | Path) -> str:
    path = tf.train.latest_checkpoint(str(model_dir))
    if path is None:
        raise ConfigError(f"no checkpoint in {model_dir}; train first (selfsup-train)")
    return path


def restore_encoder(model_dir: str | Path) -> tuple[keras.Model, dict[str, Any]]:
    """The trained encoder of the run in ``model_dir`` (latest checkpoint) and its run config."""
    run_config = read_run_config(model_dir)
    encoder = build_encoder(run_config)
    encoder_variables = {f"{BACKBONE_NAME}/{key}": variable
                         for key, variable in variable_map(encoder).items()}
    checkpoint = tf.train.Checkpoint(model=encoder_variables)
    status = checkpoint.restore(latest_checkpoint(model_dir))
    status.expect_partial().assert_existing_objects_matched()
    return encoder, run_config
