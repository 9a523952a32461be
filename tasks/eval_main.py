"""``selfsup-eval``: evaluate a training run or an exported SavedModel by the survey's protocols.

  selfsup-eval --model_dir=runs/rotnet                       # linear probes per layer
  selfsup-eval --model_dir=runs/rotnet --protocol=knn        # weighted kNN (k = 20, 200)
  selfsup-eval --model_dir=runs/rotnet --protocol=svm        # linear SVM, cost by CV
  selfsup-eval --model_dir=runs/rotnet --protocol=lowshot    # 1/5/10/50 labels per class
  selfsup-eval --model_dir=runs/rotnet --protocol=finetune   # whole network, new head
  selfsup-eval --model_dir=runs/rotnet --protocol=pictures --supervised_dir=runs/supervised
  selfsup-eval --saved_model=exports/rotnet/1 --protocol=knn # or an http(s) URL (TF Hub)
  selfsup-eval --model_dir=runs/vcop                         # a video run: clip/video probes
  selfsup-eval --model_dir=runs/pointcloud_ae --protocol=svm # point clouds: the survey's Table 9

A run is evaluated beside a random-init encoder of the same architecture (columns ``trained``
and ``random init``); results go to ``<model_dir>/eval/<protocol>.json`` (the linear protocol:
``linear_probe.json``) and print as a table. A SavedModel (``--saved_model``: a selfsup export,
or any TF2 image feature-vector model with ``--dataset`` and ``--image_size``) is one column,
``saved model``, with results in ``--output_dir``. See :mod:`selfsup.tasks.frozen_eval`
(linear, knn, svm, lowshot), :mod:`selfsup.tasks.image_finetune` and
:mod:`selfsup.tasks.video_finetune` (finetune), :mod:`selfsup.tasks.pictures_eval` (pictures)
and :mod:`selfsup.tasks.video_eval` (video runs). Point-cloud runs and exports
(``pointcloud_ae``) have the svm, linear, knn and lowshot protocols on features max-pooled over
the points (:mod:`selfsup.tasks.point_probe`).
"""

from __future__ import annotations

import os

# TensorFlow prints INFO lines (oneDNN, CUDA probing) on import; a user can still lower it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import sys
from pathlib import Path

from absl import app, flags, logging

from selfsup.models.registry import ConfigError
from selfsup.tasks.linear_eval import PROTOCOLS, format_table, print_progress, validate_settings

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "Training dir of the run to evaluate (selfsup-train's "
                    "--model_dir).")
flags.DEFINE_string("saved_model", None, "Instead of --model_dir: an exported SavedModel (a "
                    "directory, or an http(s) URL fetched through the TF Hub cache, "
                    "$TFHUB_CACHE_DIR).")
flags.DEFINE_string("output_dir", None, "With --saved_model: where results go (default: "
                    "eval/<name of the SavedModel>).")
flags.DEFINE_string("dataset", None, "The labelled dataset to evaluate on. With --saved_model: "
                    "default the one the export records (required for other SavedModels); "
                    "with an image run (linear, knn, svm, lowshot, pictures): default the "
                    "run's (required for av_correspondence runs, whose data has no labels).")
flags.DEFINE_integer("image_size", None, "With --saved_model: input size (default: the one the "
                     "export records).")
flags.DEFINE_string("protocol", "linear", f"One of {', '.join(PROTOCOLS)}.")
flags.DEFINE_integer("train_examples", 10_000,
                     "Labelled train images (videos, for a video run) for the probes: a seeded "
                     "random subset of the train split (all of it if larger).")
flags.DEFINE_integer("test_examples", None,
                     "Test images or videos (a seeded subset of the eval split); default: all.")
flags.DEFINE_integer("pool_size", 3, "Feature maps are adaptively average-pooled to "
                     "pool_size × pool_size before the probe (3 is the reference protocol).")
