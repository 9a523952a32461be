"""Optical flow for video pipelines: Farneback flow computed once per video, cached, windowed.

Flow of frame ``i`` is the dense displacement ``(u, v)`` (pixels, x right, y down) from frame
``i`` to frame ``i + 1`` of the decoded video (shorter side ``frame_size``), estimated by
Farnebäck's polynomial-expansion method (G. Farnebäck, "Two-Frame Motion Estimation Based on
Polynomial Expansion", SCIA 2003) as OpenCV implements it (``cv2.calcOpticalFlowFarneback`` on
the grey frames). The last frame has no successor and gets zero flow, so a video of ``t``
frames has ``t`` flow frames, aligned with its RGB frames.

Storage follows the two-stream literature: Simonyan & Zisserman (NeurIPS 2014, "Implementation
details") rescale the flow components linearly to [0, 255] and store them as images; the usual
range is ±20 px (the bound ``-b=20`` documented for the ``dense_flow`` extractor of TSN, Wang et
al. ECCV 2016, on UCF101 / Kinetics frames of 240–256 px shorter side; taken here as 256), so
displacements are clipped to ``[−bound, bound]`` and stored as uint8
``q = round((d + bound) · 255 / (2 · bound))``: a step of ``2 · bound / 255`` px, and
``q / 255`` in [0, 1] is what the flow network sees (0.5 ≈ no motion), the same input contract
as frames and as :func:`selfsup.models.two_stream.frame_differences`. Displacements shrink with
the frames, so the default bound scales with them (:func:`default_flow_bound`: ±20 px at
256 px, ±10 at C3D's 128 px, ±3.1 at 40 px): with a fixed ±20 px the sample clips at 24 px
span at most 3 levels around 0.5 (measured), 0.157 px steps for sub-pixel motion.

Cache: one ``.npy`` (uint8 ``[t, h, w, 2]``) per video in ``<cache dir>/<key>.npy``, where the
key hashes the video's absolute path, byte size and modification time, ``frame_size``, the
Farneback parameters and the bound, so any change recomputes and nothing stale is read. Files are
written atomically (:mod:`selfsup.tasks.atomic_files`). The default cache dir is
``<tfds data dir>/selfsup_optical_flow`` (next to ``sample_videos``). :func:`ensure_flow_cache`
fills it before training, printing progress; the tf.data pipeline then only reads it. Only video
folder sources (``sample_videos``, ``video_folder:``) have files to key on; for tfds video sets
use ``flow=difference`` or export the videos to a folder.

Windows: :func:`training_window_batches` samples windows as :mod:`selfsup.datasets.clips` does
(uniform starts, one crop and one flip per window) on the frames and their flow together, so the
flow clip is exactly the flow of the RGB clip; a horizontal flip mirrors the flow field *and*
negates ``u`` (``q → 255 − q``, exact for this symmetric quantisation). Each window carries its
provenance ``(video_index, start, top, left, flipped)`` for pseudo-labels.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import tensorflow as tf

from selfsup.datasets import clips
from selfsup.datasets.sample_videos import default_data_dir
from selfsup.datasets.video_decode import decode_video
from selfsup.datasets.video_sources import VideoFolderSource, VideoSource
from selfsup.models.registry import ConfigError

# Clip of flow components in pixels before storing as uint8 (the bound documented for TSN's
# dense_flow extractor, Wang et al. 2016, on frames of ~256 px shorter side; the [0, 255]
# storage is Simonyan & Zisserman 2014's).
FLOW_BOUND = 20.0
FLOW_BOUND_FRAME_SIZE = 256
FLOW_CACHE_FOLDER = "selfsup_optical_flow"
CACHE_FORMAT_VERSION = 1
# Provenance columns of every sampled window (see the module docstring).
PROVENANCE_FIELDS = ("video_index", "start", "top", "left", "flipped")
PROGRESS_SECONDS = 10.0


@dataclasses.dataclass(frozen=True)
class FarnebackParams:
    """Arguments of ``cv2.calcOpticalFlowFarneback`` (Farnebäck 2003).

    Values from OpenCV's documentation of the function: a classical pyramid (``pyr_scale`` 0.5)
    of 3 levels, 15 px averaging window, 3 iterations per level, polynomial neighbourhood 5 px
    with ``poly_sigma`` 1.1 (the value the documentation recommends for ``poly_n`` = 5).
    """

    pyr_scale: float = 0.5
    levels: int = 3
    winsize: int = 15
    iterations: int = 3
    poly_n: int = 5
    poly_sigma: float = 1.1
    flags: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.pyr_scale < 1.0:
            raise ConfigError(f"Farneback pyr_scale must be in (0, 1), got {self.pyr_scale}")
        if self.levels < 1 or self.winsize < 1 or self.iterations < 1:
            raise ConfigError("Farneback levels, winsize and iterations must be positive")
        if self.poly_n not in (5, 7):
            raise ConfigError(f"Farneback poly_n must be 5 or 7, got {self.poly_n}")


def farneback_pair(first: np.ndarray, second: np.ndarray,
                   params: FarnebackParams = FarnebackParams()) -> np.ndarray:
    """float32 ``[h, w, 2]`` flow ``(u, v)`` from grey uint8 ``first`` to ``second``
    (``second(y + v, x + u) ≈ first(y, x)``)."""
    return cv2.calcOpticalFlowFarneback(
        first, second, None, params.pyr_scale, params.levels, params.winsize,
        params.iterations, params.poly_n, params.poly_sigma, params.flags)


def farneback_flow(frames: np.ndarray, params: FarnebackParams = FarnebackParams()
                   ) -> np.ndarray:
    """uint8 RGB ``[t, h, w, 3]`` → float32 ``[t, h, w, 2]``: frame ``i``'s flow to frame
    ``i + 1``; the last frame's flow is zero."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [t, h, w, 3], got {frames.dtype} {frames.shape}")
    grey = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in frames]
    flow = np.zeros(frames.shape[:3] + (2,), np.float32)
    for index in range(len(grey) - 1):
        flow[index] = farneback_pair(grey[index], grey[index + 1], params)
    return flow


