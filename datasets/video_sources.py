"""Video sources: a folder of video files, a tensorflow-datasets video dataset, ``sample_videos``.

``--dataset`` for video tasks takes

- ``video_folder:<root>``: ``<root>/<split>/<label>/<video file>`` (extensions in
  :data:`~selfsup.datasets.video_decode.VIDEO_EXTENSIONS`); class names are the sorted label
  folders of all splits, videos are read in sorted ``<label>/<file>`` order, decoded with OpenCV
  inside tf.data (``tf.numpy_function`` in a parallel map; OpenCV releases the GIL);
- a tfds name whose features hold a ``tfds.features.Video`` (``ucf101``: its splits and label);
  frames are resized in the graph so the shorter side is ``frame_size``;
- ``sample_videos``: the offline 8-video set of :mod:`selfsup.datasets.sample_videos`, prepared
  on first use.

Every source yields ``(uint8 frames [t, h, w, 3] with min(h, w) == frame_size, int64 label (−1:
none), int64 video_index)``, the index being the video's position in file order in its split.
Memory: a split of at most :data:`CACHE_MAX_VIDEOS` videos is decoded once and cached (uint8);
bigger splits are decoded on the fly and, when shuffled, shuffled as file names / encoded records
*before* decoding, so shuffle buffers never hold many decoded videos. A folder split that small
is also checked file by file (open + first frame) before training (``selfsup-train``'s
preflight) or when its pipeline is built, so a broken file is a one-line
:class:`~selfsup.datasets.video_decode.VideoDecodeError` naming it, not an error inside tf.data
later; in bigger folder splits a file that fails to decode is skipped with a logged warning
naming it.
"""

from __future__ import annotations

import abc
import os
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from selfsup.datasets.sample_videos import prepare_sample_videos
from selfsup.datasets.video_decode import (
    VIDEO_EXTENSIONS,
    check_video,
    decode_video,
    is_video_file,
)
from selfsup.models.registry import ConfigError

SAMPLE_VIDEOS = "sample_videos"
VIDEO_FOLDER_PREFIX = "video_folder:"
AUTOTUNE = tf.data.AUTOTUNE
# Up to this many videos per split are cached decoded in memory (sample_videos: 8 per split,
# ~50 MB at a 128 px short side); more (UCF101: 9.5k) stream from disk.
CACHE_MAX_VIDEOS = 200
# Encoded tfds records shuffled before decoding (each can be tens of MB of PNG frames).
TFDS_RECORD_SHUFFLE_BUFFER = 16
DEFAULT_VIDEO_IMAGE_SIZE = 112  # C3D / 3D-ResNet crops (Tran et al. 2015; Hara et al. 2018)


def _sharded(dataset: tf.data.Dataset,
             input_context: tf.distribute.InputContext | None) -> tf.data.Dataset:
    if input_context is None or input_context.num_input_pipelines <= 1:
        return dataset
    return dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)


