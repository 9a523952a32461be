"""RGB–optical-flow correspondence: an RGB stream and a flow stream that must agree.

Sayed, Brattoli & Ommer, "Cross and Learn: Cross-Modal Self-Supervision", GCPR 2018: an RGB
network and an optical-flow network, each with its own weights, are trained without labels so
that their features of the same clip agree across the two modalities (the paper's cross-modal
loss, with a diversity loss keeping different clips apart); the RGB network is then the
pretrained encoder. Here the agreement is learnt with one of two losses (``loss=``):

* ``correspondence``: binary classification of (RGB clip, flow clip) pairs, fused by an fc 128
  + ReLU + fc 1 head on the two pooled features (the shape of Arandjelović & Zisserman's L³-Net
  correspondence head, ICCV 2017). Every video of the batch gives ``clips_per_video`` windows
  (frames and their flow cut and cropped together); each RGB clip is paired with its own flow
  clip (positive) and with one other flow clip (negative): with probability 1/2 another window
  of the *same* video (another time and crop, so appearance alone cannot tell), otherwise a
  window of another video of the batch. Balanced, so chance accuracy is 50 %. Labels are made
  in-graph from the windows' provenance ``(video index, start, crop, flip)``: a pair is
  positive exactly when the flow clip is the flow of the RGB clip's pixels.
* ``contrastive``: CMC's two-directional InfoNCE (Tian et al. 2019; :func:`cmc_loss`) between
  128-d linear projections of the two streams' pooled features, τ = 0.07; the other windows of
  the global batch, including other times of the same video, are the negatives.

Flow input (``flow=``): ``farneback`` (default) is OpenCV Farneback flow computed once per video
and cached (:mod:`selfsup.datasets.optical_flow`: clipped to ±20 px at a 256 px frame size,
scaled with ``frame_size``, stored as uint8; the stream sees ``q / 255``, 2 channels);
``difference`` is ``frame_differences`` of the RGB clip computed in the graph (3 channels,
``t − 1`` frames, no cache, any video source). The flow stream is ``flow_backbone`` (default:
the same registered video backbone) named ``flow_backbone``; the RGB stream is
``model.backbone``, so probes, ``restore_encoder``, ``selfsup-eval`` and ``selfsup-export``
see an ordinary RGB video encoder.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from selfsup.datasets import optical_flow, pipelines
from selfsup.models import FEATURE_ENDPOINT, build_backbone
from selfsup.models.heads import MLPHead
from selfsup.models.registry import ConfigError
from selfsup.models.two_stream import frame_differences
from selfsup.models.video_backbone import check_backbone_modality
from selfsup.tasks.base import TASKS
from selfsup.tasks.cmc import CMC_EMBEDDING_DIM, CMC_TEMPERATURE, cmc_loss
from selfsup.tasks.video_base import VideoTask, VideoTaskConfig

FLOWS = ("farneback", "difference")
LOSSES = ("correspondence", "contrastive")
FLOW_BACKBONE_NAME = "flow_backbone"
# L³-Net's correspondence fusion layer width (Arandjelović & Zisserman 2017).
HEAD_UNITS = 128
CLIPS_PER_VIDEO = 2


@dataclasses.dataclass(frozen=True)
class RGBFlowConfig(VideoTaskConfig):
    """rgb_flow settings (see the module docstring); ``flow_backbone`` None: ``backbone``;
    ``flow_bound`` None: ±20 px at a 256 px frame size, scaled to ``frame_size``;
    ``flow_cache_dir`` None: ``<tfds data dir>/selfsup_optical_flow``."""

    flow: str = "farneback"
    loss: str = "correspondence"
    flow_backbone: str | None = None
    clips_per_video: int = CLIPS_PER_VIDEO
    head_units: int = HEAD_UNITS
    temperature: float = CMC_TEMPERATURE
    embedding_dim: int = CMC_EMBEDDING_DIM
    flow_bound: float | None = None
    flow_cache_dir: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.flow not in FLOWS:
            raise ConfigError(f"flow must be one of {', '.join(FLOWS)}, got {self.flow!r}")
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.flow_backbone is not None:
            check_backbone_modality(self.flow_backbone, video=True)
        if self.clips_per_video < 1:
            raise ConfigError(f"clips_per_video must be positive, got {self.clips_per_video}")
        if self.loss == "correspondence" and self.clips_per_video * self.global_batch_size < 2:
            raise ConfigError("correspondence needs two clips per batch for a negative; raise "
                              "the batch size or clips_per_video")
        for name in ("head_units", "embedding_dim", "temperature", "flow_bound"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")

    def resolved_flow_bound(self) -> float:
        """The flow clip in pixels (:func:`~selfsup.datasets.optical_flow.default_flow_bound`
        when ``flow_bound`` is None)."""
        if self.flow_bound is not None:
            return self.flow_bound
        return optical_flow.default_flow_bound(self.frame_size)


def correspondence_pairs(num_videos: int | tf.Tensor, clips_per_video: int, seed: tf.Tensor
                         ) -> tf.Tensor:
    """int32 ``[2n, 2]`` (RGB clip, flow clip) rows over ``n = num_videos · clips_per_video``
    clips (clip ``v · clips_per_video + k`` = window ``k`` of video ``v``).

    Rows ``0..n−1`` pair clip ``i`` with itself; row ``n + i`` pairs it with one other clip:
    another window of video ``v`` (probability 1/2, or always when the batch has one video) or
    a window of another video (always when each video has one window).
    """
    num_videos = tf.cast(num_videos, tf.int32)
    count = num_videos * clips_per_video
    clip = tf.range(count)
    video, window = clip // clips_per_video, clip % clips_per_video
    kind_seed, video_seed, window_seed, time_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 4))
    other_time_possible = clips_per_video > 1
    other_video_possible = num_videos > 1
    coin = tf.random.stateless_uniform([count], kind_seed) < 0.5
    same_video = tf.logical_or(tf.logical_and(coin, other_time_possible),
                               tf.logical_not(other_video_possible))
    # Another video: v + r (mod b), r uniform in 1..b−1, any window.
    video_shift = tf.random.stateless_uniform([count], video_seed, minval=1,
                                              maxval=tf.maximum(num_videos, 2), dtype=tf.int32)
    other_video = (video + video_shift) % num_videos
    any_window = tf.random.stateless_uniform([count], window_seed, minval=0,
                                             maxval=clips_per_video, dtype=tf.int32)
    # Same video, another window: k + r (mod w), r uniform in 1..w−1.
    window_shift = tf.random.stateless_uniform([count], time_seed, minval=1,
                                               maxval=max(clips_per_video, 2), dtype=tf.int32)
    other_window = (window + window_shift) % clips_per_video
    negative = tf.where(same_video, video * clips_per_video + other_window,
                        other_video * clips_per_video + any_window)
    return tf.concat([tf.stack([clip, clip], axis=1), tf.stack([clip, negative], axis=1)], 0)


def correspondence_labels(rgb_provenance: tf.Tensor, flow_provenance: tf.Tensor,
                          pairs: tf.Tensor) -> tf.Tensor:
    """float32 ``[k]``: 1 where flow clip ``pairs[:, 1]`` was cut from the same video, frames,
    crop and flip as RGB clip ``pairs[:, 0]`` (their provenance rows ``[n, 5]`` equal), else 0.
    In a batch both streams' clips come from the same windows: one provenance for both."""
    rgb = tf.gather(rgb_provenance, pairs[:, 0])
    flow = tf.gather(flow_provenance, pairs[:, 1])
    return tf.cast(tf.reduce_all(tf.equal(rgb, flow), axis=1), tf.float32)


