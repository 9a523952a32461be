"""Colorization: predict the colour (ab of CIE Lab) of an image from its lightness L.

Zhang, Isola & Efros, "Colorful Image Colorization", ECCV 2016. The encoder sees only L,
centred (:class:`~selfsup.models.color_encoders.LightnessEncoder`); a dense head predicts, at
1/4 of the input resolution, a distribution over the Q = 313 quantised ab bins, trained with a
soft-encoded, class-rebalanced cross-entropy (the maths, with the paper's constants, is in
:mod:`selfsup.datasets.color_bins`): soft targets over the ``neighbours`` nearest bins
(Gaussian σ = 5; paper 5 neighbours, official training code 10), each pixel weighted by the
rebalancing weight of its nearest bin (λ = 0.5, expected weight 1 under the smoothed empirical
distribution), grayscale images masked out. Colour images for inspection are decoded with the
annealed mean (T = 0.38). ``colorization_regression`` is the paper's regression baseline:
the same encoder and head with 2 outputs, L2 on ab / 110.

Choices here:
  * Targets at ``target_stride`` (4, the paper's 1/4 resolution; 7×7 at 28 px): ab is
    *average-pooled* over each stride × stride block (the block's mean colour; the paper only
    says the output is at 1/4 resolution). ``image_size`` must be a multiple of the stride.
  * Soft targets travel through tf.data in sparse form (per pixel: the k nearest bins and
    their weights), so a target costs k values instead of Q; the loss gathers the k
    log-probabilities it needs.
  * Head: :class:`~selfsup.models.decoders.ImageDecoder` on the backbone's last spatial
    endpoint (``res4`` of ``resnet_small``), 313 logits per target pixel from a 1×1 convolution
    as in the paper (the regression's 2 values from a 3×3 one).
  * The bin distribution for rebalancing is counted once (cached on the task, in TF) over the
    nearest bins of the target pixels of the first ``prior_examples`` (10,000) images of the
    training split in file order (tinted with the stream's seeds if ``tint_gray_images``; no
    shuffle buffer to fill), grayscale images left out; the paper counts over ImageNet's
    training set. ``sample_images`` colourises the first 16 of these images.
  * Loss normalisation: the weighted per-pixel losses are summed and divided by the number of
    target pixels of the local batch, masked ones included. Dividing by the unmasked count
    would make each replica's loss a ratio of its own counts, and the mean over replicas would
    no longer equal the loss of the global batch; with a fixed count it does.
  * The grayscale test (every pixel |a|, |b| ≤ 5) uses the full-resolution ab.

Grayscale data (Fashion-MNIST): every image is gray, so every image is masked and nothing is
learnt. ``tint_gray_images=true`` colours each gray image with a random hue
(:mod:`selfsup.datasets.tint`, not part of the paper). The hue is then unpredictable from L: the
network can only learn *where* colour is (the garment, not the black background) and how strong
it is, i.e. figure/ground and shape, not the colour of objects; the rebalancing prior is flat in
hue for the same reason.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf

from selfsup.datasets import color_bins, pipelines
from selfsup.datasets.color import lab_to_rgb, rgb_to_lab
from selfsup.datasets.tint import tint_gray_batches
from selfsup.models.color_encoders import LightnessEncoder
from selfsup.models.decoders import ImageDecoder, last_spatial_endpoint
from selfsup.models.registry import ConfigError
from selfsup.tasks.base import BACKBONE_NAME, TASKS, PretextModel, Task, TaskConfig

# Zhang et al. 2016: ab targets at 1/4 of the input resolution.
TARGET_STRIDE = 4
# Regression targets: ab / 110 (over the sRGB gamut |a|, |b| ≤ 107.9, selfsup.datasets.color).
AB_SCALE = 110.0
# How many images sample_images colourises (the first ones of the training split).
SAMPLE_COUNT = 16
DEFAULT_PRIOR_EXAMPLES = 10_000


def lab_targets(images: tf.Tensor, stride: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """RGB ``[b, h, w, 3]`` → (L ``[b, h/s, w/s]``, ab ``[b, h/s, w/s, 2]``, both averaged over
    each stride × stride block, and ``[b]`` mask: 0 for grayscale images, else 1)."""
    lab = rgb_to_lab(images)
    mask = color_bins.grayscale_mask(lab[..., 1:])
    pooled = tf.nn.avg_pool2d(lab, stride, stride, "VALID") if stride > 1 else lab
    return pooled[..., 0], pooled[..., 1:], mask


def colorization_targets(images: tf.Tensor, stride: int, neighbours: int,
                         bin_weights: tf.Tensor) -> dict[str, tf.Tensor]:
    """Per target pixel ``[b, h/s, w/s, ...]``: the soft target in sparse form (``bins``: the
    ``neighbours`` nearest bins, nearest first; ``bin_targets``: their Gaussian weights, sum 1)
    and the loss weight ``weights``: the rebalancing weight of the nearest bin, 0 in grayscale
    images."""
    _, ab, mask = lab_targets(images, stride)
    bins, bin_targets = color_bins.nearest_bins_and_weights(ab, color_bins.ab_bin_centres(),
                                                            neighbours)
    weights = tf.gather(tf.cast(bin_weights, tf.float32), bins[..., 0]) * mask[:, None, None]
    return {"bins": bins, "bin_targets": bin_targets, "weights": weights}


def nearest_bin_counts(images: tf.Tensor, stride: int) -> tf.Tensor:
    """``[Q]`` counts of the target pixels' nearest ab bins, grayscale images left out."""
    _, ab, mask = lab_targets(images, stride)
    pixel_mask = tf.broadcast_to(mask[:, None, None], tf.shape(ab)[:3])
    return color_bins.bin_histogram(color_bins.nearest_ab_bin(ab), pixel_mask)


