"""Video evaluation of a training run: clip → video linear probes and clip-retrieval checks.

The video protocol of the survey's Table 6 (Jing & Tian, §7.2): a video is represented by
several clips, each clip is classified, and a video's prediction averages its clips' softmax
probabilities (Xu et al. 2019 average 10 uniformly sampled clips per test video; the default
here). For the linear probe the encoder is frozen:

  * clips: ``clips_per_video`` evenly spaced windows of every video of the train and eval split
    (``datasets.clips.evaluation_clips``: centre crop, no augmentation), ``clip_length`` frames
    taken every ``frame_stride`` as the run was trained;
  * features: every endpoint of the trained encoder and of a random-init twin, 5-D maps averaged
    over time then pooled to ``pool_size × pool_size`` (:mod:`selfsup.tasks.features`);
  * classifier: the softmax-regression probe of :mod:`selfsup.tasks.linear_probe` (standardised
    features, L2 strength chosen on a held-out 20% of the train clips), trained on clip features
    labelled with their video's label;
  * scores: clip-level top-1 and video-level top-1 (mean clip probabilities, then argmax) on the
    eval split, per endpoint, trained vs random init.

The clip-retrieval check (:mod:`selfsup.tasks.clip_retrieval`) asks whether two clips of one
video are closer than clips of different videos, on the eval split's pooled clip features.

``selfsup-eval --model_dir=<video run>`` runs the probe and the retrieval check and writes
``<model_dir>/eval/linear_probe.json`` (the image probe's shape plus ``video_top1`` per endpoint
and a ``retrieval`` block); ``--protocol=finetune`` fine-tunes the encoder for action recognition
(:mod:`selfsup.tasks.video_finetune`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from selfsup.models.registry import ConfigError
from selfsup.tasks.atomic_files import write_json_atomically
from selfsup.tasks.clip_retrieval import retrieval_metrics
from selfsup.tasks.features import DEFAULT_POOL_SIZE, extract_features
from selfsup.tasks.linear_eval import COLUMNS

# Xu et al. 2019 (VCOP) and other video SSL papers of the survey's Table 6 score a test
# video by averaging the predictions of 10 uniformly sampled clips.
DEFAULT_CLIPS_PER_VIDEO = 10
DEFAULT_BATCH_SIZE = 16  # clips per encoder call: small, video features are large


# --- clip → video maths --------------------------------------------------------------------


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``[n, k]`` logits (shifted by the row maximum, so it never
    overflows)."""
    logits = np.asarray(logits, np.float64)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def video_probabilities(clip_probabilities: np.ndarray, clip_video_ids: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
    """``(video ids, mean probabilities)``: the sorted distinct ids ``[v]`` and, per video,
    the mean of its clips' class probabilities ``[v, k]``."""
    clip_probabilities = np.asarray(clip_probabilities, np.float64)
    videos, index = np.unique(np.asarray(clip_video_ids), return_inverse=True)
    sums = np.zeros((len(videos), clip_probabilities.shape[1]))
    np.add.at(sums, index, clip_probabilities)
    counts = np.bincount(index, minlength=len(videos))
    return videos, sums / counts[:, None]


def video_labels(clip_labels: np.ndarray, clip_video_ids: np.ndarray) -> np.ndarray:
    """The label of each video (sorted ids, as :func:`video_probabilities`); every clip of a
    video must carry its video's label."""
    clip_labels, clip_video_ids = np.asarray(clip_labels), np.asarray(clip_video_ids)
    videos, first, index = np.unique(clip_video_ids, return_index=True, return_inverse=True)
    labels = clip_labels[first]
    if np.any(labels[index] != clip_labels):
        raise ValueError("clips of one video carry different labels")
    return labels


def clip_top1(clip_probabilities: np.ndarray, clip_labels: np.ndarray) -> float:
    """Top-1 accuracy (%) of the clips' own predictions."""
    predicted = np.argmax(clip_probabilities, axis=1)
    return 100.0 * float(np.mean(predicted == np.asarray(clip_labels)))


def video_top1(clip_probabilities: np.ndarray, clip_labels: np.ndarray,
               clip_video_ids: np.ndarray) -> float:
    """Top-1 accuracy (%) over videos: each video predicts the argmax of its clips' mean
    softmax probabilities."""
    _, probabilities = video_probabilities(clip_probabilities, clip_video_ids)
    labels = video_labels(clip_labels, clip_video_ids)
    return 100.0 * float(np.mean(np.argmax(probabilities, axis=1) == labels))


# --- clips and features ----------------------------------------------------------------------


def evaluation_clip_dataset(source, split: str, *, frame_size: int, image_size: int,
                            clips_per_video: int, clip_length: int, frame_stride: int,
                            videos: np.ndarray | None = None, first: int | None = None
                            ) -> tf.data.Dataset:
    """One element per clip, videos in file order: ``(float32 [clip_length, s, s, 3], int64
    [2] = (label, video index))`` from ``clips_per_video`` evenly spaced centre-cropped windows
    per video. ``videos``: keep only these video indices; ``first``: only the first videos."""
    from selfsup.datasets.clips import evaluation_clips

    dataset = evaluation_clips(source, split, frame_size=frame_size, image_size=image_size,
                               num_windows=clips_per_video, num_frames=clip_length,
                               frame_stride=frame_stride, first=first)
    if videos is not None:
        keep = tf.constant(np.isin(np.arange(source.num_videos(split)), videos))
        dataset = dataset.filter(lambda windows, label, index: tf.gather(keep, index))

    def clips_of(windows, label, index):
        tags = tf.tile(tf.stack([label, index])[None], [tf.shape(windows)[0], 1])
        return tf.data.Dataset.from_tensor_slices((windows, tags))

    return dataset.flat_map(clips_of)


def clip_features(encoder: keras.Model | Callable, source, split: str, *, frame_size: int,
                  image_size: int, clips_per_video: int, clip_length: int, frame_stride: int,
                  videos: np.ndarray | None = None, first: int | None = None,
                  pool_size: int = DEFAULT_POOL_SIZE, batch_size: int = DEFAULT_BATCH_SIZE,
                  log: Callable[[str], None] = logging.info, description: str = "features",
                  ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """``({endpoint: [clips, features]}, labels [clips], video indices [clips])`` of the
    frozen ``encoder`` over :func:`evaluation_clip_dataset`."""
    dataset = evaluation_clip_dataset(
        source, split, frame_size=frame_size, image_size=image_size,
        clips_per_video=clips_per_video, clip_length=clip_length, frame_stride=frame_stride,
        videos=videos, first=first)
    count = len(videos) if videos is not None else min(first or math.inf,
                                                        source.num_videos(split))
    features, tags = extract_features(encoder, dataset, pool_size=pool_size,
                                      batch_size=batch_size, num_examples=count * clips_per_video,
                                      log=log, description=description, unit="clips")
    return features, tags[:, 0], tags[:, 1]


def classify_clips(logits_of: Callable[[tf.Tensor], tf.Tensor], source, split: str, *,
                   frame_size: int, image_size: int, clips_per_video: int, clip_length: int,
                   frame_stride: int, videos: np.ndarray | None = None,
                   first: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                   log: Callable[[str], None] = logging.info) -> dict[str, float]:
    """Clip- and video-level top-1 (%) of a classifier (``logits_of(clips)`` → ``[b, k]``)
    over evenly spaced clips of every video of ``split``, and how many of each it saw."""

    def probabilities(batch, training=False):
        return {"probabilities": tf.nn.softmax(tf.cast(logits_of(batch), tf.float32))}

    outputs, labels, video_ids = clip_features(
        probabilities, source, split, frame_size=frame_size, image_size=image_size,
        clips_per_video=clips_per_video, clip_length=clip_length, frame_stride=frame_stride,
        videos=videos, first=first, batch_size=batch_size, log=log,
        description=f"classifying {split} clips")
    scores = outputs["probabilities"]
    return {"clip_top1": round(clip_top1(scores, labels), 4),
            "video_top1": round(video_top1(scores, labels, video_ids), 4),
            "clips": len(labels), "videos": len(np.unique(video_ids))}


# --- the video linear probe ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class VideoProbeResult:
    """One endpoint's video probe: clip and video top-1 (%), the probe's chosen L2 strength
    and validation top-1 (on held-out train clips), and the eval split's retrieval checks."""

    top1: float
    video_top1: float
    weight_decay: float
    validation_top1: float
    num_features: int
    triplet_retrieval: float
    nearest_neighbour: float


def video_probe_results(encoder: keras.Model | Callable, source, *, frame_size: int,
                        image_size: int, clip_length: int, frame_stride: int = 1,
                        clips_per_video: int = DEFAULT_CLIPS_PER_VIDEO,
                        train_videos: int | None = None, test_videos: int | None = None,
                        seed: int = 0, pool_size: int = DEFAULT_POOL_SIZE,
                        classifier=None, batch_size: int = DEFAULT_BATCH_SIZE,
                        log: Callable[[str], None] = logging.info
                        ) -> dict[str, VideoProbeResult]:
    """The video linear probe (module docstring) of every endpoint of the frozen ``encoder``.

    ``train_videos`` / ``test_videos``: seeded random subsets of the train / eval split's
    videos (None: all; with the selection every video is still decoded once).
    """
    from selfsup.tasks.linear_probe import (
        LinearClassifierConfig,
        Standardizer,
        fit_softmax_regression,
        probe_features,
        seeded_subset,
    )

    classifier = classifier or LinearClassifierConfig()
    # Traced once for both splits (extract_features wraps it in a tf.function per call; the
    # inner trace, the costly one for a 3D network, is shared).
    encoder = tf.function(encoder, reduce_retracing=True)
    num_classes = source.num_classes
    if num_classes is None:
        raise ConfigError(f"video dataset {source.name!r} has no class labels to probe with")
    if clips_per_video < 2:
        raise ConfigError(f"clips_per_video must be at least 2 (clip retrieval compares clips "
                          f"of one video), got {clips_per_video}")
    splits = {}
    for role, split, count in (("train", "train", train_videos),
                               ("test", source.eval_split, test_videos)):
        source.check_split(split)
        # Different seeds for the two subsets so their choice is independent.
        indices = seeded_subset(source.num_videos(split), count,
                                seed + (0 if role == "train" else 1))
        splits[role] = clip_features(
            encoder, source, split, frame_size=frame_size, image_size=image_size,
            clips_per_video=clips_per_video, clip_length=clip_length, frame_stride=frame_stride,
            videos=indices, pool_size=pool_size, batch_size=batch_size, log=log,
            description=f"{role} features ({split})")
    (train_features, train_labels, _), (test_features, test_labels, test_videos_of) = (
        splits["train"], splits["test"])
    results = {}
    for name, features in train_features.items():
        start = time.perf_counter()
        probe = probe_features(features, train_labels, test_features[name], test_labels,
                               num_classes, seed, classifier)
        # The probe's final fit again (full-batch from zero: deterministic) for the clips'
        # probabilities, which video-level accuracy needs.
        standardize = Standardizer.fit(features)
        kernels, biases = fit_softmax_regression(
            standardize(features), train_labels, num_classes, (probe.weight_decay,),
            classifier.steps, classifier.learning_rate)
        probabilities = softmax(standardize(test_features[name]) @ kernels[0] + biases[0])
        retrieval = retrieval_metrics(test_features[name], test_videos_of)
        result = VideoProbeResult(
            top1=clip_top1(probabilities, test_labels),
            video_top1=video_top1(probabilities, test_labels, test_videos_of),
            weight_decay=probe.weight_decay, validation_top1=probe.validation_top1,
            num_features=probe.num_features, triplet_retrieval=retrieval["triplet"],
            nearest_neighbour=retrieval["nearest_neighbour"])
        log(f"video probe {name} ({result.num_features} features): clip top-1 "
            f"{result.top1:.2f}%, video top-1 {result.video_top1:.2f}% (L2 "
            f"{result.weight_decay:g}); retrieval triplet {result.triplet_retrieval:.3f}, "
            f"nearest neighbour {result.nearest_neighbour:.3f} "
            f"({time.perf_counter() - start:.1f} s)")
        results[name] = result
    return results


def _json_result(result: VideoProbeResult) -> dict[str, Any]:
    validation = result.validation_top1
    return {"top1": round(result.top1, 4), "video_top1": round(result.video_top1, 4),
            "weight_decay": result.weight_decay,
            "validation_top1": None if math.isnan(validation) else round(validation, 4),
            "num_features": result.num_features,
            "triplet_retrieval": result.triplet_retrieval,
            "nearest_neighbour": result.nearest_neighbour}


def clip_settings(run_config: dict[str, Any]) -> dict[str, int]:
    """The run's clip geometry (a VideoTaskConfig's fields)."""
    return {"frame_size": run_config.get("frame_size", run_config["image_size"]),
            "image_size": run_config["image_size"],
            "clip_length": run_config.get("clip_length", 16),
            "frame_stride": run_config.get("frame_stride", 1)}


def evaluate_video_linear(model_dir: str | Path, *, train_examples: int | None = None,
                          test_examples: int | None = None,
                          clips_per_video: int = DEFAULT_CLIPS_PER_VIDEO,
                          pool_size: int = DEFAULT_POOL_SIZE, seed: int = 0,
                          data_dir: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                          classifier=None, log: Callable[[str], None] = logging.info
                          ) -> dict[str, Any]:
    """Video probes and retrieval checks of the trained and a random-init encoder of the
    video run in ``model_dir``; writes and returns ``<model_dir>/eval/linear_probe.json``.

    ``train_examples`` / ``test_examples`` count videos here. The result has the image probe's
    shape (``protocol``, ``endpoints``, per column endpoint → {top1 (clip level), video_top1,
    weight_decay, validation_top1, num_features, triplet_retrieval, nearest_neighbour},
    ``best``: column → endpoint of the best video top-1). ``classifier``: the probe's
    :class:`~selfsup.tasks.linear_probe.LinearClassifierConfig` (default: the protocol's).
    """
    from selfsup.datasets.video_sources import open_video_source
    from selfsup.tasks.checkpoints import build_encoder, latest_checkpoint, restore_encoder
    from selfsup.tasks.linear_probe import LinearClassifierConfig

    model_dir = Path(model_dir)
    start = time.perf_counter()
    trained, run_config = restore_encoder(model_dir)
    checkpoint = latest_checkpoint(model_dir)
    data_dir = data_dir if data_dir is not None else run_config.get("data_dir")
    source = open_video_source(run_config["dataset"], data_dir)
    random_init = build_encoder(run_config, seed)
    classifier = classifier or LinearClassifierConfig()
    geometry = clip_settings(run_config)
    results: dict[str, Any] = {
        "protocol": {
            "name": "video_linear", "dataset": run_config["dataset"], "train_split": "train",
            "eval_split": source.eval_split, "train_videos": train_examples,
            "test_videos": test_examples, "clips_per_video": clips_per_video, **geometry,
            "pool_size": pool_size, "seed": seed, "standardize": True,
            "steps": classifier.steps, "learning_rate": classifier.learning_rate,
            "weight_decays": list(classifier.weight_decays),
            "validation_fraction": classifier.validation_fraction,
            "retrieval": "cosine similarity of the eval split's clip features",
        },
        "model_dir": str(model_dir), "checkpoint": checkpoint, "task": run_config.get("task"),
        "backbone": run_config.get("backbone"),
    }
    encoders = {"trained": trained, "random_init": random_init}

    def both_encoders(clips, training=False):
        # One pass over the decoded clips feeds both encoders.
        return {f"{key}/{name}": value for key, encoder in encoders.items()
                for name, value in encoder(clips, training=training).items()}

    log("-- probing the trained and the random-init video encoder")
    probes = video_probe_results(
        both_encoders, source, **geometry, clips_per_video=clips_per_video,
        train_videos=train_examples, test_videos=test_examples, seed=seed,
        pool_size=pool_size, classifier=classifier, batch_size=batch_size, log=log)
    for key in encoders:
        results[key] = {name.split("/", 1)[1]: _json_result(result)
                        for name, result in probes.items() if name.startswith(f"{key}/")}
    results["endpoints"] = list(results["trained"])
    results["best"] = {
        key: max(results[key], key=lambda name, k=key: results[k][name]["video_top1"])
        for key, _ in COLUMNS}
    results["seconds"] = round(time.perf_counter() - start, 1)
    from selfsup.tasks.linear_eval import RESULTS_FILE

    path = model_dir / "eval" / RESULTS_FILE
    write_json_atomically(path, results)
    log(f"wrote {path} ({results['seconds']:.0f} s)")
    return results


def format_video_table(results: dict[str, Any]) -> str:
    """The video probe as text: per endpoint clip / video top-1 and the retrieval checks of
    the trained and the random-init encoder (best video top-1 marked *)."""
    protocol = results["protocol"]
    header = (f"video linear probe top-1 (%) on {protocol['dataset']} {protocol['eval_split']}: "
              f"{protocol['clips_per_video']} clips of {protocol['clip_length']} frames per "
              f"video, maps averaged over time and pooled to "
              f"{protocol['pool_size']}×{protocol['pool_size']}")
    columns = [(key, label, field) for field in ("top1", "video_top1")
               for key, label in COLUMNS]
    titles = {"top1": "clip", "video_top1": "video"}
    lines = [header, f"{'endpoint':<12}{'features':>9}"
             + "".join(f"{titles[field] + ' ' + label:>20}" for _, label, field in columns)]
    for name in results["endpoints"]:
        row = f"{name:<12}{results['trained'][name]['num_features']:>9}"
        for key, _, field in columns:
            mark = "*" if field == "video_top1" and results["best"][key] == name else " "
            row += f"{results[key][name][field]:>19.2f}{mark}"
        lines.append(row)
    lines += ["* best layer of each encoder (video top-1)", "",
              "clip retrieval on the eval split (cosine similarity): triplet = P(same-video "
              "clip closer than another video's), nn = nearest other clip from the same video",
              f"{'endpoint':<12}" + "".join(f"{metric + ' ' + label:>22}"
                                            for metric in ("triplet", "nn")
                                            for _, label in COLUMNS)]
    for name in results["endpoints"]:
        row = f"{name:<12}"
        for field in ("triplet_retrieval", "nearest_neighbour"):
            row += "".join(f"{results[key][name][field]:>22.3f}" for key, _ in COLUMNS)
        lines.append(row)
    return "\n".join(lines)
