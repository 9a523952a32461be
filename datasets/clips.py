"""Clip sampling for video pipelines: windows in time, one crop and flip per window.

A *window* is ``num_frames`` frames taken every ``frame_stride`` frames; it touches
``span = (num_frames − 1) · frame_stride + 1`` frames of the video. Training draws windows with
uniformly random starts in ``[0, t − span]`` (temporal jitter) and gives each window one random
crop position and one random horizontal flip applied to all of its frames (a crop that moved
between frames would fake motion). Evaluation takes evenly spaced windows and a centre crop.
A video shorter than the span is looped (frame ``i`` is frame ``i mod t``), so every video
yields windows of the requested length; its windows all start at 0.

The ops are pure and vectorised over windows (gathers, no Python loop per frame), and all
randomness is stateless: every video element of a training stream gets the seed ``[seed,
stream · 2³² + element index]`` (``stream`` = the input pipeline id, as in
:func:`selfsup.datasets.pipelines.with_batch_seeds`), so runs are reproducible, workers differ,
and a resumed run that skips consumed elements replays the same windows. Frames stay uint8 until
after batching; the float conversion runs once per batch.
"""

from __future__ import annotations

import tensorflow as tf

from selfsup.datasets.video_sources import VideoSource
from selfsup.models.registry import ConfigError

AUTOTUNE = tf.data.AUTOTUNE


def window_span(num_frames: int, frame_stride: int) -> int:
    """Frames of the video one window touches."""
    return (num_frames - 1) * frame_stride + 1


def _gather_windows(video: tf.Tensor, starts: tf.Tensor, num_frames: int,
                    frame_stride: int) -> tf.Tensor:
    length = tf.shape(video, out_type=tf.int64)[0]
    offsets = tf.range(num_frames, dtype=tf.int64) * frame_stride
    indices = tf.math.floormod(tf.cast(starts, tf.int64)[:, None] + offsets[None, :], length)
    return tf.gather(video, indices)


def _max_start(video: tf.Tensor, num_frames: int, frame_stride: int) -> tf.Tensor:
    length = tf.shape(video, out_type=tf.int64)[0]
    return tf.maximum(length - window_span(num_frames, frame_stride), 0)


def window_starts(video: tf.Tensor, num_windows: int, num_frames: int, frame_stride: int,
                  seed: tf.Tensor) -> tf.Tensor:
    """int64 ``[num_windows]`` uniform starts in ``[0, t − span]`` (all 0 when t < span)."""
    max_start = _max_start(video, num_frames, frame_stride)
    return tf.random.stateless_uniform([num_windows], seed, minval=0, maxval=max_start + 1,
                                       dtype=tf.int64)


def sample_windows(video: tf.Tensor, num_windows: int, num_frames: int, frame_stride: int,
                   seed: tf.Tensor) -> tf.Tensor:
    """``[t, h, w, c]`` → ``[num_windows, num_frames, h, w, c]`` at random starts (looped when
    the video is shorter than the span)."""
    starts = window_starts(video, num_windows, num_frames, frame_stride, seed)
    return _gather_windows(video, starts, num_frames, frame_stride)


def evenly_spaced_starts(video: tf.Tensor, num_windows: int, num_frames: int,
                         frame_stride: int) -> tf.Tensor:
    """int64 ``[num_windows]``: from 0 to the last possible start, evenly spaced (rounded to
    the nearest frame); one window sits in the middle."""
    max_start = tf.cast(_max_start(video, num_frames, frame_stride), tf.float64)
    if num_windows == 1:
        return tf.cast(tf.floor(max_start / 2), tf.int64)[None]
    fractions = tf.range(num_windows, dtype=tf.float64) / (num_windows - 1)
    return tf.cast(tf.round(fractions * max_start), tf.int64)


def evenly_spaced_windows(video: tf.Tensor, num_windows: int, num_frames: int,
                          frame_stride: int) -> tf.Tensor:
    """``[t, h, w, c]`` → ``[num_windows, num_frames, h, w, c]`` at evenly spaced starts."""
    starts = evenly_spaced_starts(video, num_windows, num_frames, frame_stride)
    return _gather_windows(video, starts, num_frames, frame_stride)


def crop_offsets(windows: tf.Tensor, size: int, seed: tf.Tensor) -> tf.Tensor:
    """int32 ``[num_windows, 2]`` uniform (top, left) offsets of ``size²`` crops."""
    shape = tf.shape(windows)
    count = shape[0]
    limits = tf.stack([shape[2] - size + 1, shape[3] - size + 1])
    unit = tf.random.stateless_uniform(tf.stack([count, 2]), seed)
    return tf.minimum(tf.cast(tf.floor(unit * tf.cast(limits, tf.float32)), tf.int32),
                      limits - 1)


def crop_windows(windows: tf.Tensor, offsets: tf.Tensor, size: int) -> tf.Tensor:
    """``[n, t, h, w, c]`` → ``[n, t, size, size, c]``: window i cropped at ``offsets[i]``
    (the same crop for all of its frames)."""
    steps = tf.range(size, dtype=tf.int32)
    rows = offsets[:, 0:1] + steps[None, :]
    cols = offsets[:, 1:2] + steps[None, :]
    cropped = tf.gather(windows, rows, axis=2, batch_dims=1)
    cropped = tf.gather(cropped, cols, axis=3, batch_dims=1)
    return tf.ensure_shape(cropped, [windows.shape[0], windows.shape[1], size, size,
                                     windows.shape[4]])


