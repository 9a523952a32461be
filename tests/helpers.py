"""Small helpers shared by tests (no fixtures with hidden state)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

BIN_DIR = Path(sys.executable).parent


def checkpoint_tensors(checkpoint_path: str) -> dict[str, np.ndarray]:
    """Every saved variable of a checkpoint except bookkeeping counters."""
    reader = tf.train.load_checkpoint(checkpoint_path)
    return {
        name: reader.get_tensor(name)
        for name in reader.get_variable_to_shape_map()
        if "save_counter" not in name and "_CHECKPOINTABLE_OBJECT_GRAPH" not in name
    }


def run_cli(program: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([str(BIN_DIR / program), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def pretrain_and_probe(task_name: str, model_dir: Path, *, train_steps: int, batch_size: int,
                       learning_rate: float, optimizer: str = "sgd", weight_decay: float = 5e-4,
                       task_params: dict | None = None, backbone: str = "resnet_small",
                       train_examples: int = 10_000) -> dict:
    """Pretrains ``task_name`` on Fashion-MNIST (one device) and probes trained vs random init.

    Returns the probe results (``evaluate_linear``'s dict) plus ``best``: column → best top-1 %
    over layers, and ``losses``: the losses the trainer logged.
    """
    import io

    from selfsup.tasks.base import TaskConfig, task_class
    from selfsup.tasks.linear_eval import evaluate_linear
    from selfsup.tasks.trainer import TrainerConfig
    from selfsup.tasks.training import run_training

    cls = task_class(task_name)
    task_config = cls.config_class(backbone=backbone, global_batch_size=batch_size,
                                   **(task_params or {}))
    assert isinstance(task_config, TaskConfig)
    trainer_config = TrainerConfig(model_dir=str(model_dir), train_steps=train_steps,
                                   learning_rate=learning_rate, optimizer=optimizer,
                                   weight_decay=weight_decay, log_every=max(train_steps // 5, 1),
                                   checkpoint_every=train_steps)
    out = io.StringIO()
    run_training(task_name, task_config, trainer_config, "one_device", out=out)
    losses = [float(line.split("loss ")[1].split()[0])
              for line in out.getvalue().splitlines() if line.startswith("step ")]
    results = evaluate_linear(model_dir, train_examples=train_examples, log=lambda message: None)
    results["best"] = {column: max(r["top1"] for r in results[column].values())
                       for column in ("trained", "random_init")}
    results["losses"] = losses
    return results