def weighted_soft_cross_entropy(logits: tf.Tensor, bins: tf.Tensor, bin_targets: tf.Tensor,
                                weights: tf.Tensor) -> tf.Tensor:
    """Σ_pixels w · (−Σ_q z_q log softmax(logits)_q) / number of pixels (masked ones too), with
    the soft target z given sparsely: ``bin_targets`` ``[..., k]`` at the bins ``bins``."""
    log_probabilities = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)
    picked = tf.gather(log_probabilities, bins, batch_dims=len(bins.shape) - 1)
    per_pixel = -tf.reduce_sum(bin_targets * picked, axis=-1)
    return tf.reduce_sum(weights * per_pixel) / tf.cast(tf.size(weights), tf.float32)


def masked_ab_regression_loss(predicted: tf.Tensor, target: tf.Tensor, weights: tf.Tensor
                              ) -> tf.Tensor:
    """Σ_pixels w · |ab − ab̂|² / number of pixels (masked ones too)."""
    squared = tf.reduce_sum(tf.square(tf.cast(predicted, tf.float32) - target), axis=-1)
    return tf.reduce_sum(weights * squared) / tf.cast(tf.size(weights), tf.float32)


def colorize(lightness_images: tf.Tensor, ab: tf.Tensor) -> tf.Tensor:
    """RGB images from the L of ``lightness_images`` ``[b, h, w, 3]`` and a predicted ab map
    ``[b, h', w', 2]`` (resized bilinearly to h × w), clipped to [0, 1]."""
    lightness = rgb_to_lab(lightness_images)[..., :1]
    size = tf.shape(lightness_images)[1:3]
    ab_full = tf.image.resize(tf.cast(ab, tf.float32), size, method="bilinear")
    return lab_to_rgb(tf.concat([lightness, ab_full], axis=-1))


@dataclasses.dataclass(frozen=True)
class ColorTargetConfig(TaskConfig):
    """Settings shared by the colour-prediction tasks (see the module docstring)."""

    target_stride: int = TARGET_STRIDE
    decoder_width: int = 32
    tint_gray_images: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target_stride < 1 or self.image_size % self.target_stride:
            raise ConfigError(f"target_stride must be a positive divisor of image_size "
                              f"{self.image_size}, got {self.target_stride}")
        if self.decoder_width < 1:
            raise ConfigError(f"decoder_width must be positive, got {self.decoder_width}")

    @property
    def target_size(self) -> int:
        return self.image_size // self.target_stride


