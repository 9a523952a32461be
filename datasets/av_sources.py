"""Audio-visual sources: video files with a soundtrack, read as (frames, frame times, audio).

``--dataset`` for audio-visual tasks (``av_correspondence``) takes

- ``av_folder:<root>``: every video file (extensions of
  :data:`~selfsup.datasets.video_decode.VIDEO_EXTENSIONS`) at any depth under ``<root>/<split>/``;
  a file without an audio stream is an error naming it (checked when the folder is opened: an
  audio-visual task cannot use it, and silently dropping it would shrink the data unseen);
- ``sample_av``: the offline set of :mod:`selfsup.datasets.sample_av` (two real clips with
  soundtracks and six generated ones, all real containers), prepared on first use.

Each video is decoded in one pass with PyAV (FFmpeg): frames to uint8 RGB with the shorter side
``frame_size`` (``cv2.INTER_AREA``, as :mod:`~selfsup.datasets.video_decode`), each with its
presentation time, and the first audio stream resampled to float32 with its channels averaged
(as :func:`~selfsup.datasets.audio.decode_audio`). Times are seconds from the first video frame;
the soundtrack is shifted onto that clock (zeros before a late audio start, samples cut before
an early one), so sample ``k`` of the returned audio plays at ``k / sample_rate`` seconds.
Packets that fail to decode are skipped (opencv-doc's Megamind.avi starts with a damaged AC-3
packet); a lost audio packet after the first decoded one becomes silence of its duration, so
the clock holds.

Splits of at most :data:`~selfsup.datasets.video_sources.CACHE_MAX_VIDEOS` files are decoded
once and cached (uint8 frames, float32 audio); bigger splits are decoded on the fly with file
names shuffled before decoding.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import tensorflow as tf

from selfsup.datasets.audio import (
    AudioDecodeError,
    has_audio_stream,
    mono_resampler,
    resampled_mono,
)
from selfsup.datasets.video_decode import VideoDecodeError, is_video_file, resized_frame_shape
from selfsup.datasets.video_sources import CACHE_MAX_VIDEOS
from selfsup.models.registry import ConfigError

AV_FOLDER_PREFIX = "av_folder:"
SAMPLE_AV = "sample_av"
SHOWN_FILES = 5  # files named in an error message


def is_av_dataset(dataset: str) -> bool:
    """Whether ``dataset`` names an audio-visual source (``sample_av``, ``av_folder:...``)."""
    return dataset == SAMPLE_AV or dataset.startswith(AV_FOLDER_PREFIX)


def decode_av_file(path: str | os.PathLike, frame_size: int, sample_rate: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(uint8 frames [t, h, w, 3], float32 frame times [t], float32 audio [n])`` of one file,
    on the clock of the module docstring (min(h, w) == ``frame_size``).

    Raises :class:`VideoDecodeError` / :class:`AudioDecodeError` naming the file when it has no
    decodable frame or no audio stream.
    """
    import av

    path = os.fspath(path)
    frames, times, chunks = [], [], []
    audio_start = None
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise VideoDecodeError(f"{path!r} has no video stream")
            if not container.streams.audio:
                raise AudioDecodeError(f"{path!r} has no audio stream; audio-visual tasks need "
                                       "videos with a soundtrack")
            video = container.streams.video[0]
            rate = float(video.average_rate or 25)
            resampler = mono_resampler(sample_rate)
            size = None
            for packet in container.demux(video, container.streams.audio[0]):
                try:
                    decoded = packet.decode()
                except av.FFmpegError:
                    # A damaged packet (Megamind.avi's first AC-3 packet): skip it; a lost
                    # audio packet after the first becomes silence, keeping the clock.
                    if (packet.stream.type == "audio" and audio_start is not None
                            and packet.duration):
                        lost = float(packet.duration * packet.time_base) * sample_rate
                        chunks.append(np.zeros(int(round(lost)), np.float32))
                    continue
                for frame in decoded:
                    if isinstance(frame, av.VideoFrame):
                        image = frame.to_ndarray(format="rgb24")
                        if size is None:
                            height, width = resized_frame_shape(*image.shape[:2], frame_size)
                            size = (width, height)  # cv2 sizes are (width, height)
                        if image.shape[1::-1] != size:
                            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
                        frames.append(image)
                        times.append(frame.time if frame.time is not None
                                     else len(times) / rate)
                    else:
                        if audio_start is None:
                            audio_start = frame.time or 0.0
                        chunks.extend(resampled_mono(resampler, frame))
            chunks.extend(resampled_mono(resampler, None))
    except av.FFmpegError as error:
        raise VideoDecodeError(f"cannot decode {path!r} ({type(error).__name__}: "
                               f"{str(error).splitlines()[0][:160]})") from None
    if not frames:
        raise VideoDecodeError(f"video file {path!r} has no decodable frame")
    audio = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if not len(audio):
        raise AudioDecodeError(f"{path!r} has an audio stream but no decodable samples")
    origin = float(times[0])
    offset = int(round((float(audio_start) - origin) * sample_rate))
    if offset > 0:
        audio = np.concatenate([np.zeros(offset, np.float32), audio])
    elif offset < 0:
        audio = audio[-offset:]
    frame_times = np.asarray(times, np.float64) - origin
    return np.stack(frames), frame_times.astype(np.float32), audio


