"""``selfsup-bench``: the zoo results table (every image task at one CPU budget, probed).

  selfsup-bench --out_dir=bench                       # every task, 300 CPU-s of training each
  selfsup-bench --out_dir=bench --tasks=rotnet,simclr --budget_seconds=60

Writes ``<out_dir>/zoo.md`` (the survey's Table-4 shape) and ``<out_dir>/zoo.json``; each run
stays in ``<out_dir>/runs/<task>`` and a re-run reuses finished rows (see
:mod:`selfsup.tasks.zoo_bench`).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import sys

from absl import app, flags, logging

from selfsup.models.registry import ConfigError
from selfsup.tasks.zoo_bench import (
    DEFAULT_BUDGET_SECONDS,
    DEFAULT_CALIBRATION_STEPS,
    RECIPES,
    BenchSettings,
    run_zoo,
)

FLAGS = flags.FLAGS
flags.DEFINE_string("mode", "zoo", "zoo: pretrain and probe every image task (the results "
                    "table).")
flags.DEFINE_string("out_dir", "bench", "Where runs, zoo.json and zoo.md go.")
flags.DEFINE_list("tasks", list(RECIPES), "Tasks to bench (default: every image task with a "
                  "recipe, supervised last).")
flags.DEFINE_float("budget_seconds", DEFAULT_BUDGET_SECONDS,
                   "Process CPU seconds of training per task (turned into a step count by "
                   "a short calibration run).")
flags.DEFINE_integer("calibration_steps", DEFAULT_CALIBRATION_STEPS,
                     "The calibration run takes 3n steps and times the last 2n.")
flags.DEFINE_integer("probe_train_examples", 10_000, "Labelled train images for the probes.")
flags.DEFINE_integer("probe_test_examples", None, "Test images (default: the whole split).")
flags.DEFINE_string("data_dir", None, "tensorflow-datasets data dir (default: tfds's own).")
flags.DEFINE_integer("seed", 0, "Seed of every run and of the random-init row.")

MODES = ("zoo",)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    try:
        if FLAGS.mode not in MODES:
            raise ConfigError(f"unknown mode {FLAGS.mode!r}; valid: {', '.join(MODES)}")
        settings = BenchSettings(
            out_dir=FLAGS.out_dir, tasks=tuple(FLAGS.tasks), budget_seconds=FLAGS.budget_seconds,
            calibration_steps=FLAGS.calibration_steps, data_dir=FLAGS.data_dir,
            probe_train_examples=FLAGS.probe_train_examples,
            probe_test_examples=FLAGS.probe_test_examples, seed=FLAGS.seed)
        run_zoo(settings)
    except ConfigError as error:
        print(f"selfsup-bench: error: {error}", file=sys.stderr)
        sys.exit(2)


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