flags.DEFINE_integer("feature_dims", None, "Pool each map endpoint to about this many features "
                     "instead (its own s × s grid, s = round(sqrt(feature_dims / channels)); "
                     "Goyal et al. 2019 use 9216 on ImageNet).")
flags.DEFINE_integer("seed", 0, "Seed for the example subsets, validation split and the "
                     "random-init encoder.")
flags.DEFINE_boolean("random_init", True, "Also evaluate a random-init encoder of the run's "
                     "architecture (the baseline column).")
flags.DEFINE_string("data_dir", None, "tensorflow-datasets data dir; default: the run's.")
# linear
flags.DEFINE_list("probe_learning_rates", None, "linear: peak Adam learning rates the probe "
                  "chooses from together with the weight decays 1e-5…1e-1, on a 20% validation "
                  "split of the train examples (default: 0.2 only).")
flags.DEFINE_boolean("standardize", True, "linear: standardise features with train statistics "
                     "(= BatchNorm without affine before the linear layer); --nostandardize "
                     "trains on raw features.")
# knn
flags.DEFINE_list("knn_k", ["20", "200"], "knn: neighbour counts (all from one pass).")
flags.DEFINE_float("knn_temperature", 0.07, "knn: τ of the exp(similarity / τ) votes "
                   "(Wu et al. 2018).")
# svm
flags.DEFINE_list("svm_costs", None, "svm: the cost grid searched by cross-validation "
                  "(default 0.01,0.1,1,10,100).")
flags.DEFINE_integer("svm_folds", 3, "svm: cross-validation folds.")
# lowshot
flags.DEFINE_list("lowshot_k", ["1", "5", "10", "50"], "lowshot: labelled examples per class.")
flags.DEFINE_integer("lowshot_seeds", 5, "lowshot: samples per k (seeds seed … seed + n − 1); "
                     "the table shows mean ± std.")
flags.DEFINE_string("lowshot_classifier", "svm", "lowshot: svm, linear or knn.")
# pictures
flags.DEFINE_string("supervised_dir", None, "pictures: a run of --task=supervised whose probe "
                    "curve is drawn beside the pretrained and random-init ones.")
flags.DEFINE_integer("picture_queries", 8, "pictures: test images shown as retrieval queries.")
flags.DEFINE_integer("picture_neighbours", 8, "pictures: nearest train images per query.")
flags.DEFINE_integer("picture_bank_examples", 2000, "pictures: train images searched for "
                     "neighbours.")
flags.DEFINE_integer("picture_embedding_examples", 500, "pictures: test images in the 2-D "
                     "embedding plot.")
flags.DEFINE_string("picture_embedding", "tsne", "pictures: tsne (after PCA to 50 dims) or pca.")
flags.DEFINE_string("picture_endpoint", None, "pictures: endpoint whose features drive "
                    "retrieval and the embedding; default: pool.")
flags.DEFINE_integer("num_points", None, "Point-cloud runs and exports: points per cloud "
                     "(default: the run's / the export's num_points).")
# Video runs (train_examples / test_examples then count videos).
flags.DEFINE_integer("clips_per_video", 10, "Video runs: evenly spaced, centre-cropped clips per "
                     "video; a video's prediction averages its clips' probabilities.")
# finetune
flags.DEFINE_integer("finetune_steps", 1000, "finetune: training steps of each fine-tuning run.")
flags.DEFINE_integer("finetune_batch_size", None, "finetune: examples per step (default: 64 "
                     "images, 16 clips).")
flags.DEFINE_float("finetune_learning_rate", 0.05, "finetune: the head's learning rate.")
flags.DEFINE_string("finetune_optimizer", "sgd", "finetune: sgd, adam, adamw or lamb.")
flags.DEFINE_float("finetune_weight_decay", 5e-4, "finetune: decoupled weight decay.")
flags.DEFINE_float("encoder_learning_rate_scale", 1.0, "finetune: the encoder's learning rate "
                   "is the head's times this (0 freezes its weights; the from-scratch run "
                   "always trains its encoder at the full rate).")
