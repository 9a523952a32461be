"""``selfsup-demo``: the quick start's main job, end to end on the embedded default data.

Pretrains RotNet (Gidaris et al. 2018) on Fashion-MNIST for a few CPU minutes, linear-probes
every endpoint of the trained encoder against a random-init encoder of the same architecture
(the survey's Table-4 protocol), exports the encoder for TF Hub / TF Serving, and prints the
results table and the export path.
"""

from __future__ import annotations

import os

# TensorFlow prints INFO lines (oneDNN, CUDA probing) on import; a user can still lower it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import sys
from pathlib import Path

from absl import app, flags, logging

from selfsup.models.registry import ConfigError

flags.DEFINE_string("model_dir", "runs/demo_rotnet", "Training dir (resumed if it exists).")
flags.DEFINE_string("export_dir", "exports", "Base dir of exported models.")
flags.DEFINE_integer("train_steps", 700, "RotNet steps (batch 64 images × 4 rotations).")
flags.DEFINE_integer("probe_train_examples", 10_000, "Labelled train images for the probes.")
flags.DEFINE_string("data_dir", None, "tensorflow-datasets data dir (default: tfds's own).")

FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    del argv
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # tfds logs every file it opens at INFO
    try:
        from selfsup.export.export_main import export_trained_encoder
        from selfsup.tasks import TaskConfig
        from selfsup.tasks.checkpoints import restore_encoder
        from selfsup.tasks.linear_eval import evaluate_linear, format_table, probe_metrics
        from selfsup.tasks.trainer import TrainerConfig
        from selfsup.tasks.training import run_training

        print("== 1/3 pretraining RotNet on Fashion-MNIST", flush=True)
        run_training(
            "rotnet",
            TaskConfig(backbone="resnet_small", dataset="fashion_mnist",
                       data_dir=FLAGS.data_dir, image_size=28, global_batch_size=64),
            TrainerConfig(model_dir=FLAGS.model_dir, train_steps=FLAGS.train_steps,
                          learning_rate=0.1, log_every=50, checkpoint_every=250),
            strategy="mirrored")
        print("== 2/3 linear probes: trained vs random-init encoder", flush=True)
        results = evaluate_linear(FLAGS.model_dir, train_examples=FLAGS.probe_train_examples)
        print("== 3/3 exporting the encoder", flush=True)
        encoder, run_config = restore_encoder(FLAGS.model_dir)
        run_config = {**run_config, "metrics": probe_metrics(results)}
        path = export_trained_encoder(encoder, run_config, FLAGS.export_dir)
    except ConfigError as error:
        print(f"selfsup-demo: error: {error}", file=sys.stderr)
        sys.exit(2)
    print()
    print(format_table(results))
    print(f"\nprobe results: {Path(FLAGS.model_dir) / 'eval' / 'linear_probe.json'}")
    print(f"exported encoder: {Path(path).resolve()}")


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