class VideoSource(abc.ABC):
    """A resolved video dataset: splits, classes, and a tf.data of decoded uint8 videos."""

    name: str

    @property
    @abc.abstractmethod
    def splits(self) -> list[str]: ...

    @property
    @abc.abstractmethod
    def class_names(self) -> list[str]:
        """Label names in label order (empty when the dataset has no labels)."""

    @abc.abstractmethod
    def num_videos(self, split: str) -> int: ...

    @abc.abstractmethod
    def _references(self, split: str, input_context: tf.distribute.InputContext | None,
                    first: int | None, shuffle_seed: int | None) -> tf.data.Dataset:
        """``(reference, int64 label, int64 video_index)`` of this input pipeline's videos in
        file order (the tfds source may shuffle its files when ``shuffle_seed`` is given)."""

    @abc.abstractmethod
    def _decode(self, reference: tf.Tensor, frame_size: int) -> tf.Tensor:
        """uint8 ``[t, h, w, 3]`` frames, shorter side ``frame_size``, from a reference."""

    def _reference_shuffle_buffer(self, split: str) -> int:
        return max(1, self.num_videos(split))

    def _drops_undecodable(self, split: str) -> bool:
        """Whether videos that fail to decode are dropped (with a warning) instead of ending
        the run."""
        return False

    @property
    @abc.abstractmethod
    def location(self) -> str:
        """Where the videos are (folder, or tfds dataset dir), for messages."""

    @property
    def num_classes(self) -> int | None:
        return len(self.class_names) or None

    @property
    def default_image_size(self) -> int:
        """Square crop side fed to video backbones: 112 (C3D / 3D ResNets)."""
        return DEFAULT_VIDEO_IMAGE_SIZE

    @property
    def eval_split(self) -> str:
        """The held-out split used for reporting: ``test`` when present, else ``validation``."""
        for split in ("test", "validation", "val"):
            if split in self.splits:
                return split
        raise ConfigError(f"video dataset {self.name!r} has no test or validation split "
                          f"(splits: {', '.join(self.splits)})")

    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise ConfigError(f"video dataset {self.name!r} has no split {split!r}; "
                              f"splits: {', '.join(self.splits)}")

    def videos(self, split: str, frame_size: int,
               input_context: tf.distribute.InputContext | None = None,
               first: int | None = None, shuffle_seed: int | None = None) -> tf.data.Dataset:
        """``(uint8 frames [t, h, w, 3], int64 label, int64 video_index)``, one per video.

        File order unless ``shuffle_seed`` is given (then a seeded order that changes every
        epoch when repeated). ``input_context``: this pipeline's shard only. ``first``: only the
        first videos in file order (read once, not cached).
        """
        self.check_split(split)
        if frame_size < 1:
            raise ConfigError(f"frame_size must be positive, got {frame_size}")
        cache = first is None and self.num_videos(split) <= CACHE_MAX_VIDEOS
        references = self._references(split, input_context, first,
                                      None if cache else shuffle_seed)
        if shuffle_seed is not None and not cache:
            references = references.shuffle(self._reference_shuffle_buffer(split),
                                            seed=shuffle_seed, reshuffle_each_iteration=True)
        videos = references.map(
            lambda reference, label, index: (self._decode(reference, frame_size), label, index),
            num_parallel_calls=AUTOTUNE)
        if self._drops_undecodable(split):
            videos = videos.ignore_errors(log_warning=True)
        if cache:
            videos = videos.cache()
            if shuffle_seed is not None:
                videos = videos.shuffle(max(1, self.num_videos(split)), seed=shuffle_seed,
                                        reshuffle_each_iteration=True)
        return videos