flags.DEFINE_boolean("finetune_from_scratch", True, "finetune: also train a random-init encoder "
                     "the same way (the from-scratch baseline).")
flags.DEFINE_string("finetune_dataset", None, "finetune: a labelled dataset of the run's kind; "
                    "default: the run's.")
flags.DEFINE_string("finetune_train_split", "train", "finetune (images): the labelled split to "
                    "train on (tfds slicing, e.g. train[:10%]).")
flags.DEFINE_string("finetune_eval_split", None, "finetune (images): the split to score; "
                    "default: test, else validation.")
flags.DEFINE_string("finetune_augmentation", "pad_crop_flip", "finetune (images): "
                    "pad_crop_flip, resized_crop_flip, flip or none.")


def _floats(values: list[str] | None, name: str) -> tuple[float, ...] | None:
    if values is None:
        return None
    try:
        return tuple(float(value) for value in values)
    except ValueError:
        raise ConfigError(f"--{name} takes numbers, got {','.join(values)}") from None


def _ints(values: list[str], name: str) -> tuple[int, ...]:
    try:
        return tuple(int(value) for value in values)
    except ValueError:
        raise ConfigError(f"--{name} takes whole numbers, got {','.join(values)}") from None


def frozen_settings():
    from selfsup.tasks.frozen_eval import FrozenEvalSettings

    return FrozenEvalSettings(
        protocol=FLAGS.protocol, train_examples=FLAGS.train_examples,
        test_examples=FLAGS.test_examples, pool_size=FLAGS.pool_size,
        feature_dims=FLAGS.feature_dims, seed=FLAGS.seed, standardize=FLAGS.standardize,
        learning_rates=_floats(FLAGS.probe_learning_rates, "probe_learning_rates"),
        knn_ks=_ints(FLAGS.knn_k, "knn_k"), knn_temperature=FLAGS.knn_temperature,
        svm_costs=_floats(FLAGS.svm_costs, "svm_costs"), svm_folds=FLAGS.svm_folds,
        lowshot_shots=_ints(FLAGS.lowshot_k, "lowshot_k"),
        lowshot_seeds=tuple(range(FLAGS.seed, FLAGS.seed + max(FLAGS.lowshot_seeds, 0))),
        lowshot_classifier=FLAGS.lowshot_classifier)


def finetune(model_dir: str) -> str:
    """--protocol=finetune on a run: image runs through image_finetune, video runs through
    video_finetune; returns the table."""
    from selfsup.tasks.checkpoints import read_run_config
    from selfsup.tasks.linear_eval import is_video_run

    recipe = dict(steps=FLAGS.finetune_steps, learning_rate=FLAGS.finetune_learning_rate,
                  optimizer=FLAGS.finetune_optimizer, weight_decay=FLAGS.finetune_weight_decay,
                  encoder_learning_rate_scale=FLAGS.encoder_learning_rate_scale,
                  from_scratch=FLAGS.finetune_from_scratch, dataset=FLAGS.finetune_dataset)
    if FLAGS.finetune_batch_size is not None:
        recipe["batch_size"] = FLAGS.finetune_batch_size
    common = dict(test_examples=FLAGS.test_examples, seed=FLAGS.seed, data_dir=FLAGS.data_dir,
                  log=print_progress)
    if is_video_run(read_run_config(model_dir), FLAGS.data_dir):
        from selfsup.tasks.video_finetune import (
            FinetuneSettings,
            evaluate_finetune,
            format_finetune_table,
        )

        settings = FinetuneSettings(clips_per_video=FLAGS.clips_per_video, **recipe)
        return format_finetune_table(evaluate_finetune(model_dir, settings, **common))
    from selfsup.tasks.image_finetune import (
        ImageFinetuneSettings,
        evaluate_image_finetune,
        format_image_finetune_table,
    )

    settings = ImageFinetuneSettings(train_split=FLAGS.finetune_train_split,
                                     eval_split=FLAGS.finetune_eval_split,
                                     augmentation=FLAGS.finetune_augmentation, **recipe)
    return format_image_finetune_table(evaluate_image_finetune(model_dir, settings, **common))


