"""The contract of video pretext tasks: clips in, pseudo-labels made per batch.

A video task is a :class:`~selfsup.tasks.base.Task` over a :class:`VideoSource` (a folder of
video files, a tfds video dataset, or the offline ``sample_videos``) and a video backbone
(``[batch, time, height, width, 3]`` clips in, endpoints out). The data layer samples, per
video, ``windows_per_video`` windows of ``window_length`` frames (every ``frame_stride``-th,
random start) with one random crop and flip per window; a task turns the batch of windows into
its inputs and pseudo-labels in one vectorised function (:meth:`VideoTask.map_training_clips`).
The defaults are the C3D/R3D input conventions (Tran et al. 2015): frames decoded with a
128 px shorter side, 112 px crops, 16-frame clips.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from selfsup.datasets import clips, pipelines
from selfsup.datasets.video_sources import VideoSource, is_video_dataset, open_video_source
from selfsup.models.registry import ConfigError
from selfsup.models.video_backbone import check_backbone_modality
from selfsup.tasks.base import Task, TaskConfig


@dataclasses.dataclass(frozen=True)
class VideoTaskConfig(TaskConfig):
    """TaskConfig for clips: ``image_size`` is the square crop fed to the backbone."""

    backbone: str = "r3d_18"
    dataset: str = "sample_videos"
    image_size: int = 112  # C3D / R3D crop (Tran et al. 2015)
    frame_size: int = 128  # shorter side of decoded frames (C3D resizes to 128 × 171)
    clip_length: int = 16  # frames per clip (Tran et al. 2015)
    frame_stride: int = 1  # take every k-th frame

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.frame_size < self.image_size:
            raise ConfigError(f"frame_size ({self.frame_size}) must be at least image_size "
                              f"({self.image_size}): crops are taken from decoded frames")
        if self.clip_length < 1:
            raise ConfigError(f"clip_length must be positive, got {self.clip_length}")
        if self.frame_stride < 1:
            raise ConfigError(f"frame_stride must be positive, got {self.frame_stride}")


class VideoTask(Task):
    """Base of video tasks: a video source, clip batches, a video backbone."""

    config_class = VideoTaskConfig
    config: VideoTaskConfig

    def __init__(self, config: VideoTaskConfig) -> None:
        if not isinstance(config, VideoTaskConfig):
            raise ConfigError(f"{type(self).__name__} needs a VideoTaskConfig")
        super().__init__(config)
        self._video_source: VideoSource | None = None

    @property
    def video_source(self) -> VideoSource:
        """The resolved video dataset (opened once, lazily)."""
        if self._video_source is None:
            self._video_source = open_video_source(self.config.dataset, self.config.data_dir)
            self._video_source.check_split(self.config.train_split)
        return self._video_source

    @property
    def source(self) -> VideoSource:  # type: ignore[override]
        return self.video_source

    def build_backbone(self):
        if self._shared_backbone is None:
            check_backbone_modality(self.config.backbone, video=True)
        return super().build_backbone()

    def window_length(self) -> int:
        """Frames in one sampled window (tasks that cut several clips from one window, or
        take frames far apart, ask for more)."""
        return self.config.clip_length

    def windows_per_video(self) -> int:
        """Independent windows sampled from each video (two views of one video: 2)."""
        return 1

    def dummy_inputs(self) -> tf.Tensor:
        size = self.config.image_size
        return tf.zeros([1, self.config.clip_length, size, size, 3])

    def training_clips(self, input_context: tf.distribute.InputContext | None = None
                       ) -> tf.data.Dataset:
        """Endless float32 ``[b, windows_per_video, window_length, s, s, 3]`` batches."""
        config = self.config
        return clips.training_clips(
            self.video_source, config.train_split, frame_size=config.frame_size,
            image_size=config.image_size, num_windows=self.windows_per_video(),
            num_frames=self.window_length(), frame_stride=config.frame_stride,
            batch_size=self.per_replica_batch_size(input_context), seed=config.seed,
            input_context=input_context)

    def map_training_clips(self, function,
                           input_context: tf.distribute.InputContext | None = None
                           ) -> tf.data.Dataset:
        """``function(clips, seed)`` over :meth:`training_clips` batches, each with its own
        stateless seed (as :meth:`Task.map_training_images`), prefetched."""
        stream = 0 if input_context is None else input_context.input_pipeline_id
        batches = pipelines.with_batch_seeds(self.training_clips(input_context),
                                             self.config.seed, stream)
        return batches.map(function, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
            tf.data.AUTOTUNE)

    def first_training_images(self, count: int) -> tf.Tensor:
        raise NotImplementedError("video tasks show clips: use first_training_clips")

    def first_training_clips(self, count: int) -> tf.Tensor:
        """The evaluation clips (one centred window of ``window_length`` frames) of the first
        ``count`` training videos, float32 ``[count, window_length, s, s, 3]``: fixed inputs
        for :meth:`sample_images`."""
        if count not in self._first_images:
            config = self.config
            dataset = clips.evaluation_clips(
                self.video_source, config.train_split, frame_size=config.frame_size,
                image_size=config.image_size, num_windows=1, num_frames=self.window_length(),
                frame_stride=config.frame_stride, first=count)
            self._first_images[count] = next(iter(
                dataset.map(lambda windows, label, index: windows[0]).batch(count)))
        return self._first_images[count]


def check_task_modality(task: type[Task], config: TaskConfig) -> None:
    """ConfigError unless the backbone and dataset take what ``task`` takes (clips or images),
    naming the valid backbones: a mismatch must fail before anything is built."""
    if getattr(task, "takes_point_clouds", False):
        return  # its config checks that backbone and dataset take point clouds
    video = issubclass(task, VideoTask)
    check_backbone_modality(config.backbone, video=video)
    if is_video_dataset(config.dataset, config.data_dir) != video:
        kind, other = ("video", "images") if video else ("images", "video")
        raise ConfigError(f"dataset {config.dataset!r} holds {other}, but this task takes "
                          f"{kind}; " + ("video datasets: sample_videos, video_folder:<root>, "
                                         "a tfds video set (ucf101)" if video else
                                         "image datasets: a tfds image set, image_folder:<root>"))
