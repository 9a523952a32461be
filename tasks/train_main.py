"""``selfsup-train``: pretrain an encoder with a registered task.

  selfsup-train --task=rotnet --backbone=resnet_small --dataset=fashion_mnist \\
      --model_dir=runs/rotnet --train_steps=2000 --batch_size=64
"""

from __future__ import annotations

import os

# TensorFlow prints INFO lines (oneDNN, CUDA probing) on import; a user can still lower it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import ast
import sys
from typing import Any

from absl import app, flags, logging

from selfsup.models.registry import ConfigError

FLAGS = flags.FLAGS
flags.DEFINE_string("task", "rotnet", "Registered task name (e.g. rotnet).")
flags.DEFINE_multi_string("task_param", [],
                          "name=value of a task-specific setting (repeatable), e.g. "
                          "--task_param=temperature=0.2; an unknown name lists the valid ones.")
flags.DEFINE_list("subtasks", None, "With --task=multitask: the tasks sharing the encoder, "
                  "e.g. rotnet,colorization,jigsaw.")
flags.DEFINE_list("weights", None, "With --task=multitask: one loss weight per sub-task "
                  "(default: 1 each).")
flags.DEFINE_string("backbone", None, "Registered backbone name, or hub:<path or URL> of a TF2 "
                    "image feature-vector SavedModel (trainable); default: the task's own, "
                    "resnet_small for image tasks, r3d_18 for video tasks.")
flags.DEFINE_multi_string("backbone_param", [],
                          "name=value of a backbone constructor option (repeatable), e.g. "
                          "--backbone_param=width_multiplier=0.25; values are Python literals "
                          "(numbers, tuples, True/False) or plain strings.")
flags.DEFINE_string("dataset", None,
                    "A tensorflow-datasets name, image_folder:<root> (images in "
                    "<root>/<split>/<label>/) or, for video tasks, video_folder:<root> (video "
                    "files in <root>/<split>/<label>/) or a tfds video set (ucf101); default: "
                    "the task's own (fashion_mnist for image tasks, sample_videos for video).")
flags.DEFINE_string("data_dir", None, "tensorflow-datasets data dir (default: tfds's own).")
flags.DEFINE_string("train_split", "train", "Split to pretrain on (tfds slicing allowed).")
flags.DEFINE_integer("image_size", None,
                     "Square input size (video: the crop of every frame); default: the "
                     "dataset's own (28 for Fashion-MNIST, 112 for video).")
flags.DEFINE_string("model_dir", None, "Where checkpoints, summaries and run_config.json go; "
                    "an existing run there is resumed.")
flags.DEFINE_integer("train_steps", 1000, "Total optimizer steps (a resumed run continues).")
flags.DEFINE_integer("batch_size", None, "Global batch of source images (RotNet makes 4× views); "
                     "default: the task's (64; pointcloud_ae 32).")
flags.DEFINE_float("learning_rate", 0.1, "Peak learning rate.")
flags.DEFINE_string("optimizer", "sgd", "sgd (Nesterov momentum 0.9) | adam | adamw | lamb.")
flags.DEFINE_float("weight_decay", 5e-4, "Decoupled weight decay.")
flags.DEFINE_string("lr_schedule", "cosine", "cosine | constant.")
flags.DEFINE_integer("warmup_steps", 0, "Linear warm-up steps before the cosine decay.")
flags.DEFINE_string("strategy", "mirrored",
                    "mirrored | one_device | multi_worker (MultiWorkerMirroredStrategy, cluster "
                    "from the TF_CONFIG variable) | tpu (TPUStrategy, needs --tpu).")
flags.DEFINE_integer("num_workers", 1,
                     "Above 1: start this many local worker processes on 127.0.0.1, each "
                     "running --strategy=multi_worker with its own TF_CONFIG (worker 0 is the "
                     "chief); their output is printed prefixed [worker i].")
flags.DEFINE_string("tpu", None,
                    "With --strategy=tpu: the Cloud TPU name or grpc://host:port. Untested "
                    "here: the project's machines have no TPU.")
flags.DEFINE_string("tf_data_service", None,
                    "grpc://host:port of a tf.data service dispatcher: the input pipeline runs "
                    "on its workers (sharding policy HINT: the dispatcher must list its "
                    "workers; each serves every W-th batch of the seeded stream).")
flags.DEFINE_integer("num_cpu_replicas", 1,
                     "Without GPUs, split the CPU into this many logical devices for mirrored.")
flags.DEFINE_bool("synchronized_bn", True, "Cross-replica BatchNorm statistics.")
flags.DEFINE_string("mixed_precision", "none", "none | mixed_bfloat16 | mixed_float16.")
flags.DEFINE_bool("jit_compile", False, "XLA-compile the train step (slower on CPUs).")
flags.DEFINE_integer("seed", 0, "Seed for initialisation and data order.")
flags.DEFINE_bool("deterministic", False,
                  "TensorFlow op determinism: the same command on the same machine gives "
                  "bitwise-equal weights (slower). Python, NumPy, TF, Keras and the input "
                  "pipelines are seeded from --seed either way.")
flags.DEFINE_bool("skip_nonfinite_steps", False,
                  "Undo a step whose loss or weights are NaN/Inf and go on (the progress line "
                  "counts them) instead of stopping at it; the default stops, keeping the last "
                  "good checkpoint.")
flags.DEFINE_integer("max_consecutive_skips", 10,
                     "With --skip_nonfinite_steps: stop after this many non-finite steps in a "
                     "row.")