def pictures(encoders: dict, dataset: str, image_size, data_dir: str | None, out_dir: Path,
             curves: dict | None) -> str:
    """--protocol=pictures: writes the pictures; returns the list of files."""
    from selfsup.tasks.pictures_eval import PictureSettings, evaluate_pictures

    settings = PictureSettings(
        queries=FLAGS.picture_queries, neighbours=FLAGS.picture_neighbours,
        bank_examples=FLAGS.picture_bank_examples,
        embedding_examples=FLAGS.picture_embedding_examples,
        embedding_method=FLAGS.picture_embedding, feature_endpoint=FLAGS.picture_endpoint,
        seed=FLAGS.seed)
    written = evaluate_pictures(encoders, settings, dataset=dataset, image_size=image_size,
                                data_dir=data_dir, out_dir=out_dir, probe_curves=curves,
                                log=print_progress)
    return "\n".join(f"{name:<28} {path}" for name, path in written.items())


def run_curves() -> dict:
    """Probe curves for --protocol=pictures on a run: pretrained and random init from its
    linear results, supervised from --supervised_dir's."""
    from selfsup.tasks.pictures_eval import linear_curves, read_linear_results

    probe = dict(train_examples=FLAGS.train_examples, test_examples=FLAGS.test_examples,
                 pool_size=FLAGS.pool_size, seed=FLAGS.seed, data_dir=FLAGS.data_dir)
    curves = linear_curves(read_linear_results(FLAGS.model_dir, print_progress, **probe))
    if FLAGS.supervised_dir:
        supervised = read_linear_results(FLAGS.supervised_dir, print_progress, **probe)
        curves.update(linear_curves(supervised, {"trained": "supervised"}))
    return curves


def check_num_points() -> None:
    if FLAGS.num_points is not None and FLAGS.num_points < 1:
        raise ConfigError(f"--num_points must be positive, got {FLAGS.num_points}")


def evaluate_point_run() -> str:
    """A point-cloud run: its trained and random-init encoders under --protocol."""
    from selfsup.tasks import point_probe

    point_probe.check_point_protocol(FLAGS.protocol)
    check_num_points()
    return point_probe.format_point_table(point_probe.evaluate_point_run(
        FLAGS.model_dir, frozen_settings(), data_dir=FLAGS.data_dir,
        with_random_init=FLAGS.random_init, num_points=FLAGS.num_points, log=print_progress))


def evaluate_point_saved_model() -> str:
    """A point-cloud export under --protocol (one column, ``saved model``)."""
    from selfsup.tasks import point_probe

    point_probe.check_point_protocol(FLAGS.protocol)
    check_num_points()
    return point_probe.format_point_table(point_probe.evaluate_point_saved_model(
        FLAGS.saved_model, frozen_settings(), output_dir=saved_model_output_dir(),
        dataset=FLAGS.dataset, num_points=FLAGS.num_points, data_dir=FLAGS.data_dir,
        log=print_progress))


