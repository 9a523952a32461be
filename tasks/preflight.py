"""Checks across settings that need the strategy or the data, run before the model is built.

A setting that one config can judge alone is checked in that config's ``__post_init__`` (so a
bad flag fails before TensorFlow starts). What needs the number of replicas (the per-replica
batch) or the files (video lengths, image files skipped as unreadable) is checked here, by
:func:`preflight`, which :func:`selfsup.tasks.training.run_training` calls once the strategy
exists and the dataset is open, before the model, the optimizer or the input pipeline is built.
Every failure is a one-line :class:`~selfsup.models.registry.ConfigError`.
"""

from __future__ import annotations

import sys
from typing import TextIO

import tensorflow as tf

from selfsup.datasets.clips import window_span
from selfsup.datasets.sources import ImageSource
from selfsup.datasets.video_sources import VideoFolderSource
from selfsup.models.registry import ConfigError
from selfsup.tasks.base import Task
from selfsup.tasks.counting import CountingConfig
from selfsup.tasks.moco import MoCoConfig
from selfsup.tasks.video_base import VideoTask

SHOWN_VIDEOS = 5  # short videos named in the looping note


def check_replica_batch(global_batch_size: int, num_replicas: int) -> int:
    """The per-replica batch; ConfigError unless the global batch splits evenly."""
    if global_batch_size % num_replicas:
        lower = global_batch_size // num_replicas * num_replicas
        hint = f"{lower} or {lower + num_replicas}" if lower else f"{num_replicas}"
        raise ConfigError(f"batch size {global_batch_size} does not split evenly over "
                          f"{num_replicas} replicas; use a multiple of {num_replicas} (e.g. "
                          f"{hint})")
    return global_batch_size // num_replicas


def check_task_replica_batch(task: Task, per_replica: int) -> None:
    """Task settings that constrain each replica's share of the batch."""
    config = task.config
    if isinstance(config, MoCoConfig) and config.shuffle_bn and per_replica % config.key_bn_splits:
        raise ConfigError(f"key_bn_splits {config.key_bn_splits} must divide the per-replica "
                          f"batch {per_replica} (shuffle_bn splits each replica's keys)")
    if isinstance(config, CountingConfig) and per_replica < 2:
        raise ConfigError(f"counting needs at least 2 images per replica (the contrast "
                          f"image), got {per_replica}; raise the batch size")


def check_video_windows(task: VideoTask, out: TextIO) -> None:
    """Opens a folder split's videos (a broken one is a one-line error naming it) and compares
    the training window with their declared lengths.

    Windows longer than a video loop it (:mod:`selfsup.datasets.clips`); when that holds for
    every video the task would only ever see loops, so that is an error; when it holds for
    some, a note names them. Big splits and tfds sources are not opened (no lengths known).
    """
    source = task.video_source
    if not isinstance(source, VideoFolderSource):
        return
    split = task.config.train_split
    declared = source.declared_frames(split)
    if declared is None:
        return
    span = window_span(task.window_length(), task.config.frame_stride)
    known = [(frames, path) for frames, path in zip(declared, source.video_paths(split),
                                                    strict=True) if frames]
    if not known:
        return
    if max(frames for frames, _ in known) < span:
        raise ConfigError(
            f"training windows span {span} frames ({task.window_length()} frames, stride "
            f"{task.config.frame_stride}) but the longest video in {split} of {source.name} "
            f"has {max(frames for frames, _ in known)}; lower clip_length or frame_stride")
    short = sorted((frames, path) for frames, path in known if frames < span)
    if short:
        shown = ", ".join(f"{path.rsplit('/', 1)[-1]} ({frames})"
                          for frames, path in short[:SHOWN_VIDEOS])
        print(f"note: {len(short)} of {len(declared)} videos in {split} have fewer than the "
              f"{span} frames of a training window and are looped: {shown}", file=out,
              flush=True)


def report_skipped_images(source: ImageSource, split: str, out: TextIO) -> None:
    """Prints which image-folder files of ``split`` were skipped as unreadable, if any."""
    report = source.skipped_report(split)
    if report:
        print(report, file=out, flush=True)


def preflight(task: Task, strategy: tf.distribute.Strategy, out: TextIO = sys.stdout) -> None:
    """Every cross-setting check of a training run (see the module docstring)."""
    per_replica = check_replica_batch(task.config.global_batch_size,
                                      strategy.num_replicas_in_sync)
    check_task_replica_batch(task, per_replica)
    if isinstance(task, VideoTask):
        check_video_windows(task, out)
    elif isinstance(task.source, ImageSource):
        report_skipped_images(task.source, task.config.train_split, out)
