"""The trainer: strategy, custom training loop, checkpoints, TensorBoard and progress.

A custom loop rather than ``Model.fit``: Keras 3 ``fit`` fails under
MultiWorkerMirroredStrategy (keras-team/keras#20585), and the loop is where cross-replica
concerns (loss scaling for the global batch, input sharding, resumable iterators) live, so
tasks stay single-replica code.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path

import keras
import tensorflow as tf

from selfsup.models.registry import ConfigError
from selfsup.tasks.base import Task
from selfsup.tasks.checkpoints import model_checkpoint
from selfsup.tasks.optimization import make_optimizer, make_schedule
from selfsup.tasks.pictures import image_grid, write_png

MIXED_PRECISION_POLICIES = ("none", "mixed_bfloat16", "mixed_float16")
SAMPLES_DIR = "samples"  # the tasks' pictures (Task.sample_images), inside the model dir


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message names the step."""


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    """Loop, optimisation and bookkeeping settings of one training run."""

    model_dir: str
    train_steps: int = 1000
    learning_rate: float = 0.1
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    lr_schedule: str = "cosine"
    warmup_steps: int = 0
    mixed_precision: str = "none"
    jit_compile: bool = False
    log_every: int = 50
    checkpoint_every: int = 500
    max_checkpoints: int = 3

    def __post_init__(self) -> None:
        for name in ("train_steps", "log_every", "checkpoint_every", "max_checkpoints"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.weight_decay < 0 or self.warmup_steps < 0:
            raise ConfigError("weight_decay and warmup_steps must not be negative")
        if self.mixed_precision not in MIXED_PRECISION_POLICIES:
            raise ConfigError(f"unknown mixed precision policy {self.mixed_precision!r}; "
                              f"valid: {', '.join(MIXED_PRECISION_POLICIES)}")


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class Trainer:
    """Trains ``task`` under ``strategy`` into ``config.model_dir``; resumes if it holds a run."""

    def __init__(self, task: Task, config: TrainerConfig, strategy: tf.distribute.Strategy,
                 out=sys.stdout) -> None:
        self.task = task
        self.config = config
        self.strategy = strategy
        self.out = out
        if config.mixed_precision != "none":
            keras.mixed_precision.set_global_policy(config.mixed_precision)
        with strategy.scope():
            self.model = task.build_model()
            self.model(task.dummy_inputs(), training=False)
            self.optimizers = {}
            for name, group in task.optimizer_groups(self.model).items():
                schedule = make_schedule(config.lr_schedule,
                                         config.learning_rate * group.learning_rate_scale,
                                         config.train_steps, config.warmup_steps)
                optimizer = make_optimizer(
                    config.optimizer, schedule, config.weight_decay,
                    loss_scale=config.mixed_precision == "mixed_float16", beta_1=group.beta_1)
                optimizer.build(group.variables)
                self.optimizers[name] = optimizer
            # The first group's optimizer counts the run's steps (Task.optimizer_groups).
            self.optimizer = next(iter(self.optimizers.values()))
            self.metrics = task.build_metrics()
        # One group: the task's steps get the optimizer itself, and checkpoints keep the layout
        # of runs before optimizer groups existed. Several: a dict, each checkpointed by name.
        others = {f"optimizer_{name}": optimizer
                  for name, optimizer in list(self.optimizers.items())[1:]}
        self.checkpoint = model_checkpoint(self.model, optimizer=self.optimizer, **others)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, config.model_dir, max_to_keep=config.max_checkpoints,
            step_counter=self.optimizer.iterations)
        self._step_fn = self._make_step_fn()

    def _distributed_inputs(self, start_step: int):
        """The task's input pipeline, positioned where step ``start_step`` left it.

        Distributed iterators cannot be checkpointed, so a resumed run rebuilds the same seeded
        stream and skips the batches already consumed (each step takes one batch per replica
        fed by this pipeline); the skipped batches are cheap next to training steps.
        """

        def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
            dataset = self.task.build_inputs(input_context)
            batches_per_step = (input_context.num_replicas_in_sync
                                // input_context.num_input_pipelines)
            return dataset.skip(start_step * batches_per_step) if start_step else dataset

        return iter(self.strategy.distribute_datasets_from_function(dataset_fn))

    @property
    def step(self) -> int:
        return int(self.optimizer.iterations.numpy())

    def _make_step_fn(self):
        task, model, metrics = self.task, self.model, self.metrics
        optimizer = self.optimizer if len(self.optimizers) == 1 else dict(self.optimizers)

        @tf.function(jit_compile=self.config.jit_compile)
        def replica_step(inputs):
            return task.train_step(inputs, model, optimizer, metrics)

        @tf.function
        def step_fn(iterator):
            logs = self.strategy.run(replica_step, args=(next(iterator),))
            return {name: self.strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None)
                    for name, value in logs.items()}

        return step_fn

    def restore(self) -> int:
        """Restores the latest checkpoint of ``model_dir`` if any; returns the step reached."""
        if self.manager.latest_checkpoint:
            self.checkpoint.restore(self.manager.latest_checkpoint).assert_consumed()
        return self.step

    def _learning_rate(self) -> float:
        lr = self.optimizer.learning_rate
        return float(lr.numpy() if hasattr(lr, "numpy") else lr)

    def _begin_epoch(self, step: int, epoch_steps: int, writer):
        """Runs the task's between-epoch work; returns the epoch's input iterator at ``step``."""
        epoch = step // epoch_steps
        start = time.perf_counter()
        logs = self.task.begin_epoch(epoch, self.model, self.optimizer, self.strategy)
        with writer.as_default(step=step):
            for name, value in logs.items():
                tf.summary.scalar(f"epoch/{name}", value)
        shown = "  ".join(f"{name} {value:.4f}" for name, value in logs.items())
        print(f"epoch {epoch} (step {step}) prepared in "
              f"{format_duration(time.perf_counter() - start)}  {shown}".rstrip(),
              file=self.out, flush=True)
        return self._distributed_inputs(step % epoch_steps)

    def _write_samples(self, step: int, writer) -> None:
        """The task's pictures at ``step``: ``<model_dir>/samples/<name>-<step>.png`` grids
        and TensorBoard images under ``samples/<name>``."""
        samples = self.task.sample_images(self.model)
        with writer.as_default(step=step):
            for name, images in samples.items():
                grid = image_grid(images)
                path = write_png(Path(self.config.model_dir) / SAMPLES_DIR
                                 / f"{name}-{step:06d}.png", grid)
                tf.summary.image(f"{SAMPLES_DIR}/{name}", grid[None], step=step)
                print(f"samples {name}: {path}", file=self.out, flush=True)

    def train(self) -> dict[str, float]:
        """Runs until ``train_steps``; returns the last logged metrics."""
        config = self.config
        start_step = self.restore()
        if start_step:
            print(f"resuming from step {start_step} ({self.manager.latest_checkpoint})",
                  file=self.out, flush=True)
        if start_step >= config.train_steps:
            print(f"already trained for {start_step} steps (--train_steps={config.train_steps})",
                  file=self.out, flush=True)
            return {}
        writer = tf.summary.create_file_writer(str(Path(config.model_dir) / "train"))
        epoch_steps = self.task.steps_per_epoch()
        iterator = None if epoch_steps else self._distributed_inputs(start_step)
        last_logs: dict[str, float] = {}
        window_start, window_step = time.perf_counter(), start_step
        run_start = window_start
        step = start_step
        while step < config.train_steps:
            if epoch_steps and (iterator is None or step % epoch_steps == 0):
                paused = time.perf_counter()
                iterator = self._begin_epoch(step, epoch_steps, writer)
                window_start += time.perf_counter() - paused  # steps/s counts training only
            logs = self._step_fn(iterator)
            step += 1
            if step % config.log_every == 0 or step == config.train_steps:
                loss = float(logs["loss"].numpy())
                if not math.isfinite(loss):
                    raise TrainingError(f"loss is {loss} at step {step}; the last good "
                                        f"checkpoint is {self.manager.latest_checkpoint}")
                now = time.perf_counter()
                steps_per_sec = (step - window_step) / max(now - window_start, 1e-9)
                last_logs = {m.name: float(m.result().numpy()) for m in self.metrics}
                last_logs["steps_per_sec"] = steps_per_sec
                last_logs["learning_rate"] = self._learning_rate()
                for metric in self.metrics:
                    metric.reset_state()
                with writer.as_default(step=step):
                    for name, value in last_logs.items():
                        tf.summary.scalar(name, value)
                eta = (config.train_steps - step) / max(steps_per_sec, 1e-9)
                shown = "  ".join(f"{k} {v:.4f}" for k, v in last_logs.items()
                                  if k not in ("steps_per_sec", "learning_rate"))
                print(f"step {step}/{config.train_steps}  {shown}  "
                      f"lr {last_logs['learning_rate']:.4g}  {steps_per_sec:.2f} steps/s  "
                      f"ETA {format_duration(eta)}",
                      file=self.out, flush=True)
                window_start, window_step = now, step
            if step % config.checkpoint_every == 0 or step == config.train_steps:
                self.manager.save(checkpoint_number=step)
                self._write_samples(step, writer)
        writer.flush()
        elapsed = time.perf_counter() - run_start
        print(f"trained steps {start_step}..{step} in {format_duration(elapsed)}; "
              f"checkpoint {self.manager.latest_checkpoint}", file=self.out, flush=True)
        return last_logs