def quantize_flow(flow: np.ndarray, bound: float = FLOW_BOUND) -> np.ndarray:
    """Pixels → uint8: clip to ``[−bound, bound]``, map linearly onto 0..255, round."""
    scaled = (np.clip(flow, -bound, bound) + bound) * (255.0 / (2.0 * bound))
    return np.round(scaled).astype(np.uint8)


def dequantize_flow(quantized: np.ndarray | tf.Tensor, bound: float = FLOW_BOUND):
    """uint8 → pixels (numpy or TF): ``q · 2 · bound / 255 − bound``."""
    if isinstance(quantized, tf.Tensor):
        return tf.cast(quantized, tf.float32) * (2.0 * bound / 255.0) - bound
    return np.asarray(quantized, np.float32) * np.float32(2.0 * bound / 255.0) - np.float32(bound)


def default_flow_bound(frame_size: int) -> float:
    """±20 px at a 256 px shorter side, scaled to ``frame_size`` (module docstring)."""
    return FLOW_BOUND * frame_size / FLOW_BOUND_FRAME_SIZE


def default_flow_cache_dir(data_dir: str | None = None) -> Path:
    """``<data_dir or the tfds data dir>/selfsup_optical_flow``."""
    return Path(data_dir or default_data_dir()) / FLOW_CACHE_FOLDER


def flow_cache_key(video_path: str | os.PathLike, frame_size: int, params: FarnebackParams,
                   bound: float = FLOW_BOUND) -> str:
    """Hex digest of what the cached flow depends on (see the module docstring)."""
    path = Path(video_path).resolve()
    stat = path.stat()
    description = {"version": CACHE_FORMAT_VERSION, "path": str(path), "bytes": stat.st_size,
                   "mtime_ns": stat.st_mtime_ns, "frame_size": frame_size,
                   "farneback": dataclasses.asdict(params), "bound": bound}
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:32]


def flow_cache_path(cache_dir: str | os.PathLike, video_path: str | os.PathLike,
                    frame_size: int, params: FarnebackParams, bound: float = FLOW_BOUND) -> Path:
    return Path(cache_dir) / f"{flow_cache_key(video_path, frame_size, params, bound)}.npy"