class VideoFolderSource(VideoSource):
    """Videos in ``<root>/<split>/<label>/<video file>``, decoded with OpenCV."""

    def __init__(self, root: str | os.PathLike, name: str | None = None) -> None:
        root = Path(root)
        self.name = name or f"{VIDEO_FOLDER_PREFIX}{root}"
        self.root = root
        if not root.is_dir():
            raise ConfigError(f"video folder {str(root)!r} does not exist")
        self._files: dict[str, list[tuple[str, str]]] = {}
        for split_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            files = sorted(
                (label_dir.name, video.name)
                for label_dir in split_dir.iterdir() if label_dir.is_dir()
                for video in label_dir.iterdir() if video.is_file() and is_video_file(video))
            if files:
                self._files[split_dir.name] = files
        if not self._files:
            raise ConfigError(
                f"video folder {str(root)!r} holds no video files as <split>/<label>/<video> "
                f"(extensions: {', '.join(VIDEO_EXTENSIONS)})")
        self._class_names = sorted({label for files in self._files.values()
                                    for label, _ in files})
        self._declared_frames: dict[str, list[int]] = {}

    @property
    def splits(self) -> list[str]:
        return sorted(self._files)

    @property
    def location(self) -> str:
        return str(self.root)

    @property
    def class_names(self) -> list[str]:
        return list(self._class_names)

    def num_videos(self, split: str) -> int:
        self.check_split(split)
        return len(self._files[split])

    def video_paths(self, split: str) -> list[str]:
        """The split's files in file order (position = video_index)."""
        self.check_split(split)
        return [str(self.root / split / label / video) for label, video in self._files[split]]

    def labels(self, split: str) -> list[int]:
        self.check_split(split)
        return [self._class_names.index(label) for label, _ in self._files[split]]

    def is_checked(self, split: str) -> bool:
        """Whether :meth:`declared_frames` opens the split's files (small splits only)."""
        return self.num_videos(split) <= CACHE_MAX_VIDEOS

    def declared_frames(self, split: str) -> list[int] | None:
        """Opens every video of a split of at most :data:`CACHE_MAX_VIDEOS` once (first frame
        decoded; a broken file is a one-line VideoDecodeError naming it) and returns their
        declared frame counts in file order (0: unknown); None for bigger splits."""
        if not self.is_checked(split):
            return None
        if split not in self._declared_frames:
            self._declared_frames[split] = [check_video(path) for path in self.video_paths(split)]
        return self._declared_frames[split]

    def _drops_undecodable(self, split: str) -> bool:
        # Splits too big to open file by file up front: the decode error names the file, and
        # the warning carries it.
        return not self.is_checked(split)

    def _references(self, split, input_context, first, shuffle_seed):
        paths, labels = self.video_paths(split), self.labels(split)
        self.declared_frames(split)
        count = len(paths) if first is None else min(first, len(paths))
        dataset = tf.data.Dataset.from_tensor_slices((
            tf.constant(paths[:count], tf.string),
            tf.constant(labels[:count], tf.int64),
            tf.range(count, dtype=tf.int64)))
        return _sharded(dataset, input_context)

    def _decode(self, reference, frame_size):
        def decode(path: bytes) -> np.ndarray:
            return decode_video(path.decode(), frame_size)

        frames = tf.numpy_function(decode, [reference], tf.uint8, stateful=False)
        frames.set_shape([None, None, None, 3])
        return frames


def resize_short_side(frames: tf.Tensor, frame_size: int) -> tf.Tensor:
    """uint8 ``[t, h, w, c]`` → uint8 with the shorter side ``frame_size`` (area resize, aspect
    kept, sizes rounded like :func:`~selfsup.datasets.video_decode.resized_frame_shape`)."""
    shape = tf.shape(frames)
    height, width = shape[1], shape[2]
    short = tf.minimum(height, width)

    def scaled(side):
        new = tf.cast(tf.round(tf.cast(side, tf.float64) * frame_size
                               / tf.cast(short, tf.float64)), tf.int32)
        return tf.where(side == short, frame_size, tf.maximum(new, frame_size))

    size = tf.stack([scaled(height), scaled(width)])

    def resize():
        resized = tf.image.resize(frames, size, method="area")
        return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)

    return tf.cond(tf.reduce_all(size == shape[1:3]), lambda: frames, resize)


