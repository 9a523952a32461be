"""Video SimCLR (CVRL): two clips from different times of one video must recognise each other.

Qian, Meng, Gong, Yang, Wang, Belongie & Cui, "Spatiotemporal Contrastive Video Representation
Learning", CVPR 2021. Two clips are sampled from every video at different times, each gets its
own *temporally consistent* spatial augmentation (one crop, flip, colour jitter, grayscale and
blur draw per clip, applied identically to all of its frames), the 3D backbone and a projection
MLP map them to embeddings, and NT-Xent (SimCLR's loss, :func:`selfsup.tasks.contrastive.nt_xent`)
pulls the two clips of a video together against the 2N − 2 clips of the other videos of the
global batch (negatives gathered from all replicas). Probes and exports use the encoder before
the projection.

Where the pieces come from: the clip sampler (:mod:`selfsup.datasets.clips`) draws the two
windows (``windows_per_video = 2``) with independent random starts, crops and flips; this
module adds CVRL's random resized crop and SimCLR's colour jitter, grayscale and blur
(:mod:`selfsup.datasets.augment`) per clip, vectorised over the batch: the frames of a clip are
stacked into one tall image for the per-image colour ops (so one draw covers the clip, and
contrast uses the clip's mean, the same for all its frames), and the blur gets one σ per clip
repeated over its frames.

CVRL's settings and what changes on this 2-core CPU (fields of :class:`VideoSimCLRConfig`):

* Temperature τ = 0.1 (CVRL's implementation details, with batch 1024); kept.
* Clip spacing: CVRL's temporal augmentation draws the gap between the two clips' starts from
  a monotonically decreasing distribution P(t) ∝ −t + c over the video's length, so near clips
  are likelier than far ones; the shared clip sampler draws the two starts independently and
  uniformly (a triangular gap distribution, also decreasing in |t|, but over the whole video).
* Clips: CVRL pretrains on 16-frame clips of 224 px (temporal stride 2 on Kinetics); here the
  VideoTaskConfig defaults (16 frames, stride 1, 112 px), 8 frames of 32 px in the tests.
* Batch: CVRL's 1024 videos give 2046 negatives per anchor; a CPU batch of 8 gives 14, and
  with a handful of training videos a batch can hold one video twice (a "negative" that is
  really a positive).
* Random resized crop: area 30–100 % of the sampled window, aspect ratio 1/2–2 (CVRL's
  spatial augmentation), one box per clip.
* Colour and blur: SimCLR's recipe (Appendix A: jitter of brightness, contrast, saturation
  0.8·s and hue 0.2·s with p = 0.8, s = 1; grayscale p = 0.2; blur p = 0.5, σ ∈ [0.1, 2]),
  drawn once per clip as CVRL's temporally consistent augmentation asks.
* Projection head: CVRL's is an MLP on the pooled features with a 128-d output; here SimCLR's
  default of this project, one hidden layer of 512 with BatchNorm (synchronized), output 128
  (the test-sized encoders pool 64 features).
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from selfsup.datasets import augment
from selfsup.datasets.augment import ViewAugmentation, simclr_augmentation
from selfsup.models.registry import ConfigError
from selfsup.tasks.base import TASKS, PretextModel
from selfsup.tasks.contrastive import nt_xent
from selfsup.tasks.simclr import SimCLRConfig, projection_head
from selfsup.tasks.video_base import VideoTask, VideoTaskConfig

CVRL_TEMPERATURE = 0.1  # Qian et al. 2021 (implementation details)
CVRL_CROP_AREA = (0.3, 1.0)  # Qian et al. 2021, spatial augmentation: area 30–100 %
CVRL_CROP_ASPECT_RATIO = (0.5, 2.0)  # Qian et al. 2021, spatial augmentation: aspect 1/2–2
VIEWS_PER_VIDEO = 2


@dataclasses.dataclass(frozen=True)
class VideoSimCLRConfig(VideoTaskConfig, SimCLRConfig):
    """Video SimCLR settings: SimCLR's fields (and their checks) with CVRL's defaults, plus the
    grayscale probability (see the module docstring for the sources of the defaults)."""

    temperature: float = CVRL_TEMPERATURE
    color_strength: float = 1.0
    crop_min_area: float = CVRL_CROP_AREA[0]
    grayscale_probability: float = 0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.grayscale_probability <= 1:
            raise ConfigError(
                f"grayscale_probability must be in [0, 1], got {self.grayscale_probability}")


def frames_as_images(clips: tf.Tensor) -> tf.Tensor:
    """``[b, t, s, s, c]`` → ``[b·t, s, s, c]`` (frames of clip ``i`` are rows ``i·t …``)."""
    return tf.reshape(clips, [-1, *clips.shape[2:]])


def clips_as_tall_images(clips: tf.Tensor) -> tf.Tensor:
    """``[b, t, h, w, c]`` → ``[b, t·h, w, c]``: each clip's frames stacked top to bottom, so
    a per-image op with per-image random parameters treats the whole clip alike."""
    frames, height, width, channels = clips.shape[1:]
    return tf.reshape(clips, [-1, frames * height, width, channels])


def clip_resized_crop(clips: tf.Tensor, seed, area_range: tuple[float, float] = CVRL_CROP_AREA,
                      ratio_range: tuple[float, float] = CVRL_CROP_ASPECT_RATIO) -> tf.Tensor:
    """One random resized crop per clip, the same box for all its frames, back to ``s × s``."""
    frames, height, width = clips.shape[1:4]
    batch = tf.shape(clips)[0]
    boxes = augment.sample_crop_boxes(batch, seed, area_range, ratio_range, height, width)
    frame_boxes = tf.repeat(boxes, frames, axis=0)
    images = frames_as_images(clips)
    crops = tf.image.crop_and_resize(images, frame_boxes, tf.range(tf.shape(images)[0]),
                                     [height, width], method="bilinear")
    return tf.reshape(tf.cast(crops, clips.dtype), tf.shape(clips))


def clip_color_augment(clips: tf.Tensor, seed, augmentation: ViewAugmentation) -> tf.Tensor:
    """SimCLR's colour jitter, grayscale and blur with one random draw per clip (CVRL's
    temporally consistent augmentation), vectorised over the batch."""
    a = augmentation
    jitter_seed, gray_seed, blur_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 3))
    tall = clips_as_tall_images(clips)
    if a.jitter_probability > 0:
        tall = augment.color_jitter(tall, jitter_seed, a.brightness, a.contrast, a.saturation,
                                    a.hue, a.jitter_probability, a.additive_brightness)
    if a.grayscale_probability > 0:
        tall = augment.random_grayscale(tall, gray_seed, a.grayscale_probability)
    clips = tf.reshape(tall, tf.shape(clips))
    if a.blur_probability > 0:
        clips = clip_blur(clips, blur_seed, a.blur_probability, a.blur_sigma,
                          a.blur_kernel_fraction)
    return clips


def clip_blur(clips: tf.Tensor, seed, probability: float,
              sigma_range: tuple[float, float] = augment.BLUR_SIGMA,
              kernel_fraction: float = augment.BLUR_KERNEL_FRACTION) -> tf.Tensor:
    """Gaussian blur of each clip with ``probability``, one σ per clip for all its frames
    (frame by frame: a tall image would blur across frame borders)."""
    sigma_seed, mask_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    frames, height = clips.shape[1], clips.shape[2]
    batch = tf.shape(clips)[0]
    sigma = tf.random.stateless_uniform([batch], sigma_seed, *sigma_range)
    images = frames_as_images(clips)
    blurred = augment.gaussian_blur(images, tf.repeat(sigma, frames),
                                    augment.blur_kernel_size(height, kernel_fraction))
    chosen = tf.random.stateless_uniform([batch], mask_seed) < probability
    chosen = tf.reshape(tf.repeat(chosen, frames), [-1, 1, 1, 1])
    return tf.reshape(tf.where(chosen, blurred, images), tf.shape(clips))


def augment_clips(clips: tf.Tensor, seed, augmentation: ViewAugmentation) -> tf.Tensor:
    """One temporally consistent random view of every clip ``[b, t, s, s, 3]``."""
    crop_seed, color_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    clips = clip_resized_crop(clips, crop_seed, augmentation.crop_area,
                              augmentation.crop_aspect_ratio)
    return clip_color_augment(clips, color_seed, augmentation)


def clip_pairs(windows: tf.Tensor, seed, augmentation: ViewAugmentation
               ) -> tuple[tf.Tensor, tf.Tensor]:
    """``[b, 2, t, s, s, 3]`` (two windows per video) → ``(view_a, view_b)``, each ``[b, t, s,
    s, 3]``: row ``i`` of both views comes from video ``i``, ``view_a`` from its first window
    and ``view_b`` from its second, each clip with its own augmentation draw."""
    count = tf.shape(windows)[0]
    both = tf.concat([windows[:, 0], windows[:, 1]], axis=0)
    augmented = augment_clips(both, seed, augmentation)
    return augmented[:count], augmented[count:]


class VideoSimCLRTask(VideoTask):
    """CVRL-style video SimCLR (Qian et al. 2021): NT-Xent between two clips of each video."""

    config_class = VideoSimCLRConfig
    config: VideoSimCLRConfig

    def windows_per_video(self) -> int:
        return VIEWS_PER_VIDEO

    def augmentation(self) -> ViewAugmentation:
        config = self.config
        return simclr_augmentation(config.color_strength, crop_area=(config.crop_min_area, 1.0),
                                   crop_aspect_ratio=CVRL_CROP_ASPECT_RATIO,
                                   grayscale_probability=config.grayscale_probability,
                                   blur_probability=config.blur_probability)

    def build_model(self) -> PretextModel:
        return PretextModel(self.build_backbone(), projection_head(self.config),
                            name="video_simclr")

    def build_inputs(self, input_context: tf.distribute.InputContext | None = None
                     ) -> tf.data.Dataset:
        augmentation = self.augmentation()
        return self.map_training_clips(
            lambda windows, seed: clip_pairs(windows, seed, augmentation), input_context)

    def build_metrics(self) -> list[keras.metrics.Metric]:
        return [keras.metrics.Mean("loss")]

    def compute_loss(self, inputs, model: keras.Model, training: bool):
        """NT-Xent of this replica's clip pairs; one forward pass over both views (BatchNorm
        sees both)."""
        view_a, view_b = inputs
        count = tf.shape(view_a)[0]
        projections = model(tf.concat([view_a, view_b], axis=0), training=training)["logits"]
        loss = nt_xent(projections[:count], projections[count:], self.config.temperature)
        return loss, None, {}


TASKS.register("video_simclr", VideoSimCLRTask)