class AVFolderSource:
    """Video files with audio under ``<root>/<split>/`` (any depth), decoded with PyAV."""

    def __init__(self, root: str | os.PathLike, name: str | None = None) -> None:
        root = Path(root)
        self.root = root
        self.name = name or f"{AV_FOLDER_PREFIX}{root}"
        if not root.is_dir():
            raise ConfigError(f"audio-visual folder {str(root)!r} does not exist")
        self._files: dict[str, list[str]] = {}
        for split_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            files = sorted(str(p) for p in split_dir.rglob("*") if p.is_file()
                           and is_video_file(p))
            if files:
                self._files[split_dir.name] = files
        if not self._files:
            raise ConfigError(f"audio-visual folder {str(root)!r} holds no video files under "
                              "<root>/<split>/")
        silent = [path for files in self._files.values() for path in files
                  if not has_audio_stream(path)]
        if silent:
            shown = ", ".join(os.path.relpath(path, root) for path in silent[:SHOWN_FILES])
            more = f" and {len(silent) - SHOWN_FILES} more" if len(silent) > SHOWN_FILES else ""
            raise ConfigError(f"{len(silent)} file(s) in {root} have no audio stream (audio-"
                              f"visual tasks need a soundtrack): {shown}{more}; move them out")

    @property
    def splits(self) -> list[str]:
        return sorted(self._files)

    @property
    def location(self) -> str:
        return str(self.root)

    def check_split(self, split: str) -> None:
        if split not in self._files:
            raise ConfigError(f"audio-visual dataset {self.name!r} has no split {split!r}; "
                              f"splits: {', '.join(self.splits)}")

    def num_videos(self, split: str) -> int:
        self.check_split(split)
        return len(self._files[split])

    def video_paths(self, split: str) -> list[str]:
        """The split's files in sorted order (position = video index)."""
        self.check_split(split)
        return list(self._files[split])

    def videos(self, split: str, frame_size: int, sample_rate: int,
               shuffle_seed: int | None = None) -> tf.data.Dataset:
        """One dict per video: ``frames`` uint8 ``[t, h, w, 3]``, ``frame_times`` float32
        ``[t]``, ``audio`` float32 ``[n]`` (module docstring's clock), ``video_index`` int64.

        File order unless ``shuffle_seed`` is given (then reshuffled every epoch).
        """
        if frame_size < 1:
            raise ConfigError(f"frame_size must be positive, got {frame_size}")
        paths = self.video_paths(split)
        cache = len(paths) <= CACHE_MAX_VIDEOS
        references = tf.data.Dataset.from_tensor_slices(
            (tf.constant(paths), tf.range(len(paths), dtype=tf.int64)))
        if shuffle_seed is not None and not cache:
            references = references.shuffle(len(paths), seed=shuffle_seed,
                                            reshuffle_each_iteration=True)

        def decode(path: bytes):
            return decode_av_file(path.decode(), frame_size, sample_rate)

        def to_example(path, index):
            frames, times, audio = tf.numpy_function(
                decode, [path], (tf.uint8, tf.float32, tf.float32), stateful=False)
            frames.set_shape([None, None, None, 3])
            times.set_shape([None])
            audio.set_shape([None])
            return {"frames": frames, "frame_times": times, "audio": audio,
                    "video_index": index}

        videos = references.map(to_example, num_parallel_calls=tf.data.AUTOTUNE)
        if cache:
            videos = videos.cache()
            if shuffle_seed is not None:
                videos = videos.shuffle(len(paths), seed=shuffle_seed,
                                        reshuffle_each_iteration=True)
        return videos


