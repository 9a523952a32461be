"""One call that runs a training job: resolve names, check the model dir, seed, train.

Shared by ``selfsup-train``, the demo and the tests, so they exercise the same path.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import tensorflow as tf

from selfsup.models import BACKBONES
from selfsup.models.registry import ConfigError
from selfsup.tasks.base import TaskConfig, task_class
from selfsup.tasks.checkpoints import RUN_CONFIG_FILE, read_run_config, write_run_config
from selfsup.tasks.determinism import seed_everything
from selfsup.tasks.multi_worker import is_chief
from selfsup.tasks.preflight import preflight
from selfsup.tasks.strategies import make_strategy
from selfsup.tasks.trainer import Trainer, TrainerConfig
from selfsup.tasks.video_base import check_task_modality

# Settings that must not change when a run is resumed in the same model dir (besides every
# task-specific setting, which may shape the model or the pseudo-labels).
RESUME_INVARIANTS = ("task", "backbone", "backbone_kwargs", "dataset", "image_size")


def ensure_writable_dir(path: str | Path) -> Path:
    """Creates ``path`` if needed and proves it writable, or raises a one-line ConfigError."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ConfigError(f"model dir {str(path)!r} is not writable: "
                          f"{error.strerror or error}") from None
    return path


def check_resume_compatible(model_dir: Path, task_name: str, task_config: TaskConfig) -> None:
    if not (model_dir / RUN_CONFIG_FILE).is_file():
        return
    previous = read_run_config(model_dir)
    # Through JSON, as stored: tuples read back as lists.
    current = json.loads(json.dumps({"task": task_name, **dataclasses.asdict(task_config)}))
    common = {field.name for field in dataclasses.fields(TaskConfig)}
    task_specific = [key for key in current if key not in common and key != "task"]
    for key in (*RESUME_INVARIANTS, *task_specific):
        if previous.get(key) != current.get(key):
            raise ConfigError(
                f"{model_dir} holds a run with {key}={previous.get(key)!r}, not "
                f"{current.get(key)!r}; use a new --model_dir to start another run")


def run_training(task_name: str, task_config: TaskConfig, trainer_config: TrainerConfig,
                 strategy: tf.distribute.Strategy | str = "mirrored", num_cpu_replicas: int = 1,
                 deterministic: bool = False, out=sys.stdout) -> dict[str, Any]:
    """Validates everything cheap first, then trains; returns the last logged metrics.

    ``strategy`` is a name (created here, before other TF work) or a ready strategy.
    """
    cls = task_class(task_name)
    BACKBONES.get(task_config.backbone)
    if not isinstance(task_config, cls.config_class):
        raise ConfigError(f"task {task_name!r} needs a {cls.config_class.__name__}")
    check_task_modality(cls, task_config)
    model_dir = ensure_writable_dir(trainer_config.model_dir)
    check_resume_compatible(model_dir, task_name, task_config)
    if isinstance(strategy, str):
        strategy = make_strategy(strategy, num_cpu_replicas)
    task = cls(task_config)
    source = task.source  # opened (and prepared if needed) now: bad names fail before work
    preflight(task, strategy, out)  # batch vs replicas, video lengths, skipped files
    seed_everything(task_config.seed, deterministic)
    if is_chief(strategy):  # other workers would race the chief writing the same file
        write_run_config(model_dir, task_name, task_config, dataclasses.asdict(trainer_config))
    print(f"training {task_name} / {task_config.backbone} on {source.name} "
          f"({strategy.num_replicas_in_sync} replica(s), global batch "
          f"{task_config.global_batch_size}) into {model_dir}", file=out, flush=True)
    return Trainer(task, trainer_config, strategy, out=out).train()