class TfdsVideoSource(VideoSource):
    """A tensorflow-datasets dataset with a ``tfds.features.Video`` feature (e.g. ``ucf101``)."""

    def __init__(self, name: str, builder: tfds.core.DatasetBuilder, video_key: str,
                 label_key: str | None) -> None:
        self.name = name
        self.builder = builder
        self.video_key = video_key
        self.label_key = label_key

    @property
    def splits(self) -> list[str]:
        return sorted(self.builder.info.splits.keys())

    @property
    def location(self) -> str:
        return str(self.builder.data_dir)

    @property
    def class_names(self) -> list[str]:
        if self.label_key is None:
            return []
        return list(self.builder.info.features[self.label_key].names)

    def num_videos(self, split: str) -> int:
        self.check_split(split)
        return self.builder.info.splits[split].num_examples

    def _reference_shuffle_buffer(self, split: str) -> int:
        return min(TFDS_RECORD_SHUFFLE_BUFFER, max(1, self.num_videos(split)))

    def _references(self, split, input_context, first, shuffle_seed):
        # Frames stay encoded (PNG) until after sharding and shuffling; video_index is
        # recovered from each record's tfds id (shard file, position) and the shard lengths.
        shuffle_files = shuffle_seed is not None and first is None
        read_config = tfds.ReadConfig(
            add_tfds_id=True, try_autocache=False,
            shuffle_seed=shuffle_seed if shuffle_files else None,
            input_context=(input_context if input_context is not None
                           and input_context.num_input_pipelines > 1 and first is None
                           else None))
        dataset = self.builder.as_dataset(
            split=split, shuffle_files=shuffle_files, read_config=read_config,
            decoders={self.video_key: tfds.decode.SkipDecoding()})
        shard_starts = tf.constant(
            np.concatenate([[0], np.cumsum(self.builder.info.splits[split].shard_lengths)[:-1]]),
            tf.int64)

        def reference(example):
            shard = tf.strings.to_number(tf.strings.regex_replace(
                example["tfds_id"], r"^.*-(\d+)-of-\d+__\d+$", r"\1"), tf.int64)
            position = tf.strings.to_number(tf.strings.regex_replace(
                example["tfds_id"], r"^.*__(\d+)$", r"\1"), tf.int64)
            label = (tf.cast(example[self.label_key], tf.int64) if self.label_key
                     else tf.constant(-1, tf.int64))
            return example[self.video_key], label, tf.gather(shard_starts, shard) + position

        dataset = dataset.map(reference, num_parallel_calls=AUTOTUNE)
        if first is not None:
            return _sharded(dataset.take(first), input_context)
        return dataset

    def _decode(self, reference, frame_size):
        frames = self.builder.info.features[self.video_key].decode_example(reference)
        frames = resize_short_side(frames, frame_size)
        frames.set_shape([None, None, None, 3])
        return frames


def _tfds_video_source(dataset: str, data_dir: str | None) -> TfdsVideoSource:
    try:
        builder = tfds.builder(dataset, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise ConfigError(
            f"unknown video dataset {dataset!r}: use {SAMPLE_VIDEOS}, "
            f"{VIDEO_FOLDER_PREFIX}<root> or a tensorflow-datasets video dataset (ucf101)"
        ) from None
    features = builder.info.features
    video_keys = [k for k, f in features.items() if isinstance(f, tfds.features.Video)]
    if not video_keys:
        raise ConfigError(f"dataset {dataset!r} has no video feature; video datasets: "
                          f"{SAMPLE_VIDEOS}, {VIDEO_FOLDER_PREFIX}<root>, tfds ucf101")
    if not builder.is_prepared():
        try:
            builder.download_and_prepare()
        except Exception as error:  # tfds raises many types for missing files / no network
            raise ConfigError(
                f"video dataset {dataset!r} is not prepared in {builder.data_dir} and could "
                f"not be built ({type(error).__name__}: {str(error).splitlines()[0][:200]})"
            ) from None
    supervised = builder.info.supervised_keys
    video_key = supervised[0] if supervised and supervised[0] in video_keys else video_keys[0]
    labels = [k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)]
    label_key = supervised[1] if supervised and supervised[1] in labels else (
        labels[0] if labels else None)
    return TfdsVideoSource(dataset, builder, video_key, label_key)


def open_video_source(dataset: str, data_dir: str | None = None) -> VideoSource:
    """Resolves ``dataset`` (see the module docstring) to a :class:`VideoSource`."""
    if dataset == SAMPLE_VIDEOS:
        return VideoFolderSource(prepare_sample_videos(data_dir), name=SAMPLE_VIDEOS)
    if dataset.startswith(VIDEO_FOLDER_PREFIX):
        return VideoFolderSource(dataset[len(VIDEO_FOLDER_PREFIX):], name=dataset)
    return _tfds_video_source(dataset, data_dir)


def is_video_dataset(dataset: str, data_dir: str | None = None) -> bool:
    """Whether ``dataset`` names video (sample_videos, video_folder:, a tfds Video dataset)."""
    if dataset == SAMPLE_VIDEOS or dataset.startswith(VIDEO_FOLDER_PREFIX):
        return True
    if ":" in dataset:
        return False
    try:
        builder = tfds.builder(dataset, data_dir=data_dir)
    except Exception:  # unknown names are reported by whichever source opens them
        return False
    return any(isinstance(f, tfds.features.Video) for f in builder.info.features.values())