def evaluate_run() -> str:
    from selfsup.tasks.checkpoints import read_run_config
    from selfsup.tasks.frozen_eval import evaluate_run as evaluate_frozen_run
    from selfsup.tasks.linear_eval import evaluate_linear
    from selfsup.tasks.point_probe import is_point_run

    if is_point_run(read_run_config(FLAGS.model_dir)):
        return evaluate_point_run()
    if FLAGS.protocol == "finetune":
        return finetune(FLAGS.model_dir)
    if FLAGS.protocol == "linear":
        return format_table(evaluate_linear(
            FLAGS.model_dir, train_examples=FLAGS.train_examples,
            test_examples=FLAGS.test_examples, pool_size=FLAGS.pool_size, seed=FLAGS.seed,
            data_dir=FLAGS.data_dir, clips_per_video=FLAGS.clips_per_video,
            feature_dims=FLAGS.feature_dims,
            learning_rates=_floats(FLAGS.probe_learning_rates, "probe_learning_rates"),
            standardize=FLAGS.standardize, dataset=FLAGS.dataset, log=print_progress))
    if FLAGS.protocol == "pictures":
        from selfsup.tasks.eval_subjects import run_encoders

        encoders, info = run_encoders(FLAGS.model_dir, seed=FLAGS.seed,
                                      with_random_init=FLAGS.random_init, dataset=FLAGS.dataset)
        if info.video:
            raise ConfigError("pictures are drawn for image encoders; a video run has the "
                              "linear and finetune protocols")
        return pictures(encoders, info.dataset, info.image_size,
                        FLAGS.data_dir if FLAGS.data_dir is not None else info.data_dir,
                        Path(FLAGS.model_dir) / "eval", run_curves())
    from selfsup.tasks.frozen_eval import format_frozen_table

    return format_frozen_table(evaluate_frozen_run(
        FLAGS.model_dir, frozen_settings(), data_dir=FLAGS.data_dir,
        with_random_init=FLAGS.random_init, dataset=FLAGS.dataset, log=print_progress))


def saved_model_output_dir() -> Path:
    if FLAGS.output_dir:
        return Path(FLAGS.output_dir)
    name = FLAGS.saved_model.rstrip("/").rsplit("/", 1)[-1].removesuffix(".tar.gz")
    return Path("eval") / (name or "saved_model")


def evaluate_saved_model() -> str:
    from selfsup.tasks.frozen_eval import evaluate_saved_model as evaluate_frozen_saved_model
    from selfsup.tasks.frozen_eval import format_frozen_table
    from selfsup.tasks.point_probe import point_export_info

    if point_export_info(FLAGS.saved_model) is not None:
        return evaluate_point_saved_model()
    if FLAGS.protocol == "finetune":
        raise ConfigError("finetune trains a run's encoder: use --model_dir (a SavedModel "
                          "fine-tunes in Keras through hub.KerasLayer / TFSMLayer instead)")
    out_dir = saved_model_output_dir()
    if FLAGS.protocol == "pictures":
        from selfsup.tasks.eval_subjects import SAVED_MODEL, saved_model_encoder

        encoder, info = saved_model_encoder(FLAGS.saved_model)
        dataset, image_size = info.data_settings(FLAGS.dataset, FLAGS.image_size)
        return pictures({SAVED_MODEL: encoder}, dataset, image_size, FLAGS.data_dir, out_dir,
                        None)
    return format_frozen_table(evaluate_frozen_saved_model(
        FLAGS.saved_model, frozen_settings(), output_dir=out_dir, dataset=FLAGS.dataset,
        image_size=FLAGS.image_size, data_dir=FLAGS.data_dir, log=print_progress))


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # tfds logs every file it opens at INFO
    try:
        if FLAGS.saved_model and FLAGS.model_dir:
            raise ConfigError("give --model_dir (a run) or --saved_model (an export), not both")
        if FLAGS.saved_model:
            validate_settings(None, FLAGS.protocol, FLAGS.train_examples, FLAGS.test_examples,
                              FLAGS.pool_size, None, require_model_dir=False)
            if FLAGS.protocol not in ("pictures", "finetune"):
                frozen_settings()  # every setting checked before the model loads
            table = evaluate_saved_model()
        else:
            validate_settings(FLAGS.model_dir, FLAGS.protocol, FLAGS.train_examples,
                              FLAGS.test_examples, FLAGS.pool_size, FLAGS.clips_per_video)
            if FLAGS.protocol in ("knn", "svm", "lowshot"):
                frozen_settings()
            table = evaluate_run()
    except ConfigError as error:
        print(f"selfsup-eval: error: {error}", file=sys.stderr)
        sys.exit(2)
    print()
    print(table)


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
