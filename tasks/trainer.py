"""The trainer: strategy, custom training loop, checkpoints, TensorBoard and progress.

A custom loop rather than ``Model.fit``: Keras 3 ``fit`` fails under
MultiWorkerMirroredStrategy (keras-team/keras#20585), and the loop is where cross-replica
concerns (loss scaling for the global batch, input sharding, resumable iterators) live, so
tasks stay single-replica code.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

import keras
import tensorflow as tf

from selfsup.models.registry import ConfigError
from selfsup.tasks.base import Task
from selfsup.tasks.checkpoints import model_checkpoint
from selfsup.tasks.distributed_inputs import replica_batches, through_data_service
from selfsup.tasks.multi_worker import checkpoint_manager, is_chief
from selfsup.tasks.nonfinite import NonFiniteSteps, TrainingError, all_finite, undo_if_not_finite
from selfsup.tasks.optimization import make_optimizer, make_schedule
from selfsup.tasks.pictures import image_grid, write_png
from selfsup.tasks.preemption import StopSignals, TrainingStopped, stop_agreement

MIXED_PRECISION_POLICIES = ("none", "mixed_bfloat16", "mixed_float16")
SAMPLES_DIR = "samples"  # the tasks' pictures (Task.sample_images), inside the model dir

__all__ = ["Trainer", "TrainerConfig", "TrainingError", "TrainingStopped"]


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
    # Undo steps with a non-finite loss or weights instead of stopping (tasks/nonfinite.py),
    # and stop after this many of them in a row.
    skip_nonfinite_steps: bool = False
    max_consecutive_skips: int = 10
    tf_data_service: str | None = None  # grpc://host:port of a tf.data service dispatcher

    def __post_init__(self) -> None:
        for name in ("train_steps", "log_every", "checkpoint_every", "max_checkpoints",
                     "max_consecutive_skips"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.weight_decay < 0 or self.warmup_steps < 0:
            raise ConfigError("weight_decay and warmup_steps must not be negative")
        if self.warmup_steps >= self.train_steps:
            raise ConfigError(f"warmup_steps ({self.warmup_steps}) must be below train_steps "
                              f"({self.train_steps}): the learning rate would never peak")
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
        # Progress lines come from the chief only (every worker would print the same).
        self.out = out if is_chief(strategy) else open(os.devnull, "w")  # noqa: SIM115
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
        self.manager = checkpoint_manager(
            strategy, self.checkpoint, config.model_dir, max_to_keep=config.max_checkpoints,
            step_counter=self.optimizer.iterations)
        self._step_fn = self._make_step_fn()
        self._weights_finite = tf.function(lambda: all_finite(self._state_variables()))

    def _distributed_inputs(self, start_step: int):
        """The task's input pipeline, positioned where step ``start_step`` left it.

        Distributed iterators cannot be checkpointed, so a resumed run rebuilds the same seeded
        stream and skips the batches already consumed (each step takes one batch per replica);
        the skipped batches are cheap next to training steps. With several workers each keeps
        its replicas' batches of that one stream (:func:`replica_batches`); with
        ``tf_data_service`` the tf.data service computes them.
        """

        def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
            # Several workers: each keeps its replicas' share of the one-process stream.
            dataset = replica_batches(self.task.build_inputs, input_context, start_step)
            if self.config.tf_data_service:
                dataset = through_data_service(dataset, self.config.tf_data_service)
            return dataset

        return iter(self.strategy.distribute_datasets_from_function(dataset_fn))

    @property
    def step(self) -> int:
        return int(self.optimizer.iterations.numpy())

    def _make_step_fn(self):
        """``step_fn(iterator) -> (logs, finite)``: one step on every replica, its logs
        averaged over them; with ``skip_nonfinite_steps``, a step that left the loss or the
        model's weights non-finite is undone (``finite`` False), else ``finite`` is True."""
        task, model, metrics = self.task, self.model, self.metrics
        optimizer = self.optimizer if len(self.optimizers) == 1 else dict(self.optimizers)

        @tf.function(jit_compile=self.config.jit_compile)
        def replica_step(inputs):
            return task.train_step(inputs, model, optimizer, metrics)

        def run_step(iterator):
            logs = self.strategy.run(replica_step, args=(next(iterator),))
            return {name: self.strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None)
                    for name, value in logs.items()}

        if not self.config.skip_nonfinite_steps:
            return tf.function(lambda iterator: (run_step(iterator), tf.constant(True)))
        # Everything a step changes except the step counters (see tasks/nonfinite.py) and a
        # float16 loss scale, which must keep falling after an overflow.
        optimizers = [getattr(optimizer, "inner_optimizer", optimizer)
                      for optimizer in self.optimizers.values()]
        kept = {id(optimizer.iterations) for optimizer in optimizers}
        restored = [variable for variable in [*model.variables,
                                              *(v for o in optimizers for v in o.variables)]
                    if id(variable) not in kept]
        restored += [variable for metric in metrics for variable in metric.variables]
        return tf.function(lambda iterator: undo_if_not_finite(
            lambda: run_step(iterator), restored, model.variables))

    def _state_variables(self) -> list:
        """The model's and the optimizers' variables (what a checkpoint holds)."""
        variables, seen = [], set()
        optimizers = self.optimizers.values()
        for variable in [*self.model.variables, *(v for o in optimizers for v in o.variables)]:
            if id(variable) not in seen:
                seen.add(id(variable))
                variables.append(variable)
        return variables

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
        if not is_chief(self.strategy):
            return
        samples = self.task.sample_images(self.model)
        with writer.as_default(step=step):
            for name, images in samples.items():
                grid = image_grid(images)
                path = write_png(Path(self.config.model_dir) / SAMPLES_DIR
                                 / f"{name}-{step:06d}.png", grid)
                tf.summary.image(f"{SAMPLES_DIR}/{name}", grid[None], step=step)
                print(f"samples {name}: {path}", file=self.out, flush=True)

    def _log_progress(self, step: int, steps_per_sec: float, writer, skipped: int
                      ) -> dict[str, float]:
        """Prints a progress line, writes the summaries and resets the metrics; returns the
        logged values."""
        config = self.config
        logs = {m.name: float(m.result().numpy()) for m in self.metrics}
        logs["steps_per_sec"] = steps_per_sec
        logs["learning_rate"] = self._learning_rate()
        for metric in self.metrics:
            metric.reset_state()
        with writer.as_default(step=step):
            for name, value in logs.items():
                tf.summary.scalar(name, value)
            if config.skip_nonfinite_steps:
                tf.summary.scalar("skipped_steps", skipped)
        eta = (config.train_steps - step) / max(steps_per_sec, 1e-9)
        shown = "  ".join(f"{k} {v:.4f}" for k, v in logs.items()
                          if k not in ("steps_per_sec", "learning_rate"))
        print(f"step {step}/{config.train_steps}  {shown}  "
              f"lr {logs['learning_rate']:.4g}  {steps_per_sec:.2f} steps/s  "
              f"ETA {format_duration(eta)}" + (f"  skipped {skipped}" if skipped else ""),
              file=self.out, flush=True)
        return logs

    def _save(self, step: int) -> None:
        """Saves ``ckpt-<step>``, unless a weight is not finite: such a checkpoint would only
        resume into the same failure, so training stops with the last good one kept."""
        if not bool(self._weights_finite()):
            raise TrainingError(
                f"weights are not finite after step {step} although its loss was (a "
                f"non-finite gradient?); stopped without saving, the last good checkpoint is "
                f"{self.manager.latest_checkpoint or 'none (no step saved yet)'}")
        self.manager.save(checkpoint_number=step)

    def train(self) -> dict[str, float]:
        """Runs until ``train_steps``; returns the last logged metrics.

        SIGTERM / SIGINT end the run after the step in flight: a checkpoint of that step is
        saved and :class:`TrainingStopped` raised. A non-finite step raises
        :class:`TrainingError` (or is undone, with ``skip_nonfinite_steps``).
        """
        config = self.config
        start_step = self.restore()
        if start_step:
            print(f"resuming from step {start_step} ({self.manager.latest_checkpoint})",
                  file=self.out, flush=True)
        if start_step >= config.train_steps:
            print(f"already trained for {start_step} steps (--train_steps={config.train_steps})",
                  file=self.out, flush=True)
            return {}
        writer = (tf.summary.create_file_writer(str(Path(config.model_dir) / "train"))
                  if is_chief(self.strategy) else tf.summary.create_noop_writer())
        epoch_steps = self.task.steps_per_epoch()
        iterator = None if epoch_steps else self._distributed_inputs(start_step)
        nonfinite = NonFiniteSteps(config.skip_nonfinite_steps, config.max_consecutive_skips)
        last_logs: dict[str, float] = {}
        window_start, window_step = time.perf_counter(), start_step
        run_start = window_start
        step = saved_step = start_step
        stop_agreed = stop_agreement(self.strategy)
        stopping = False
        with StopSignals() as stop:
            while step < config.train_steps:
                stopping = stop_agreed(stop.received is not None)
                if stopping:
                    break
                if epoch_steps and (iterator is None or step % epoch_steps == 0):
                    paused = time.perf_counter()
                    iterator = self._begin_epoch(step, epoch_steps, writer)
                    window_start += time.perf_counter() - paused  # steps/s counts training only
                logs, finite = self._step_fn(iterator)
                step += 1
                # Every step, not just logged ones, so no checkpoint follows a bad step: one
                # scalar read per step (the step has finished by then on CPU anyway).
                nonfinite.after_step(step, float(logs["loss"]), bool(finite),
                                     self.manager.latest_checkpoint)
                if step % config.log_every == 0 or step == config.train_steps:
                    now = time.perf_counter()
                    last_logs = self._log_progress(
                        step, (step - window_step) / max(now - window_start, 1e-9), writer,
                        nonfinite.skipped)
                    window_start, window_step = now, step
                if step % config.checkpoint_every == 0 or step == config.train_steps:
                    self._save(step)
                    saved_step = step
                    self._write_samples(step, writer)
            if stopping:
                if step != saved_step or not self.manager.latest_checkpoint:
                    self._save(step)
                writer.flush()
                stopped = TrainingStopped(stop.received, step, self.manager.latest_checkpoint)
                print(stopped, file=self.out, flush=True)
                raise stopped
        writer.flush()
        elapsed = time.perf_counter() - run_start
        skipped = (f"; {nonfinite.skipped} non-finite step(s) skipped"
                   if nonfinite.skipped else "")
        print(f"trained steps {start_step}..{step} in {format_duration(elapsed)}; "
              f"checkpoint {self.manager.latest_checkpoint}{skipped}", file=self.out, flush=True)
        return last_logs
