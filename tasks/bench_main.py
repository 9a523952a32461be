"""``selfsup-bench``: the zoo results table (every image task at one CPU budget, probed), or
the speed of the pretext tasks against a plain supervised step (``--mode=speed``).

  selfsup-bench --out_dir=bench                       # every task, 300 CPU-s of training each
  selfsup-bench --out_dir=bench --tasks=rotnet,simclr --budget_seconds=60
  selfsup-bench --mode=speed --out_dir=bench --mixed_precision=mixed_bfloat16

The zoo writes ``<out_dir>/zoo.md`` (the survey's Table-4 shape) and ``<out_dir>/zoo.json``;
each run stays in ``<out_dir>/runs/<task>`` and a re-run reuses finished rows (see
:mod:`selfsup.tasks.zoo_bench`). The speed mode writes ``<out_dir>/speed.md`` and
``<out_dir>/speed.json`` (see :mod:`selfsup.tasks.speed_bench`).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import sys

from absl import app, flags, logging

from selfsup.models.registry import ConfigError
from selfsup.tasks.preemption import TrainingStopped
from selfsup.tasks.speed_bench import SPEED_TASKS, SpeedSettings, run_speed
from selfsup.tasks.zoo_bench import (
    DEFAULT_BUDGET_SECONDS,
    DEFAULT_CALIBRATION_STEPS,
    RECIPES,
    BenchSettings,
    run_zoo,
)

FLAGS = flags.FLAGS
flags.DEFINE_string("mode", "zoo", "zoo: pretrain and probe every image task (the results "
                    "table). speed: input pipeline, train step, end to end and a supervised "
                    "reference step per task, with their ratios.")
flags.DEFINE_string("out_dir", "bench", "Where runs, zoo.json and zoo.md (or speed.json and "
                    "speed.md) go.")
flags.DEFINE_list("tasks", list(RECIPES), "Tasks to bench (default: every image task with a "
                  "recipe, supervised last; speed mode: " + ",".join(SPEED_TASKS) + ").")
flags.DEFINE_float("budget_seconds", DEFAULT_BUDGET_SECONDS,
                   "Process CPU seconds of training per task (turned into a step count by "
                   "a short calibration run).")
flags.DEFINE_integer("calibration_steps", DEFAULT_CALIBRATION_STEPS,
                     "The calibration run takes 3n steps and times the last 2n.")
flags.DEFINE_integer("probe_train_examples", 10_000, "Labelled train images for the probes.")
flags.DEFINE_integer("probe_test_examples", None, "Test images (default: the whole split).")
flags.DEFINE_string("data_dir", None, "tensorflow-datasets data dir (default: tfds's own).")
flags.DEFINE_integer("seed", 0, "Seed of every run and of the random-init row.")
# Speed mode only.
flags.DEFINE_integer("batch_size", None, "Speed: global batch of every task (default: each "
                     "task's recipe).")
flags.DEFINE_string("backbone", None, "Speed: backbone of every task (default: each task's "
                    "recipe).")
flags.DEFINE_string("mixed_precision", "none", "Speed: also measure under this policy "
                    "(mixed_bfloat16, mixed_float16) next to float32.")
flags.DEFINE_integer("windows", 5, "Speed: timed windows per rate (the median is reported).")
flags.DEFINE_float("window_seconds", 2.0, "Speed: length of a timed window.")
flags.DEFINE_integer("steps_per_window", 0, "Speed: steps per timed window (0: about "
                     "--window_seconds).")
flags.DEFINE_integer("warmup_steps", 3, "Speed: untimed steps before the windows (after "
                     "the tracing step); they size the windows.")
flags.DEFINE_integer("loss_steps", 30, "Speed: steps of the seeded run whose final loss "
                     "compares the precisions.")

MODES = ("zoo", "speed")
ZOO_FLAGS = ("budget_seconds", "calibration_steps", "probe_train_examples",
             "probe_test_examples")
SPEED_FLAGS = ("batch_size", "backbone", "mixed_precision", "windows", "window_seconds",
               "steps_per_window", "warmup_steps", "loss_steps")


def _check_mode_flags(mode: str) -> None:
    """A flag of the other mode is a mistake worth a message, not something to ignore."""
    others = SPEED_FLAGS if mode == "zoo" else ZOO_FLAGS
    given = [f"--{name}" for name in others if FLAGS[name].present]
    if given:
        raise ConfigError(f"not a --mode={mode} flag: {', '.join(given)}")


def speed_settings() -> SpeedSettings:
    """The speed mode's settings from the flags."""
    return SpeedSettings(
        out_dir=FLAGS.out_dir,
        tasks=tuple(FLAGS.tasks) if FLAGS["tasks"].present else SPEED_TASKS,
        batch_size=FLAGS.batch_size, backbone=FLAGS.backbone,
        mixed_precision=FLAGS.mixed_precision, windows=FLAGS.windows,
        window_seconds=FLAGS.window_seconds, steps_per_window=FLAGS.steps_per_window,
        warmup_steps=FLAGS.warmup_steps, loss_steps=FLAGS.loss_steps, seed=FLAGS.seed,
        config_overrides={"data_dir": FLAGS.data_dir} if FLAGS.data_dir else {})


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    try:
        if FLAGS.mode not in MODES:
            raise ConfigError(f"unknown mode {FLAGS.mode!r}; valid: {', '.join(MODES)}")
        _check_mode_flags(FLAGS.mode)
        if FLAGS.mode == "speed":
            run_speed(speed_settings())
            return
        settings = BenchSettings(
            out_dir=FLAGS.out_dir, tasks=tuple(FLAGS.tasks), budget_seconds=FLAGS.budget_seconds,
            calibration_steps=FLAGS.calibration_steps, data_dir=FLAGS.data_dir,
            probe_train_examples=FLAGS.probe_train_examples,
            probe_test_examples=FLAGS.probe_test_examples, seed=FLAGS.seed)
        run_zoo(settings)
    except ConfigError as error:
        print(f"selfsup-bench: error: {error}", file=sys.stderr)
        sys.exit(2)
    except TrainingStopped as stopped:  # SIGTERM / Ctrl-C: a re-run resumes the unfinished row.
        sys.exit(stopped.exit_code)


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