def _write_array_atomically(path: Path, array: np.ndarray) -> None:
    from selfsup.tasks.atomic_files import write_bytes_atomically

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    write_bytes_atomically(path, buffer.getvalue())


def cached_video_flow(video_path: str | os.PathLike, frame_size: int, cache_dir: str | os.PathLike,
                      params: FarnebackParams = FarnebackParams(), bound: float = FLOW_BOUND
                      ) -> np.ndarray:
    """The video's quantised flow uint8 ``[t, h, w, 2]`` at ``frame_size``: read from the cache,
    or computed from the decoded frames and written to it first."""
    path = flow_cache_path(cache_dir, video_path, frame_size, params, bound)
    if path.is_file():
        return np.load(path, allow_pickle=False)
    flow = quantize_flow(farneback_flow(decode_video(video_path, frame_size), params), bound)
    _write_array_atomically(path, flow)
    return flow


def folder_source(source: VideoSource) -> VideoFolderSource:
    """``source`` if it is a folder of files (what the flow cache keys on), else ConfigError."""
    if not isinstance(source, VideoFolderSource):
        raise ConfigError(f"Farneback flow is cached per video file; {source.name!r} is not a "
                          "folder of videos: use flow=difference, sample_videos or "
                          "video_folder:<root>")
    return source


def ensure_flow_cache(source: VideoSource, split: str, frame_size: int,
                      cache_dir: str | os.PathLike, params: FarnebackParams = FarnebackParams(),
                      bound: float = FLOW_BOUND, log: Callable[[str], None] | None = None
                      ) -> list[Path]:
    """Computes the flow of every video of ``split`` missing from the cache (printing progress
    every ~10 s and a summary) and returns the cache files in file order."""
    log = log or (lambda message: print(message, file=sys.stdout, flush=True))
    videos = folder_source(source).video_paths(split)
    paths = [flow_cache_path(cache_dir, video, frame_size, params, bound) for video in videos]
    missing = [index for index, path in enumerate(paths) if not path.is_file()]
    if not missing:
        return paths
    log(f"optical flow: computing Farneback flow of {len(missing)} of {len(videos)} videos "
        f"({split}) once, cached in {cache_dir}")
    started = last = time.monotonic()
    for done, index in enumerate(missing, 1):
        cached_video_flow(videos[index], frame_size, cache_dir, params, bound)
        now = time.monotonic()
        if now - last >= PROGRESS_SECONDS and done < len(missing):
            rate = done / (now - started)
            log(f"optical flow: {done}/{len(missing)} videos, ETA "
                f"{(len(missing) - done) / rate:.0f} s")
            last = now
    log(f"optical flow: {len(missing)} videos done in {time.monotonic() - started:.1f} s")
    return paths


def with_flow(videos: tf.data.Dataset, flow_files: list[Path]) -> tf.data.Dataset:
    """``(frames [t, h, w, 3], label, index)`` → ``(frames and flow as uint8 [t, h, w, 5],
    label, index)``, the flow read from ``flow_files[index]``."""
    files = tf.constant([str(path) for path in flow_files])

    def load(path: bytes) -> np.ndarray:
        return np.load(path.decode(), allow_pickle=False)

    def attach(frames, label, index):
        flow = tf.numpy_function(load, [tf.gather(files, index)], tf.uint8, stateful=False)
        flow = tf.ensure_shape(flow, [None, None, None, 2])
        check = tf.debugging.assert_equal(
            tf.shape(flow)[:3], tf.shape(frames)[:3],
            message="cached flow does not match the decoded frames; delete the flow cache")
        with tf.control_dependencies([check]):
            return tf.concat([frames, flow], axis=-1), label, index

    return videos.map(attach, num_parallel_calls=tf.data.AUTOTUNE)


def _gather(video: tf.Tensor, starts: tf.Tensor, num_frames: int, frame_stride: int
            ) -> tf.Tensor:
    length = tf.shape(video, out_type=tf.int64)[0]
    offsets = tf.range(num_frames, dtype=tf.int64) * frame_stride
    return tf.gather(video, tf.math.floormod(starts[:, None] + offsets[None, :], length))