def random_crop_windows(windows: tf.Tensor, size: int, seed: tf.Tensor) -> tf.Tensor:
    """One uniformly placed ``size²`` crop per window, shared by all its frames."""
    return crop_windows(windows, crop_offsets(windows, size, seed), size)


def center_crop(windows: tf.Tensor, size: int) -> tf.Tensor:
    """The central ``size²`` crop of every frame (``[..., h, w, c]``)."""
    shape = tf.shape(windows)
    top = (shape[-3] - size) // 2
    left = (shape[-2] - size) // 2
    cropped = windows[..., top:top + size, left:left + size, :]
    return tf.ensure_shape(cropped, windows.shape[:-3] + [size, size] + windows.shape[-1:])


def flip_decisions(num_windows: int | tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """bool ``[num_windows]``, each True with probability 1/2."""
    return tf.random.stateless_uniform(tf.reshape(num_windows, [1]), seed) < 0.5


def random_flip_windows(windows: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Flips each window left-right with probability 1/2 (all its frames or none)."""
    flips = flip_decisions(tf.shape(windows)[0], seed)
    return tf.where(flips[:, None, None, None, None], tf.reverse(windows, axis=[3]), windows)


def training_windows(video: tf.Tensor, seed: tf.Tensor, *, image_size: int, num_windows: int,
                     num_frames: int, frame_stride: int) -> tf.Tensor:
    """One video → uint8 ``[num_windows, num_frames, s, s, 3]``: random starts, one random crop
    and flip per window; ``seed`` (int64 ``[2]``) is split into the three draws."""
    time_seed, crop_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 3))
    windows = sample_windows(video, num_windows, num_frames, frame_stride, time_seed)
    windows.set_shape([num_windows, num_frames, None, None, video.shape[-1]])
    windows = random_crop_windows(windows, image_size, crop_seed)
    return random_flip_windows(windows, flip_seed)


def evaluation_windows(video: tf.Tensor, *, image_size: int, num_windows: int,
                       num_frames: int, frame_stride: int) -> tf.Tensor:
    """One video → uint8 ``[num_windows, num_frames, s, s, 3]``: evenly spaced, centre crop."""
    windows = evenly_spaced_windows(video, num_windows, num_frames, frame_stride)
    windows.set_shape([num_windows, num_frames, None, None, video.shape[-1]])
    return center_crop(windows, image_size)


def element_seeds(seed: int, stream: int = 0) -> tf.data.Dataset:
    """Endless int64 ``[2]`` seeds ``[seed, stream · 2³² + index]`` (index = element count)."""
    counter = tf.data.Dataset.counter(start=stream << 32, dtype=tf.int64)
    return counter.map(lambda index: tf.stack([tf.constant(seed, tf.int64), index]))


def _check_sizes(frame_size: int, image_size: int, num_windows: int, num_frames: int,
                 frame_stride: int) -> None:
    for name, value in (("image_size", image_size), ("num_windows", num_windows),
                        ("num_frames", num_frames), ("frame_stride", frame_stride)):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    if frame_size < image_size:
        raise ConfigError(f"frame_size ({frame_size}) must be at least image_size "
                          f"({image_size}): crops are taken from the resized frames")


def to_float_clips(clips: tf.Tensor) -> tf.Tensor:
    """uint8 clips (any leading dims) → float32 in [0, 1]."""
    return tf.cast(clips, tf.float32) * (1.0 / 255.0)


def training_clips(source: VideoSource, split: str, *, frame_size: int, image_size: int,
                   num_windows: int, num_frames: int, frame_stride: int, batch_size: int,
                   seed: int, input_context: tf.distribute.InputContext | None = None,
                   with_labels: bool = False) -> tf.data.Dataset:
    """Endless, shuffled float32 ``[batch, num_windows, num_frames, s, s, 3]`` in [0, 1] (or
    ``(clips, int64 labels [batch])`` with ``with_labels``); see the module docstring."""
    _check_sizes(frame_size, image_size, num_windows, num_frames, frame_stride)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    stream = input_context.input_pipeline_id if input_context is not None else 0
    videos = source.videos(split, frame_size, input_context, shuffle_seed=seed).repeat()
    elements = tf.data.Dataset.zip((videos, element_seeds(seed, stream)))

    def windows(video_label_index, element_seed):
        video, label, _ = video_label_index
        clips = training_windows(video, element_seed, image_size=image_size,
                                 num_windows=num_windows, num_frames=num_frames,
                                 frame_stride=frame_stride)
        return clips, label

    batches = elements.map(windows, num_parallel_calls=AUTOTUNE)
    batches = batches.batch(batch_size, drop_remainder=True)
    if with_labels:
        return batches.map(lambda clips, labels: (to_float_clips(clips), labels),
                           num_parallel_calls=AUTOTUNE)
    return batches.map(lambda clips, labels: to_float_clips(clips), num_parallel_calls=AUTOTUNE)


def evaluation_clips(source: VideoSource, split: str, *, frame_size: int, image_size: int,
                     num_windows: int, num_frames: int, frame_stride: int,
                     first: int | None = None) -> tf.data.Dataset:
    """One element per video in file order: ``(float32 [num_windows, num_frames, s, s, 3] in
    [0, 1], int64 label, int64 video_index)``; evenly spaced windows, centre crop."""
    _check_sizes(frame_size, image_size, num_windows, num_frames, frame_stride)
    videos = source.videos(split, frame_size, first=first)

    def windows(video, label, index):
        clips = evaluation_windows(video, image_size=image_size, num_windows=num_windows,
                                   num_frames=num_frames, frame_stride=frame_stride)
        return to_float_clips(clips), label, index

    return videos.map(windows, num_parallel_calls=AUTOTUNE)
