"""``selfsup-eval``: linear probes of a trained encoder against a random-init one, per layer.

  selfsup-eval --model_dir=runs/rotnet            # --protocol=linear (the default)
  selfsup-eval --model_dir=runs/vcop              # a video run: clip/video probes + retrieval
  selfsup-eval --model_dir=runs/vcop --protocol=finetune --finetune_steps=2000

Prints a table (endpoints × trained / random init) and writes
``<model_dir>/eval/linear_probe.json``; see :mod:`selfsup.tasks.linear_eval` and, for video
runs, :mod:`selfsup.tasks.video_eval` (``--protocol=finetune``: action-recognition fine-tuning
of the encoder and of a random-init twin, ``<model_dir>/eval/finetune.json``).
"""

from __future__ import annotations

import os

# TensorFlow prints INFO lines (oneDNN, CUDA probing) on import; a user can still lower it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import sys

from absl import app, flags, logging

from selfsup.models.registry import ConfigError
from selfsup.tasks.linear_eval import (
    evaluate_linear,
    format_table,
    print_progress,
    validate_settings,
)

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "Training dir of the run to evaluate (selfsup-train's "
                    "--model_dir).")
flags.DEFINE_string("protocol", "linear", "Evaluation protocol: linear (per-layer linear probes "
                    "on frozen features; video runs also get clip retrieval) or finetune "
                    "(video runs: action-recognition fine-tuning).")
flags.DEFINE_integer("train_examples", 10_000,
                     "Labelled train images (videos, for a video run) for the probes: a seeded "
                     "random subset of the train split (all of it if larger).")
flags.DEFINE_integer("test_examples", None,
                     "Test images or videos (a seeded subset of the eval split); default: all.")
flags.DEFINE_integer("pool_size", 3, "Feature maps are adaptively average-pooled to "
                     "pool_size × pool_size before the probe (3 is the reference protocol).")
flags.DEFINE_integer("seed", 0, "Seed for the example subsets, validation split and the "
                     "random-init encoder.")
flags.DEFINE_string("data_dir", None, "tensorflow-datasets data dir; default: the run's.")
# Video runs (train_examples / test_examples then count videos).
flags.DEFINE_integer("clips_per_video", 10, "Video runs: evenly spaced, centre-cropped clips per "
                     "video; a video's prediction averages its clips' probabilities.")
flags.DEFINE_integer("finetune_steps", 1000, "finetune: training steps of each fine-tuning run.")
flags.DEFINE_integer("finetune_batch_size", 16, "finetune: clips per step.")
flags.DEFINE_float("finetune_learning_rate", 0.05, "finetune: the head's learning rate.")
flags.DEFINE_string("finetune_optimizer", "sgd", "finetune: sgd, adam, adamw or lamb.")
flags.DEFINE_float("finetune_weight_decay", 5e-4, "finetune: decoupled weight decay.")
flags.DEFINE_float("encoder_learning_rate_scale", 1.0, "finetune: the encoder's learning rate "
                   "is the head's times this (0 freezes its weights).")
flags.DEFINE_boolean("finetune_from_scratch", True, "finetune: also train a random-init encoder "
                     "the same way (the from-scratch baseline).")
flags.DEFINE_string("finetune_dataset", None, "finetune: a labelled video dataset; default: the "
                    "run's.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # tfds logs every file it opens at INFO
    try:
        validate_settings(FLAGS.model_dir, FLAGS.protocol, FLAGS.train_examples,
                          FLAGS.test_examples, FLAGS.pool_size, FLAGS.clips_per_video)
        if FLAGS.protocol == "finetune":
            from selfsup.tasks.video_finetune import (
                FinetuneSettings,
                evaluate_finetune,
                format_finetune_table,
            )

            settings = FinetuneSettings(
                steps=FLAGS.finetune_steps, batch_size=FLAGS.finetune_batch_size,
                learning_rate=FLAGS.finetune_learning_rate, optimizer=FLAGS.finetune_optimizer,
                weight_decay=FLAGS.finetune_weight_decay,
                encoder_learning_rate_scale=FLAGS.encoder_learning_rate_scale,
                clips_per_video=FLAGS.clips_per_video, from_scratch=FLAGS.finetune_from_scratch,
                dataset=FLAGS.finetune_dataset)
            results = evaluate_finetune(FLAGS.model_dir, settings,
                                        test_examples=FLAGS.test_examples, seed=FLAGS.seed,
                                        data_dir=FLAGS.data_dir, log=print_progress)
            table = format_finetune_table(results)
        else:
            results = evaluate_linear(
                FLAGS.model_dir, train_examples=FLAGS.train_examples,
                test_examples=FLAGS.test_examples, pool_size=FLAGS.pool_size, seed=FLAGS.seed,
                data_dir=FLAGS.data_dir, clips_per_video=FLAGS.clips_per_video)
            table = format_table(results)
    except ConfigError as error:
        print(f"selfsup-eval: error: {error}", file=sys.stderr)
        sys.exit(2)
    print()
    print(table)


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