def flip_flow_windows(windows: tf.Tensor, flips: tf.Tensor) -> tf.Tensor:
    """Mirrors the windows ``[n, t, h, w, c]`` where ``flips[i]``; with flow in channels 3..4
    (uint8), a mirrored ``u`` changes sign: ``q → 255 − q``."""
    mirrored = tf.reverse(windows, axis=[3])
    if windows.shape[-1] == 5:
        mirrored = tf.concat([mirrored[..., :3], 255 - mirrored[..., 3:4], mirrored[..., 4:]],
                             axis=-1)
    return tf.where(flips[:, None, None, None, None], mirrored, windows)


def sample_training_windows(video: tf.Tensor, index: tf.Tensor, seed: tf.Tensor, *,
                            image_size: int, num_windows: int, num_frames: int,
                            frame_stride: int) -> tuple[tf.Tensor, tf.Tensor]:
    """One video (uint8 ``[t, h, w, c]``, c = 3 or frames + flow = 5) → (uint8 windows
    ``[num_windows, num_frames, s, s, c]``, int64 provenance ``[num_windows, 5]``).

    The draws are those of :func:`selfsup.datasets.clips.training_windows` (uniform starts,
    one crop and flip per window, from ``seed`` split in three), applied to frames and flow
    together."""
    time_seed, crop_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 3))
    starts = clips.window_starts(video, num_windows, num_frames, frame_stride, time_seed)
    windows = _gather(video, starts, num_frames, frame_stride)
    windows.set_shape([num_windows, num_frames, None, None, video.shape[-1]])
    offsets = clips.crop_offsets(windows, image_size, crop_seed)
    windows = clips.crop_windows(windows, offsets, image_size)
    flips = clips.flip_decisions(num_windows, flip_seed)
    windows = flip_flow_windows(windows, flips)
    provenance = tf.concat([
        tf.fill([num_windows, 1], tf.cast(index, tf.int64)), starts[:, None],
        tf.cast(offsets, tf.int64), tf.cast(flips, tf.int64)[:, None]], axis=1)
    return windows, provenance


def training_window_batches(source: VideoSource, split: str, *, frame_size: int,
                            image_size: int, num_windows: int, num_frames: int,
                            frame_stride: int, batch_size: int, seed: int,
                            flow_files: list[Path] | None = None,
                            input_context: tf.distribute.InputContext | None = None
                            ) -> tf.data.Dataset:
    """Endless shuffled batches ``{"rgb": float32 [b, n, t, s, s, 3], "provenance": int64
    [b, n, 5]}`` plus ``"flow": float32 [b, n, t, s, s, 2]`` (``q / 255``) when
    ``flow_files`` (from :func:`ensure_flow_cache`) are given; seeds as
    :func:`selfsup.datasets.clips.training_clips`."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if frame_size < image_size:
        raise ConfigError(f"frame_size ({frame_size}) must be at least image_size "
                          f"({image_size}): crops are taken from the resized frames")
    stream = input_context.input_pipeline_id if input_context is not None else 0
    videos = source.videos(split, frame_size, input_context, shuffle_seed=seed)
    if flow_files is not None:
        videos = with_flow(videos, flow_files)
    elements = tf.data.Dataset.zip((videos.repeat(), clips.element_seeds(seed, stream)))

    def windows(video_label_index, element_seed):
        video, _, index = video_label_index
        return sample_training_windows(
            video, index, element_seed, image_size=image_size, num_windows=num_windows,
            num_frames=num_frames, frame_stride=frame_stride)

    batches = elements.map(windows, num_parallel_calls=tf.data.AUTOTUNE)
    batches = batches.batch(batch_size, drop_remainder=True)

    def to_float(windows, provenance):
        batch = {"rgb": clips.to_float_clips(windows[..., :3]), "provenance": provenance}
        if flow_files is not None:
            batch["flow"] = clips.to_float_clips(windows[..., 3:])
        return batch

    return batches.map(to_float, num_parallel_calls=tf.data.AUTOTUNE)
