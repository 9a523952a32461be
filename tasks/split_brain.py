"""Split-brain autoencoder: two half networks, each predicting the other's Lab channels.

Zhang, Isola & Efros, "Split-Brain Autoencoders: Unsupervised Learning by Cross-Channel
Prediction", CVPR 2017. The image is split into L and ab (CIE Lab); one sub-network sees L and
predicts ab, the other sees ab and predicts L, each as per-pixel classification (the paper's
best "cl, cl" variant) with a cross-entropy loss on 1-hot targets: ab quantised into the Q = 313
bins of Zhang et al. 2016 (nearest bin centre), L into 50 bins of width 2 (§4). The total loss
is the sum of the two. Each sub-network is half as wide as the single network (the paper splits
AlexNet's channels in half); the transferred feature is both sub-networks' features
concatenated.

Choices here:
  * The encoder is CMC's :class:`~selfsup.tasks.cmc.SplitColorEncoder` (L and ab backbones,
    half width where the backbone has a ``width_multiplier``; ``pool`` = both pooled vectors
    concatenated). Each dense head is an :class:`~selfsup.models.decoders.ImageDecoder` on its
    sub-network's last spatial endpoint.
  * Targets at ``target_stride`` (4, as colorization): L and ab are averaged over each
    stride × stride block, then quantised. No soft encoding or class rebalancing (the paper's
    "basic 1-hot encoding").
  * Grayscale images (every pixel |a|, |b| ≤ 5) are masked out of *both* losses: their ab input
    is constant and their ab target is the gray bin. Each loss is divided by the number of
    target pixels of the local batch, masked ones included (replica-consistent, as in
    :mod:`selfsup.tasks.colorization`).

Grayscale data (Fashion-MNIST): ``tint_gray_images=true`` colours each gray image with a random
hue (:mod:`selfsup.datasets.tint`, not in the paper). The ab network then sees the garment's
shape in its chroma (chroma grows with lightness, so L is partly predictable from it); the L
network can learn where colour is and how strong, never which hue.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from selfsup.datasets import color_bins
from selfsup.models.decoders import ImageDecoder
from selfsup.models.registry import ConfigError
from selfsup.tasks.base import BACKBONE_NAME, TASKS
from selfsup.tasks.cmc import SplitColorEncoder, check_view_width, view_backbone_kwargs
from selfsup.tasks.colorization import ColorPredictionTask, ColorTargetConfig, lab_targets


def last_spatial_view_endpoints(encoder: SplitColorEncoder, image_size: int
                                ) -> dict[str, tuple[str, tuple]]:
    """For each view prefix (``l``, ``ab``): the name and ``(h, w, c)`` of that view network's
    last 4-D endpoint."""
    specs = encoder.output_specs((None, image_size, image_size, 3))
    found = {}
    for prefix in ("l", "ab"):
        spatial = [(name, shape[1:]) for name, shape in specs.items()
                   if name.startswith(f"{prefix}_") and len(shape) == 4]
        if not spatial:
            raise ValueError(f"the {prefix} network has no spatial endpoint")
        found[prefix] = spatial[-1]
    return found


def split_brain_targets(images: tf.Tensor, stride: int, lightness_bins: int
                        ) -> dict[str, tf.Tensor]:
    """Per target pixel ``[b, h/s, w/s]``: the nearest ab bin, the L bin, and the weight (0 in
    grayscale images, else 1)."""
    lightness, ab, mask = lab_targets(images, stride)
    return {"ab_bins": color_bins.nearest_ab_bin(ab, color_bins.ab_bin_centres()),
            "l_bins": color_bins.quantize_lightness(lightness, lightness_bins),
            "weights": tf.broadcast_to(mask[:, None, None], tf.shape(lightness))}


def masked_cross_entropy(logits: tf.Tensor, labels: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """Σ_pixels w · CE(labels, logits) / number of pixels (masked ones too)."""
    per_pixel = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=labels, logits=tf.cast(logits, tf.float32))
    return tf.reduce_sum(weights * per_pixel) / tf.cast(tf.size(weights), tf.float32)


@dataclasses.dataclass(frozen=True)
class SplitBrainConfig(ColorTargetConfig):
    """Split-brain settings (defaults: Zhang et al. 2017, see the module docstring)."""

    # None: 0.5 for backbones with a width multiplier (the paper's half networks), else 1.0.
    width_multiplier: float | None = None
    lightness_bins: int = color_bins.NUM_L_BINS
    annealing_temperature: float = color_bins.ANNEALED_MEAN_TEMPERATURE

    def __post_init__(self) -> None:
        super().__post_init__()
        check_view_width(self.backbone, self.backbone_kwargs, self.width_multiplier)
        if self.lightness_bins < 2:
            raise ConfigError(f"lightness_bins must be at least 2, got {self.lightness_bins}")
        if self.annealing_temperature <= 0:
            raise ConfigError(f"annealing_temperature must be positive, got "
                              f"{self.annealing_temperature}")


class SplitBrainModel(keras.Model):
    """The two-view encoder plus the L → ab and ab → L dense heads (Zhang et al. 2017)."""

    def __init__(self, backbone: SplitColorEncoder, l_endpoint: str, ab_endpoint: str,
                 ab_head: keras.layers.Layer, l_head: keras.layers.Layer, **kwargs) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone
        self.l_endpoint = l_endpoint
        self.ab_endpoint = ab_endpoint
        self.ab_head = ab_head
        self.l_head = l_head

    def call(self, images, training=None):
        endpoints = dict(self.backbone(images, training=training))
        endpoints["ab_logits"] = self.ab_head(endpoints[self.l_endpoint], training=training)
        endpoints["l_logits"] = self.l_head(endpoints[self.ab_endpoint], training=training)
        return endpoints


class SplitBrainTask(ColorPredictionTask):
    """Split-brain autoencoder (Zhang et al. 2017): L → ab and ab → L classification."""

    config_class = SplitBrainConfig
    config: SplitBrainConfig
    shares_backbone = False  # its own two-network encoder
    model_name = "split_brain"
    sample_logits = "ab_logits"  # sample_images colourises with the L network's prediction

    def build_backbone(self) -> SplitColorEncoder:
        config = self.config
        kwargs = view_backbone_kwargs(config.backbone, config.backbone_kwargs,
                                      config.width_multiplier)
        return SplitColorEncoder(config.backbone, input_size=config.image_size,
                                 synchronized_bn=config.synchronized_bn, backbone_kwargs=kwargs,
                                 name=BACKBONE_NAME)

    def build_model(self) -> SplitBrainModel:
        config = self.config
        backbone = self.build_backbone()
        ends = last_spatial_view_endpoints(backbone, config.image_size)

        def head(channels: int, prefix: str, name: str) -> ImageDecoder:
            return ImageDecoder(config.target_size, channels, input_size=ends[prefix][1][0],
                                width=config.decoder_width,
                                synchronized_bn=config.synchronized_bn, name=name)

        return SplitBrainModel(backbone, ends["l"][0], ends["ab"][0],
                               head(color_bins.NUM_AB_BINS, "l", "ab_head"),
                               head(config.lightness_bins, "ab", "l_head"),
                               name=self.model_name)

    def make_targets(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        return split_brain_targets(images, self.config.target_stride,
                                   self.config.lightness_bins)

    def build_metrics(self) -> list[keras.metrics.Metric]:
        return [keras.metrics.Mean("loss"), keras.metrics.Mean("ab_loss"),
                keras.metrics.Mean("l_loss")]

    def compute_loss(self, inputs, model: keras.Model, training: bool):
        """Sum of the L → ab and ab → L losses; the outputs carry both."""
        images, targets = inputs
        outputs = model(images, training=training)
        ab_loss = masked_cross_entropy(outputs["ab_logits"], targets["ab_bins"],
                                       targets["weights"])
        l_loss = masked_cross_entropy(outputs["l_logits"], targets["l_bins"],
                                      targets["weights"])
        return ab_loss + l_loss, targets, {"ab_loss": ab_loss, "l_loss": l_loss}

    def update_metrics(self, metrics: list[keras.metrics.Metric], loss: tf.Tensor, labels,
                       outputs: dict[str, tf.Tensor]) -> None:
        for metric in metrics:
            metric.update_state(loss if metric.name == "loss" else outputs[metric.name])

    def predicted_ab(self, logits: tf.Tensor) -> tf.Tensor:
        return color_bins.annealed_mean_from_logits(logits, color_bins.ab_bin_centres(),
                                                    self.config.annealing_temperature)


TASKS.register("split_brain", SplitBrainTask)
