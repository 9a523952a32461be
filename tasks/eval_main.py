"""``selfsup-eval``: linear probes of a trained encoder against a random-init one, per layer.

  selfsup-eval --model_dir=runs/rotnet            # --protocol=linear (the only one so far)

Prints a table (endpoints × trained / random init) and writes
``<model_dir>/eval/linear_probe.json``; see :mod:`selfsup.tasks.linear_eval`.
"""

from __future__ import annotations

import os

# TensorFlow prints INFO lines (oneDNN, CUDA probing) on import; a user can still lower it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import sys

from absl import app, flags, logging

from selfsup.models.registry import ConfigError
from selfsup.tasks.linear_eval import evaluate_linear, format_table, validate_settings

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "Training dir of the run to evaluate (selfsup-train's "
                    "--model_dir).")
flags.DEFINE_string("protocol", "linear", "Evaluation protocol: linear (per-layer linear probes "
                    "on frozen features).")
flags.DEFINE_integer("train_examples", 10_000,
                     "Labelled train images for the probes: a seeded random subset of the train "
                     "split (all of it if larger).")
flags.DEFINE_integer("test_examples", None,
                     "Test images (a seeded subset of the eval split); default: all of them.")
flags.DEFINE_integer("pool_size", 3, "Feature maps are adaptively average-pooled to "
                     "pool_size × pool_size before the probe (3 is the reference protocol).")
flags.DEFINE_integer("seed", 0, "Seed for the example subsets, validation split and the "
                     "random-init encoder.")
flags.DEFINE_string("data_dir", None, "tensorflow-datasets data dir; default: the run's.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # tfds logs every file it opens at INFO
    try:
        validate_settings(FLAGS.model_dir, FLAGS.protocol, FLAGS.train_examples,
                          FLAGS.test_examples, FLAGS.pool_size)
        results = evaluate_linear(
            FLAGS.model_dir, train_examples=FLAGS.train_examples,
            test_examples=FLAGS.test_examples, pool_size=FLAGS.pool_size, seed=FLAGS.seed,
            data_dir=FLAGS.data_dir)
    except ConfigError as error:
        print(f"selfsup-eval: error: {error}", file=sys.stderr)
        sys.exit(2)
    print()
    print(format_table(results))


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