def motion_clips(batch: dict[str, tf.Tensor], flow: str) -> tf.Tensor:
    """The flow stream's input for the flattened clips: cached flow ``[n, t, s, s, 2]``, or
    frame differences ``[n, t − 1, s, s, 3]`` of the RGB clips."""
    if flow == "farneback":
        return _flatten_clips(batch["flow"])
    return frame_differences(_flatten_clips(batch["rgb"]))


def _flatten_clips(windows: tf.Tensor) -> tf.Tensor:
    """``[b, w, t, s, s, c]`` → ``[b · w, t, s, s, c]``."""
    flat = tf.reshape(windows, tf.concat([[-1], tf.shape(windows)[2:]], 0))
    return tf.ensure_shape(flat, [None, *windows.shape[2:]])


class RGBFlowModel(keras.Model):
    """RGB stream (``backbone``), flow stream (``flow_backbone``) and the loss's head: a
    correspondence classifier on paired pooled features, or one projection per stream
    (Sayed et al. 2018; module docstring)."""

    def __init__(self, backbone: keras.Model, flow_backbone: keras.Model, loss: str,
                 head_units: int = HEAD_UNITS, embedding_dim: int = CMC_EMBEDDING_DIM,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone
        self.flow_backbone = flow_backbone
        self.loss_kind = loss
        if loss == "correspondence":
            self.head = MLPHead((head_units,), 1, batch_norm=False, name="head")
        else:
            self.rgb_projection = keras.layers.Dense(embedding_dim, name="rgb_projection")
            self.flow_projection = keras.layers.Dense(embedding_dim, name="flow_projection")

    def call(self, inputs, training=None):
        endpoints = dict(self.backbone(inputs["rgb"], training=training))
        flow = self.flow_backbone(inputs["motion"], training=training)
        endpoints["flow_pool"] = flow[FEATURE_ENDPOINT]
        rgb_pool = endpoints[FEATURE_ENDPOINT]
        if self.loss_kind == "correspondence":
            pairs = inputs["pairs"]
            fused = tf.concat([tf.gather(rgb_pool, pairs[:, 0]),
                               tf.gather(endpoints["flow_pool"], pairs[:, 1])], axis=-1)
            endpoints["logits"] = self.head(fused)[:, 0]
        else:
            endpoints["rgb_embedding"] = self.rgb_projection(rgb_pool)
            endpoints["flow_embedding"] = self.flow_projection(endpoints["flow_pool"])
        return endpoints


class RGBFlowTask(VideoTask):
    """Cross and Learn (Sayed et al. 2018): RGB–flow correspondence or contrast of clips."""

    config_class = RGBFlowConfig
    config: RGBFlowConfig
    shares_backbone = False  # a second stream and paired inputs of its own

    def windows_per_video(self) -> int:
        return self.config.clips_per_video

    def flow_farneback_params(self) -> optical_flow.FarnebackParams:
        return optical_flow.FarnebackParams()

    def build_flow_backbone(self) -> keras.Model:
        config = self.config
        return build_backbone(config.flow_backbone or config.backbone,
                              input_size=config.image_size,
                              synchronized_bn=config.synchronized_bn, name=FLOW_BACKBONE_NAME,
                              **config.backbone_kwargs)

    def build_model(self) -> RGBFlowModel:
        config = self.config
        return RGBFlowModel(self.build_backbone(), self.build_flow_backbone(), config.loss,
                            config.head_units, config.embedding_dim, name="rgb_flow")

    def dummy_inputs(self) -> dict[str, tf.Tensor]:
        config = self.config
        size, length = config.image_size, config.clip_length
        if config.flow == "farneback":
            motion = tf.zeros([1, length, size, size, 2])
        else:
            motion = tf.zeros([1, max(length - 1, 1), size, size, 3])
        return {"rgb": tf.zeros([1, length, size, size, 3]), "motion": motion,
                "pairs": tf.zeros([1, 2], tf.int32)}

    def flow_files(self) -> list | None:
        """The training split's cached flow files (computed on first use), None for
        ``flow=difference``."""
        config = self.config
        if config.flow != "farneback":
            return None
        cache_dir = config.flow_cache_dir or optical_flow.default_flow_cache_dir(config.data_dir)
        return optical_flow.ensure_flow_cache(
            self.video_source, config.train_split, config.frame_size, cache_dir,
            self.flow_farneback_params(), config.resolved_flow_bound())

    def build_inputs(self, input_context: tf.distribute.InputContext | None = None
                     ) -> tf.data.Dataset:
        config = self.config
        batches = optical_flow.training_window_batches(
            self.video_source, config.train_split, frame_size=config.frame_size,
            image_size=config.image_size, num_windows=config.clips_per_video,
            num_frames=config.clip_length, frame_stride=config.frame_stride,
            batch_size=self.per_replica_batch_size(input_context), seed=config.seed,
            flow_files=self.flow_files(), input_context=input_context)
        stream = 0 if input_context is None else input_context.input_pipeline_id

        def pairs_and_labels(batch, seed):
            provenance = tf.reshape(batch["provenance"], [-1, 5])
            inputs = {"rgb": _flatten_clips(batch["rgb"]),
                      "motion": motion_clips(batch, config.flow)}
            if config.loss == "contrastive":
                return inputs, provenance
            pairs = correspondence_pairs(tf.shape(batch["rgb"])[0], config.clips_per_video,
                                         seed)
            inputs["pairs"] = pairs
            return inputs, correspondence_labels(provenance, provenance, pairs)

        return pipelines.with_batch_seeds(batches, config.seed, stream).map(
            pairs_and_labels, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    def build_losses(self, labels: tf.Tensor, outputs: dict[str, tf.Tensor]) -> tf.Tensor:
        if self.config.loss == "contrastive":
            return cmc_loss(outputs["rgb_embedding"], outputs["flow_embedding"],
                            self.config.temperature)
        return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(
            labels=tf.cast(labels, tf.float32), logits=tf.cast(outputs["logits"], tf.float32)))

    def build_metrics(self) -> list[keras.metrics.Metric]:
        metrics = [keras.metrics.Mean("loss")]
        if self.config.loss == "correspondence":
            metrics.append(keras.metrics.BinaryAccuracy("accuracy", threshold=0.0))
        return metrics

    def update_metrics(self, metrics, loss, labels, outputs) -> None:
        for metric in metrics:
            if metric.name == "loss":
                metric.update_state(loss)
            else:
                metric.update_state(labels, tf.cast(outputs["logits"], tf.float32))


TASKS.register("rgb_flow", RGBFlowTask)