flags.DEFINE_integer("log_every", 50, "Steps between progress lines and summaries.")
flags.DEFINE_integer("checkpoint_every", 500, "Steps between checkpoints.")


def parse_backbone_params(params: list[str]) -> dict[str, Any]:
    """``["name=value", ...]`` → backbone constructor keywords (literals, else strings)."""
    kwargs: dict[str, Any] = {}
    for item in params:
        name, separator, text = item.partition("=")
        if not separator or not name.isidentifier():
            raise ConfigError(f"backbone parameter {item!r} is not of the form name=value")
        try:
            kwargs[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            kwargs[name] = text
    return kwargs


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # tfds logs every file it opens at INFO
    try:
        if not FLAGS.model_dir:
            raise ConfigError("--model_dir is required")
        if FLAGS.num_cpu_replicas < 1:
            raise ConfigError(f"num_cpu_replicas must be positive, got {FLAGS.num_cpu_replicas}")
        from selfsup.tasks.launch import check_launch_flags, launch_local_workers

        check_launch_flags(FLAGS.num_workers, FLAGS.strategy, FLAGS["strategy"].present)
        if FLAGS.num_workers > 1:
            sys.exit(launch_local_workers(FLAGS.num_workers, sys.argv[1:]))
        # Imported here so that flag errors above print before TensorFlow loads.
        from selfsup.datasets import open_source
        from selfsup.datasets.av_sources import is_av_dataset
        from selfsup.datasets.point_clouds import is_point_dataset
        from selfsup.datasets.video_sources import is_video_dataset, open_video_source
        from selfsup.models import BACKBONES
        from selfsup.tasks import task_class
        from selfsup.tasks.base import parse_task_params
        from selfsup.tasks.distributed_inputs import check_data_service_address
        from selfsup.tasks.multitask import multitask_params
        from selfsup.tasks.strategies import check_strategy_flags, make_strategy
        from selfsup.tasks.trainer import TrainerConfig
        from selfsup.tasks.training import ensure_writable_dir, run_training

        trainer_config = TrainerConfig(
            model_dir=FLAGS.model_dir, train_steps=FLAGS.train_steps,
            learning_rate=FLAGS.learning_rate, optimizer=FLAGS.optimizer,
            weight_decay=FLAGS.weight_decay, lr_schedule=FLAGS.lr_schedule,
            warmup_steps=FLAGS.warmup_steps, mixed_precision=FLAGS.mixed_precision,
            jit_compile=FLAGS.jit_compile, log_every=FLAGS.log_every,
            checkpoint_every=FLAGS.checkpoint_every, tf_data_service=FLAGS.tf_data_service,
            skip_nonfinite_steps=FLAGS.skip_nonfinite_steps,
            max_consecutive_skips=FLAGS.max_consecutive_skips)
        if FLAGS.tf_data_service:
            check_data_service_address(FLAGS.tf_data_service)
        check_strategy_flags(FLAGS.strategy, FLAGS.tpu)
        cls = task_class(FLAGS.task)
        task_params = parse_task_params(cls.config_class, FLAGS.task_param)
        task_params.update(multitask_params(FLAGS.task, FLAGS.subtasks, FLAGS.weights))
        defaults = cls.config_class.__dataclass_fields__
        backbone = FLAGS.backbone or defaults["backbone"].default
        dataset = FLAGS.dataset or defaults["dataset"].default
        backbone_kwargs = parse_backbone_params(FLAGS.backbone_param)
        BACKBONES.get(backbone)
        ensure_writable_dir(FLAGS.model_dir)
        # TensorFlow requires the strategy before any other op; opening the dataset runs ops.
        strategy = make_strategy(FLAGS.strategy, FLAGS.num_cpu_replicas, tpu=FLAGS.tpu)
        image_size = FLAGS.image_size
        if image_size is None and is_point_dataset(dataset):
            image_size = defaults["image_size"].default  # point clouds have no image size
        if image_size is None and is_av_dataset(dataset):
            image_size = defaults["image_size"].default  # the audio-visual task's own crop
        if image_size is None:
            image_size = (open_video_source(dataset, FLAGS.data_dir)
                          if is_video_dataset(dataset, FLAGS.data_dir)
                          else open_source(dataset, FLAGS.data_dir)).default_image_size
        task_config = cls.config_class(
            backbone=backbone, backbone_kwargs=backbone_kwargs, dataset=dataset,
            data_dir=FLAGS.data_dir, train_split=FLAGS.train_split, image_size=image_size,
            global_batch_size=(FLAGS.batch_size if FLAGS.batch_size is not None
                               else defaults["global_batch_size"].default),
            synchronized_bn=FLAGS.synchronized_bn,
            seed=FLAGS.seed, **task_params)
        from selfsup.tasks.trainer import TrainingError, TrainingStopped

        try:
            run_training(FLAGS.task, task_config, trainer_config, strategy,
                         deterministic=FLAGS.deterministic)
        except TrainingStopped as stopped:
            # Pre-empted or Ctrl-C: the trainer printed where it stopped. 128 + the signal's
            # number, the shell's code for "ended by this signal": no crash, no finished run.
            sys.exit(stopped.exit_code)
        except TrainingError as error:
            print(f"selfsup-train: error: {error}", file=sys.stderr)
            sys.exit(1)
    except ConfigError as error:
        print(f"selfsup-train: error: {error}", file=sys.stderr)
        sys.exit(2)


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
