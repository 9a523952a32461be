"""Audio-visual correspondence: does this sound go with this frame?

Arandjelović & Zisserman, "Look, Listen and Learn" (L3-Net), ICCV 2017: a vision network sees one
frame, an audio network one second of sound centred on it, and a fusion head (their two 512-d
vectors concatenated → fc 128 + ReLU → fc 2) says whether they come from the same video;
positives and negatives are balanced, negatives pair the frame with audio of another video.
Korbar, Tran & Torresani, "Cooperative Learning of Audio and Video Models from Self-Supervised
Synchronization" (AVTS), NeurIPS 2018, add *hard* negatives: audio of the same video, out of
sync.

Choices here:
  * Pairs are made per batch, in the graph (:func:`make_pairs`): each example is a frame at
    time ``t`` of one video, its in-sync audio (centred on ``t``) and an out-of-sync window of
    the same video (centred at least ``min_shift_seconds`` away). A pair keeps the in-sync
    audio with probability ``positive_fraction`` (0.5, L3-Net's balance); otherwise it takes
    the out-of-sync window with probability ``hard_negative_fraction`` (0 by default = L3-Net;
    e.g. 0.25 for AVTS-style hard negatives) or else the in-sync audio of the previous example
    of the batch (``tf.roll``: another video, L3-Net's negative).
  * The label is computed from what the pair holds, not from how it was made
    (:func:`correspondence_labels`): 1 iff frame and audio come from the same video and their
    times differ by less than ``sync_tolerance_seconds`` (0.5 s; ``min_shift_seconds`` = 1 s,
    one audio window, so a hard negative's audio does not overlap the frame's own). A rolled
    pair that happens to hold the same video at the same moment is thus labelled 1, and
    swapping the audio of two pairs flips both labels.
  * Vision: any image backbone of the registry on one ``image_size`` crop (default
    ``resnet_small`` at 32 px for this CPU; L3-Net: a VGG-style net on 224 px); it is
    ``model.backbone``, so restoring and exporting the visual encoder work as for every image
    task; it is probed through its export (``selfsup-eval --saved_model=... --dataset=<a
    labelled image set>``), the run's own videos having no image labels.
  * Audio: :class:`~selfsup.models.audio_net.AudioNet` (L3-Net's audio convnet at
    ``audio_width_multiplier`` = 0.25 of its widths) over a VGGish log-mel spectrogram (16 kHz,
    25 ms / 10 ms, 64 bands 125–7500 Hz, log offset 0.01; Hershey et al. 2017) of
    ``audio_seconds`` = 1 s (L3-Net), kept as ``model.audio_net`` (checkpoint keys
    ``audio_net/...``).
  * Data: ``sample_av`` (default; two real clips with soundtracks and six generated ones,
    :mod:`selfsup.datasets.sample_av`) or ``av_folder:<root>``; frames are decoded with a
    ``frame_size`` shorter side and cropped and flipped at random.
  * No AVTS curriculum (easy negatives first) and no contrastive loss: cross-entropy on the
    2-way output, as L3-Net.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from selfsup.datasets import pipelines
from selfsup.datasets.audio import SAMPLE_RATE
from selfsup.datasets.av_sources import (
    AV_FOLDER_PREFIX,
    SAMPLE_AV,
    AVFolderSource,
    is_av_dataset,
    open_av_source,
    sample_av_windows,
)
from selfsup.models import FEATURE_ENDPOINT
from selfsup.models.audio_net import AudioNet
from selfsup.models.heads import MLPHead
from selfsup.models.registry import ConfigError
from selfsup.models.video_backbone import check_backbone_modality
from selfsup.tasks.base import TASKS, Task, TaskConfig

L3_AUDIO_SECONDS = 1.0  # Arandjelović & Zisserman 2017, §3.1
L3_FUSION_UNITS = 128  # Arandjelović & Zisserman 2017, Fig. 2 (fc1)
AUDIO_WIDTH_MULTIPLIER = 0.25  # 16/32/64/128 channels instead of 64/…/512: CPU-sized
AUDIO_NET_NAME = "audio_net"


def correspondence_labels(frame_videos: tf.Tensor, frame_times: tf.Tensor,
                          audio_videos: tf.Tensor, audio_times: tf.Tensor,
                          tolerance_seconds: float) -> tf.Tensor:
    """int32 ``[b]``: 1 where frame and audio are of the same video and less than
    ``tolerance_seconds`` apart in time, else 0."""
    same_video = tf.equal(frame_videos, audio_videos)
    in_sync = tf.abs(frame_times - audio_times) < tolerance_seconds
    return tf.cast(same_video & in_sync, tf.int32)


def make_pairs(batch: dict[str, tf.Tensor], seed: tf.Tensor, *, positive_fraction: float,
               hard_negative_fraction: float, tolerance_seconds: float
               ) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    """A batch of :func:`~selfsup.datasets.av_sources.sample_av_windows` examples →
    ``({"frames", "audio", "frame_video", "frame_time", "audio_video", "audio_time"},
    labels)``: the pair and where (video index) and when (seconds) each half comes from.

    The frame stays; the audio is the in-sync window, the same video's out-of-sync window or
    the previous example's in-sync window, chosen per pair from the stateless ``seed``.
    """
    size = tf.shape(batch["video_index"])[0]
    draws = tf.random.stateless_uniform([2, size], seed)
    positive = draws[0] < positive_fraction
    hard = ~positive & (draws[1] < hard_negative_fraction)
    other = ~positive & ~hard

    def choose(own, shifted, rolled):
        def widen(mask):
            return tf.reshape(mask, [-1] + [1] * (len(own.shape) - 1))

        return tf.where(widen(other), rolled, tf.where(widen(hard), shifted, own))

    audio = choose(batch["audio"], batch["shifted_audio"], tf.roll(batch["audio"], 1, axis=0))
    audio_video = choose(batch["video_index"], batch["video_index"],
                         tf.roll(batch["video_index"], 1, axis=0))
    audio_time = choose(batch["frame_time"], batch["shifted_time"],
                        tf.roll(batch["frame_time"], 1, axis=0))
    labels = correspondence_labels(batch["video_index"], batch["frame_time"], audio_video,
                                   audio_time, tolerance_seconds)
    inputs = {"frames": batch["frames"], "audio": audio,
              "frame_video": batch["video_index"], "frame_time": batch["frame_time"],
              "audio_video": audio_video, "audio_time": audio_time}
    return inputs, labels


@dataclasses.dataclass(frozen=True)
class AVCorrespondenceConfig(TaskConfig):
    """Audio-visual correspondence settings (see the module docstring)."""

    dataset: str = SAMPLE_AV
    image_size: int = 32
    frame_size: int = 40  # shorter side of decoded frames, before the random crop
    sample_rate: int = SAMPLE_RATE
    audio_seconds: float = L3_AUDIO_SECONDS
    positive_fraction: float = 0.5
    hard_negative_fraction: float = 0.0
    min_shift_seconds: float = 1.0
    sync_tolerance_seconds: float = 0.5
    audio_width_multiplier: float = AUDIO_WIDTH_MULTIPLIER
    fusion_units: int = L3_FUSION_UNITS

    def __post_init__(self) -> None:
        super().__post_init__()
        if not is_av_dataset(self.dataset):
            raise ConfigError(f"av_correspondence takes videos with sound: dataset {SAMPLE_AV} "
                              f"or {AV_FOLDER_PREFIX}<root>, got {self.dataset!r}")
        check_backbone_modality(self.backbone, video=False)
        if self.frame_size < self.image_size:
            raise ConfigError(f"frame_size ({self.frame_size}) must be at least image_size "
                              f"({self.image_size}): crops are taken from decoded frames")
        for name in ("positive_fraction", "hard_negative_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {value}")
        for name in ("sample_rate", "audio_seconds", "audio_width_multiplier", "fusion_units",
                     "sync_tolerance_seconds"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.min_shift_seconds < self.sync_tolerance_seconds:
            raise ConfigError(f"min_shift_seconds ({self.min_shift_seconds}) must be at least "
                              f"sync_tolerance_seconds ({self.sync_tolerance_seconds}): "
                              "shifted audio must be out of sync")
        if self.audio_samples < 400:
            raise ConfigError(f"audio_seconds={self.audio_seconds} at {self.sample_rate} Hz is "
                              "shorter than one 25 ms spectrogram window")

    @property
    def audio_samples(self) -> int:
        return int(round(self.audio_seconds * self.sample_rate))


class AVCorrespondenceModel(keras.Model):
    """Vision backbone (``model.backbone``), audio network (``model.audio_net``) and L3-Net's
    fusion head; ``call`` takes ``{"frames", "audio"}`` and returns the vision endpoints, the
    audio endpoints prefixed ``audio_``, and the 2-way ``logits``."""

    def __init__(self, backbone: keras.Model, audio_net: AudioNet, fusion_units: int,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone
        self.audio_net = audio_net
        self.fusion = MLPHead((fusion_units,), 2, batch_norm=False, name="fusion")

    def call(self, inputs, training=None):
        endpoints = dict(self.backbone(inputs["frames"], training=training))
        audio = self.audio_net(inputs["audio"], training=training)
        endpoints.update({f"audio_{name}": value for name, value in audio.items()})
        joint = keras.ops.concatenate([
            keras.ops.cast(endpoints[FEATURE_ENDPOINT], "float32"),
            keras.ops.cast(audio[FEATURE_ENDPOINT], "float32")], axis=-1)
        endpoints["logits"] = self.fusion(joint)
        return endpoints


class AVCorrespondenceTask(Task):
    """Audio-visual correspondence (L3-Net, Arandjelović & Zisserman 2017; AVTS hard negatives,
    Korbar et al. 2018)."""

    config_class = AVCorrespondenceConfig
    config: AVCorrespondenceConfig
    # Its inputs are frames plus audio: no other task's image batches fit its step.
    shares_backbone = False

    def __init__(self, config: TaskConfig) -> None:
        if not isinstance(config, AVCorrespondenceConfig):
            raise ConfigError("av_correspondence needs an AVCorrespondenceConfig")
        super().__init__(config)
        self._av_source: AVFolderSource | None = None

    @property
    def source(self) -> AVFolderSource:  # type: ignore[override]
        """The resolved audio-visual dataset (opened once, lazily)."""
        if self._av_source is None:
            self._av_source = open_av_source(self.config.dataset, self.config.data_dir)
            self._av_source.check_split(self.config.train_split)
        return self._av_source

    def build_audio_net(self) -> AudioNet:
        config = self.config
        return AudioNet(config.sample_rate, width_multiplier=config.audio_width_multiplier,
                        synchronized_bn=config.synchronized_bn, name=AUDIO_NET_NAME)

    def build_model(self) -> AVCorrespondenceModel:
        return AVCorrespondenceModel(self.build_backbone(), self.build_audio_net(),
                                     self.config.fusion_units, name="av_correspondence")

    def dummy_inputs(self) -> dict[str, tf.Tensor]:
        size = self.config.image_size
        return {"frames": tf.zeros([1, size, size, 3]),
                "audio": tf.zeros([1, self.config.audio_samples])}

    def training_examples(self, input_context: tf.distribute.InputContext | None = None
                          ) -> tf.data.Dataset:
        """Endless batches of :func:`~selfsup.datasets.av_sources.sample_av_windows` examples
        (videos in a seeded order reshuffled every epoch, one stateless seed per example)."""
        config = self.config
        stream = 0 if input_context is None else input_context.input_pipeline_id
        videos = self.source.videos(config.train_split, config.frame_size, config.sample_rate,
                                    shuffle_seed=config.seed).repeat()
        if input_context is not None and input_context.num_input_pipelines > 1:
            videos = videos.shard(input_context.num_input_pipelines, stream)
        seeds = tf.data.Dataset.counter(start=stream << 32, dtype=tf.int64).map(
            lambda index: tf.stack([tf.constant(config.seed + 1, tf.int64), index]))
        examples = tf.data.Dataset.zip((videos, seeds)).map(
            lambda video, seed: sample_av_windows(
                video, seed, image_size=config.image_size, audio_samples=config.audio_samples,
                sample_rate=config.sample_rate, min_shift_seconds=config.min_shift_seconds),
            num_parallel_calls=tf.data.AUTOTUNE)
        return examples.batch(self.per_replica_batch_size(input_context), drop_remainder=True)

    def build_inputs(self, input_context: tf.distribute.InputContext | None = None
                     ) -> tf.data.Dataset:
        """``({"frames", "audio", ...provenance}, labels)`` batches, pairs and labels made in
        the graph (:func:`make_pairs`); the model reads ``frames`` and ``audio``."""
        config = self.config
        stream = 0 if input_context is None else input_context.input_pipeline_id
        batches = pipelines.with_batch_seeds(self.training_examples(input_context),
                                             config.seed, stream)
        return batches.map(
            lambda batch, seed: make_pairs(
                batch, seed, positive_fraction=config.positive_fraction,
                hard_negative_fraction=config.hard_negative_fraction,
                tolerance_seconds=config.sync_tolerance_seconds),
            num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    def first_training_images(self, count: int) -> tf.Tensor:
        raise NotImplementedError("av_correspondence shows no sample images")


TASKS.register("av_correspondence", AVCorrespondenceTask)
