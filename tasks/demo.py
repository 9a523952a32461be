"""``selfsup-demo``: the quick start's main job, end to end on the embedded default data.

Pretrains RotNet (Gidaris et al. 2018) on Fashion-MNIST for a few CPU minutes, linear-probes
every endpoint of the trained encoder against a random-init encoder of the same architecture
(the survey's Table-4 protocol), exports the encoder for TF Hub / TF Serving, and prints the
results table and the export path.

``--video``: the same for video: 3D RotNet (Jing et al. 2018) with an R3D-18 at 1/8 width on
the offline ``sample_videos`` clips, the video probe (clip and video top-1, clip retrieval)
against a random-init encoder, and a video feature-vector export.
"""

from __future__ import annotations

import os

# TensorFlow prints INFO lines (oneDNN, CUDA probing) on import; a user can still lower it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import sys
from pathlib import Path

from absl import app, flags, logging

from selfsup.models.registry import ConfigError

flags.DEFINE_bool("video", False, "Run the video demo (3D RotNet on sample_videos) instead.")
flags.DEFINE_string("model_dir", None, "Training dir (resumed if it exists); default "
                    "runs/demo_rotnet, or runs/demo_rotnet3d with --video.")
flags.DEFINE_string("export_dir", "exports", "Base dir of exported models.")
flags.DEFINE_integer("train_steps", None, "Pretraining steps; default 700 (RotNet, batch 64 "
                     "images × 4 rotations), or 300 with --video (batch 8 clips × 4).")
flags.DEFINE_integer("probe_train_examples", 10_000, "Labelled train images for the probes.")
flags.DEFINE_string("data_dir", None, "tensorflow-datasets data dir (default: tfds's own).")

FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    del argv
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # tfds logs every file it opens at INFO
    from selfsup.tasks.preemption import TrainingStopped

    try:
        from selfsup.export.export_main import export_trained_encoder
        from selfsup.tasks import TaskConfig
        from selfsup.tasks.checkpoints import restore_encoder
        from selfsup.tasks.linear_eval import evaluate_linear, format_table, probe_metrics
        from selfsup.tasks.trainer import TrainerConfig
        from selfsup.tasks.training import run_training
        from selfsup.tasks.video_base import VideoTaskConfig

        if FLAGS.video:
            model_dir = FLAGS.model_dir or "runs/demo_rotnet3d"
            train_steps = FLAGS.train_steps or 300
            print("== 1/3 pretraining 3D RotNet on sample_videos", flush=True)
            # The sizes of the video tests' slow checks (a few CPU minutes): the 8 sample
            # clips, 8 frames of 32 px crops from 40 px frames, R3D-18 at 1/8 width.
            task, learning_rate, log_every = "rotnet3d", 0.05, 25
            task_config = VideoTaskConfig(
                backbone="r3d_18", backbone_kwargs={"width_multiplier": 0.125},
                dataset="sample_videos", data_dir=FLAGS.data_dir, image_size=32, frame_size=40,
                clip_length=8, global_batch_size=8)
            probe_settings = {"clips_per_video": 4}
        else:
            model_dir = FLAGS.model_dir or "runs/demo_rotnet"
            train_steps = FLAGS.train_steps or 700
            print("== 1/3 pretraining RotNet on Fashion-MNIST", flush=True)
            task, learning_rate, log_every = "rotnet", 0.1, 50
            task_config = TaskConfig(backbone="resnet_small", dataset="fashion_mnist",
                                     data_dir=FLAGS.data_dir, image_size=28, global_batch_size=64)
            probe_settings = {"train_examples": FLAGS.probe_train_examples}
        run_training(task, task_config,
                     TrainerConfig(model_dir=model_dir, train_steps=train_steps,
                                   learning_rate=learning_rate, log_every=log_every,
                                   checkpoint_every=250),
                     strategy="mirrored")
        print("== 2/3 linear probes: trained vs random-init encoder", flush=True)
        results = evaluate_linear(model_dir, **probe_settings)
        print("== 3/3 exporting the encoder", flush=True)
        encoder, run_config = restore_encoder(model_dir)
        run_config = {**run_config, "metrics": probe_metrics(results)}
        path = export_trained_encoder(encoder, run_config, FLAGS.export_dir)
    except ConfigError as error:
        print(f"selfsup-demo: error: {error}", file=sys.stderr)
        sys.exit(2)
    except TrainingStopped as stopped:  # SIGTERM / Ctrl-C: the trainer said where it stopped.
        sys.exit(stopped.exit_code)
    print()
    print(format_table(results))
    print(f"\nprobe results: {Path(model_dir) / 'eval' / 'linear_probe.json'}")
    print(f"exported encoder: {Path(path).resolve()}")


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