@dataclasses.dataclass(frozen=True)
class ColorizationConfig(ColorTargetConfig):
    """Colorization settings (defaults: Zhang et al. 2016, see the module docstring)."""

    neighbours: int = color_bins.SOFT_ENCODING_NEIGHBOURS
    class_rebalancing: bool = True
    rebalancing_lambda: float = color_bins.REBALANCING_LAMBDA
    prior_examples: int = DEFAULT_PRIOR_EXAMPLES
    annealing_temperature: float = color_bins.ANNEALED_MEAN_TEMPERATURE

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.neighbours <= color_bins.NUM_AB_BINS:
            raise ConfigError(f"neighbours must be in 1..{color_bins.NUM_AB_BINS}, got "
                              f"{self.neighbours}")
        if not 0.0 <= self.rebalancing_lambda <= 1.0:
            raise ConfigError(f"rebalancing_lambda must be in [0, 1], got "
                              f"{self.rebalancing_lambda}")
        if self.prior_examples < 1:
            raise ConfigError(f"prior_examples must be positive, got {self.prior_examples}")
        if self.annealing_temperature <= 0:
            raise ConfigError(f"annealing_temperature must be positive, got "
                              f"{self.annealing_temperature}")


class ColorPredictionTask(Task):
    """What colorization and its regression baseline share: the L-only encoder, the dense
    head, the (optionally tinted) image stream and the colourised samples."""

    config: ColorTargetConfig
    model_name = "color_prediction"
    output_channels = 2
    sample_logits = "logits"  # the model output that predicted_ab decodes
    output_kernel_size = 3  # the head's last convolution

    def __init__(self, config: ColorTargetConfig) -> None:
        super().__init__(config)
        self._sample_batch: tf.Tensor | None = None

    def build_backbone(self) -> LightnessEncoder:
        # Wraps whatever the base class gives (the shared encoder inside ``multitask``). The
        # wrapper runs in float32 under a mixed policy: Keras would otherwise cast its RGB input
        # to bfloat16/float16 before the Lab conversion (which needs float32); the inner
        # backbone still computes in the policy's dtype.
        return LightnessEncoder(super().build_backbone(), name=BACKBONE_NAME, dtype="float32")

    def build_model(self) -> PretextModel:
        config = self.config
        backbone = self.build_backbone()
        endpoint, shape = last_spatial_endpoint(backbone, config.image_size)
        head = ImageDecoder(config.target_size, self.output_channels, input_size=shape[0],
                            width=config.decoder_width, synchronized_bn=config.synchronized_bn,
                            output_kernel_size=self.output_kernel_size, name="head")
        return PretextModel(backbone, head, head_input=endpoint, name=self.model_name)

    def colour_images(self, input_context: tf.distribute.InputContext | None = None
                      ) -> tf.data.Dataset:
        """The training image batches, gray ones tinted if ``tint_gray_images``."""
        images = self.training_images(input_context)
        if self.config.tint_gray_images:
            images = tint_gray_batches(images, self.config.seed, input_context)
        return images

    def make_targets(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        raise NotImplementedError

    def build_inputs(self, input_context: tf.distribute.InputContext | None = None
                     ) -> tf.data.Dataset:
        make_targets = self.make_targets
        return self.colour_images(input_context).map(
            lambda images: (images, make_targets(images)),
            num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    def build_metrics(self) -> list[keras.metrics.Metric]:
        return [keras.metrics.Mean("loss")]

    def predicted_ab(self, logits: tf.Tensor) -> tf.Tensor:
        """ab ``[b, h', w', 2]`` decoded from the head's output."""
        raise NotImplementedError

    def first_images(self, count: int) -> tf.data.Dataset:
        """Batches of the first ``count`` images of the training split in file order (no
        shuffle buffer to fill), tinted as the stream is if ``tint_gray_images``."""
        config = self.config
        images = pipelines.image_label_dataset(self.source, config.train_split,
                                               config.image_size, first=count)
        batches = images.map(lambda image, label: image).batch(config.global_batch_size)
        if config.tint_gray_images:
            batches = tint_gray_batches(batches, config.seed)
        return batches

    def sample_batch(self) -> tf.Tensor:
        """The first SAMPLE_COUNT images of the training split (:meth:`first_images`); cached."""
        if self._sample_batch is None:
            self._sample_batch = next(iter(self.first_images(SAMPLE_COUNT).unbatch().batch(
                SAMPLE_COUNT)))
        return self._sample_batch

    def sample_images(self, model: keras.Model) -> dict[str, tf.Tensor]:
        """The fixed images colourised from their L (predicted ab, input L), and the images."""
        images = self.sample_batch()
        logits = model(images, training=False)[self.sample_logits]
        return {"colorized": colorize(images, self.predicted_ab(logits)), "original": images}


class ColorizationTask(ColorPredictionTask):
    """Colorization as classification over 313 ab bins (Zhang et al. 2016)."""

    config_class = ColorizationConfig
    config: ColorizationConfig
    model_name = "colorization"
    output_channels = color_bins.NUM_AB_BINS
    # Zhang et al. 2016 (Fig. 2, "conv8_313"): the 313-way classifier is a 1×1 convolution; a
    # 3×3 one cost 9× the multiply-adds and more than the encoder at 28 px.
    output_kernel_size = 1

    def __init__(self, config: ColorizationConfig) -> None:
        super().__init__(config)
        self._bin_weights: np.ndarray | None = None

    def bin_distribution(self) -> np.ndarray:
        """Empirical distribution ``[Q]`` of the target pixels' nearest bins over the first
        ``prior_examples`` training images (:meth:`first_images`; grayscale images left out;
        uniform if all are grayscale)."""
        config = self.config
        batches = math.ceil(config.prior_examples / config.global_batch_size)
        stride = config.target_stride

        counts = self.first_images(batches * config.global_batch_size).reduce(
            tf.zeros([color_bins.NUM_AB_BINS]),
            lambda total, images: total + nearest_bin_counts(images, stride)).numpy()
        if counts.sum() == 0:
            return np.full([color_bins.NUM_AB_BINS], 1.0 / color_bins.NUM_AB_BINS, np.float32)
        return (counts / counts.sum()).astype(np.float32)

    def bin_weights(self) -> np.ndarray:
        """Per-bin rebalancing weights ``[Q]`` (all 1 without ``class_rebalancing``), computed
        once and cached."""
        if self._bin_weights is None:
            if self.config.class_rebalancing:
                smoothed = color_bins.smooth_bin_distribution(self.bin_distribution())
                weights = color_bins.rebalancing_weights(smoothed,
                                                         self.config.rebalancing_lambda)
                self._bin_weights = weights.numpy()
            else:
                self._bin_weights = np.ones([color_bins.NUM_AB_BINS], np.float32)
        return self._bin_weights

    def make_targets(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        return colorization_targets(images, self.config.target_stride, self.config.neighbours,
                                    tf.constant(self.bin_weights()))

    def build_inputs(self, input_context: tf.distribute.InputContext | None = None
                     ) -> tf.data.Dataset:
        self.bin_weights()  # counted eagerly, before the pipeline is traced
        return super().build_inputs(input_context)

    def compute_loss(self, inputs, model: keras.Model, training: bool):
        images, targets = inputs
        outputs = model(images, training=training)
        loss = weighted_soft_cross_entropy(outputs["logits"], targets["bins"],
                                           targets["bin_targets"], targets["weights"])
        return loss, targets, outputs

    def predicted_ab(self, logits: tf.Tensor) -> tf.Tensor:
        return color_bins.annealed_mean_from_logits(logits, color_bins.ab_bin_centres(),
                                                    self.config.annealing_temperature)


class ColorizationRegressionTask(ColorPredictionTask):
    """Zhang et al. 2016's regression baseline: L2 on ab / 110, grayscale images masked."""

    config_class = ColorTargetConfig
    model_name = "colorization_regression"
    output_channels = 2

    def make_targets(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        _, ab, mask = lab_targets(images, self.config.target_stride)
        weights = tf.broadcast_to(mask[:, None, None], tf.shape(ab)[:3])
        return {"ab": ab / AB_SCALE, "weights": weights}

    def compute_loss(self, inputs, model: keras.Model, training: bool):
        images, targets = inputs
        outputs = model(images, training=training)
        loss = masked_ab_regression_loss(outputs["logits"], targets["ab"], targets["weights"])
        return loss, targets, outputs

    def predicted_ab(self, logits: tf.Tensor) -> tf.Tensor:
        return tf.cast(logits, tf.float32) * AB_SCALE


TASKS.register("colorization", ColorizationTask)
TASKS.register("colorization_regression", ColorizationRegressionTask)