def open_av_source(dataset: str, data_dir: str | None = None) -> AVFolderSource:
    """Resolves ``sample_av`` or ``av_folder:<root>`` (see the module docstring)."""
    if dataset == SAMPLE_AV:
        from selfsup.datasets.sample_av import prepare_sample_av

        return AVFolderSource(prepare_sample_av(data_dir), name=SAMPLE_AV)
    if dataset.startswith(AV_FOLDER_PREFIX):
        return AVFolderSource(dataset[len(AV_FOLDER_PREFIX):], name=dataset)
    raise ConfigError(f"dataset {dataset!r} is not audio-visual: use {SAMPLE_AV} or "
                      f"{AV_FOLDER_PREFIX}<root> (video files with a soundtrack)")


def audio_window(audio: tf.Tensor, centre_seconds: tf.Tensor, samples: int,
                 sample_rate: int) -> tf.Tensor:
    """The ``samples`` audio samples centred on ``centre_seconds`` (zeros beyond the ends)."""
    half = samples // 2
    padded = tf.pad(audio, [[half, samples]])
    centre = tf.cast(tf.round(centre_seconds * sample_rate), tf.int32)
    start = tf.clip_by_value(centre, 0, tf.shape(padded)[0] - samples)
    return tf.slice(padded, [start], [samples])  # static length: [samples]


def shifted_time(centre: tf.Tensor, lowest: tf.Tensor, highest: tf.Tensor, min_shift: float,
                 uniform: tf.Tensor) -> tf.Tensor:
    """A time in [lowest, highest] at least ``min_shift`` from ``centre``, uniform over those
    times (``uniform`` in [0, 1)); when none is that far, the end farther from ``centre``."""
    left = tf.maximum(0.0, centre - min_shift - lowest)
    right = tf.maximum(0.0, highest - centre - min_shift)
    offset = uniform * (left + right)
    inside = tf.where(offset < left, lowest + offset, centre + min_shift + (offset - left))
    farther = tf.where(centre - lowest > highest - centre, lowest, highest)
    return tf.where(left + right > 0.0, inside, farther)


def sample_av_windows(example: dict[str, tf.Tensor], seed: tf.Tensor, *, image_size: int,
                      audio_samples: int, sample_rate: int, min_shift_seconds: float
                      ) -> dict[str, tf.Tensor]:
    """One training example of a decoded video (:meth:`AVFolderSource.videos`), in-graph.

    A frame at a random time ``t`` among those whose audio window fits in the soundtrack (all
    frames when none does), randomly cropped to ``image_size`` and flipped, as float RGB in
    [0, 1]; the ``audio_samples`` samples centred on ``t`` (``audio``, in sync, Arandjelović
    & Zisserman 2017) and centred on a time at least ``min_shift_seconds`` away (``shifted_audio``,
    AVTS's out-of-sync negative, Korbar et al. 2018), with their times.
    """
    frames, times, audio = example["frames"], example["frame_times"], example["audio"]
    seeds = tf.random.experimental.stateless_split(seed, 4)
    duration = tf.cast(tf.shape(audio)[0], tf.float32) / sample_rate
    half = audio_samples / 2 / sample_rate
    lowest, highest = tf.constant(half, tf.float32), tf.maximum(half, duration - half)
    fits = (times >= lowest) & (times <= highest)
    fits = tf.cond(tf.reduce_any(fits), lambda: fits, lambda: tf.ones_like(fits))
    logits = tf.where(fits, 0.0, -1e9)[tf.newaxis]
    index = tf.random.stateless_categorical(logits, 1, seeds[0], dtype=tf.int32)[0, 0]
    frame_time = times[index]
    other_time = shifted_time(frame_time, lowest, highest, min_shift_seconds,
                              tf.random.stateless_uniform([], seeds[1]))
    image = tf.image.stateless_random_crop(frames[index], [image_size, image_size, 3],
                                           seeds[2])
    image = tf.image.stateless_random_flip_left_right(image, seeds[3])
    return {"frames": tf.image.convert_image_dtype(image, tf.float32),
            "audio": audio_window(audio, frame_time, audio_samples, sample_rate),
            "shifted_audio": audio_window(audio, other_time, audio_samples, sample_rate),
            "video_index": example["video_index"], "frame_time": frame_time,
            "shifted_time": other_time}
