"""Autoencoders: reconstruct the image from the encoder's pooled features.

``autoencoder``: the encoder (the registry backbone) maps an image to its ``pool`` vector and a
decoder maps that vector back to the image; the pixel loss between the two trains both (the
survey's generation-based methods, §5.1; Hinton & Salakhutdinov, Science 2006).
``denoising_autoencoder`` (Vincent, Larochelle, Bengio & Manzagol, ICML 2008; Vincent et al.,
JMLR 2010): the encoder sees a corrupted image and the decoder must produce the clean one.

Choices here:
  * Decoder: :class:`~selfsup.models.decoders.ImageDecoder` (DCGAN's up-convolutions) from the
    ``pool`` vector, a real bottleneck (decoding the last spatial map would let the network
    copy pixels), 3 output channels at the image size, sigmoid output (values in [0, 1] like
    the input). The model returns the decoder's logits (``logits``) and their sigmoid
    (``reconstruction``).
  * Pixel loss: ``reconstruction_loss=mse`` (default) is the squared error between the
    sigmoid output and the image, averaged over pixels, channels and the batch;
    ``reconstruction_loss=bce`` is the cross-entropy of Bernoulli pixels computed from the
    logits, averaged the same way (the reconstruction cross-entropy Vincent et al. use for
    inputs in [0, 1]; with gray targets its minimum is the targets' entropy, not 0).
  * Corruption (denoising only), made in tf.data per batch with stateless ops seeded from
    (config seed, input pipeline, batch index): ``corruption=masking`` (default; Vincent et
    al.'s main corruption, "masking noise") sets exactly ``round(ν · h · w)`` pixels of each
    image to 0, all channels of a pixel together (masking channels independently would leave a
    gray pixel readable from its other channels), ν = ``masking_fraction`` = 0.25 (one of
    the destruction levels of Vincent et al.'s experiments, which go from 10 % to 50 %);
    ``corruption=gaussian`` adds isotropic N(0, σ²) noise to every value, σ = ``noise_stddev`` =
    0.1 (not clipped, as in the paper's additive Gaussian noise).
  * The loss covers every pixel (the "emphasised" variant of Vincent et al. 2010, which
    weights the corrupted pixels more, is not implemented).
  * The probed and exported encoder is ``model.backbone``; the decoder is discarded.

``sample_images`` returns the first images of the training split (file order) beside their
reconstructions (``reconstructions``: input, reconstruction; for the denoising task
corrupted input, reconstruction, clean image).
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from selfsup.models import FEATURE_ENDPOINT
from selfsup.models.decoders import ImageDecoder
from selfsup.models.registry import ConfigError
from selfsup.tasks.base import TASKS, Task, TaskConfig
from selfsup.tasks.pictures import interleave

RECONSTRUCTION_LOSSES = ("mse", "bce")
CORRUPTIONS = ("masking", "gaussian")
# Masking noise: the fraction ν of pixels set to 0 (see the module docstring).
MASKING_FRACTION = 0.25
# Additive Gaussian noise: its standard deviation on images in [0, 1].
NOISE_STDDEV = 0.1
DECODER_WIDTH = 32
# How many fixed training images ``sample_images`` shows (pairs: 4 columns of the grid; triples:
# 12 images give a 6-column grid, two triples per row).
SAMPLE_PAIRS = 8
SAMPLE_TRIPLES = 12
# Stateless seed component of the fixed corruption of the sample images (no batch uses it).
SAMPLE_SEED = -1


def pixel_losses(targets: tf.Tensor, logits: tf.Tensor, kind: str) -> tf.Tensor:
    """Per-value loss ``[b, h, w, c]`` between targets in [0, 1] and the decoder's logits:
    squared error of ``sigmoid(logits)`` (``mse``) or Bernoulli cross-entropy (``bce``)."""
    targets = tf.cast(targets, tf.float32)
    logits = tf.cast(logits, tf.float32)
    if kind == "mse":
        return tf.square(tf.sigmoid(logits) - targets)
    if kind == "bce":
        return tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits)
    raise ValueError(f"unknown reconstruction loss {kind!r}; valid: {RECONSTRUCTION_LOSSES}")


def masking_noise(images: tf.Tensor, seed: tf.Tensor, fraction: float) -> tf.Tensor:
    """Sets exactly ``round(fraction · h · w)`` pixels (all channels) of each image to 0,
    chosen uniformly per image from the stateless ``seed`` ``[2]``."""
    height, width = images.shape[1], images.shape[2]
    count = int(round(fraction * height * width))
    if count == 0:
        return images
    batch = tf.shape(images)[0]
    scores = tf.random.stateless_uniform([batch, height * width], seed)
    # The count-th smallest score of each image is its threshold (ties have probability 0).
    threshold = -tf.math.top_k(-scores, k=count).values[:, -1:]
    keep = tf.reshape(scores > threshold, [batch, height, width, 1])
    return images * tf.cast(keep, images.dtype)


def gaussian_noise(images: tf.Tensor, seed: tf.Tensor, stddev: float) -> tf.Tensor:
    """Adds N(0, stddev²) to every value (not clipped)."""
    return images + stddev * tf.random.stateless_normal(tf.shape(images), seed,
                                                        dtype=images.dtype)


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig(TaskConfig):
    """Autoencoder settings (see the module docstring)."""

    decoder_width: int = DECODER_WIDTH
    reconstruction_loss: str = "mse"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.decoder_width <= 0:
            raise ConfigError(f"decoder_width must be positive, got {self.decoder_width}")
        if self.reconstruction_loss not in RECONSTRUCTION_LOSSES:
            raise ConfigError(f"reconstruction_loss must be one of "
                              f"{', '.join(RECONSTRUCTION_LOSSES)}, got "
                              f"{self.reconstruction_loss!r}")


@dataclasses.dataclass(frozen=True)
class DenoisingAutoencoderConfig(AutoencoderConfig):
    """Denoising autoencoder settings: the corruption and its level (Vincent et al. 2008)."""

    corruption: str = "masking"
    masking_fraction: float = MASKING_FRACTION
    noise_stddev: float = NOISE_STDDEV

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.corruption not in CORRUPTIONS:
            raise ConfigError(f"corruption must be one of {', '.join(CORRUPTIONS)}, got "
                              f"{self.corruption!r}")
        if not 0.0 < self.masking_fraction < 1.0:
            raise ConfigError(f"masking_fraction must be in (0, 1), got "
                              f"{self.masking_fraction}")
        if self.noise_stddev <= 0:
            raise ConfigError(f"noise_stddev must be positive, got {self.noise_stddev}")


class EncoderDecoderModel(keras.Model):
    """An encoder (``model.backbone``) and a decoder reading one of its endpoints.

    ``call`` returns the encoder's endpoints plus ``logits`` (the decoder's output); the
    autoencoders decode ``pool`` into an image, the edge task a spatial endpoint into a map.
    """

    def __init__(self, backbone: keras.Model, decoder: keras.layers.Layer,
                 decoder_input: str = FEATURE_ENDPOINT, **kwargs) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone
        self.decoder = decoder
        self.decoder_input = decoder_input

    def call(self, images, training=None):
        endpoints = dict(self.backbone(images, training=training))
        endpoints["logits"] = self.decoder(endpoints[self.decoder_input], training=training)
        return endpoints


class AutoencoderTask(Task):
    """Autoencoder (survey §5.1): reconstruct the image from the encoder's ``pool`` vector."""

    config_class = AutoencoderConfig
    config: AutoencoderConfig
    model_name = "autoencoder"

    def __init__(self, config: TaskConfig) -> None:
        super().__init__(config)

    def build_decoder(self) -> ImageDecoder:
        """The decoder from a feature vector to ``image_size × image_size × 3`` logits."""
        config = self.config
        return ImageDecoder(config.image_size, 3, width=config.decoder_width,
                            synchronized_bn=config.synchronized_bn, name="decoder")

    def build_model(self) -> keras.Model:
        return EncoderDecoderModel(self.build_backbone(), self.build_decoder(),
                                   name=self.model_name)

    def corrupt(self, images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """The encoder's input made from clean ``images`` (identity for the plain autoencoder)."""
        return images

    def build_inputs(self, input_context: tf.distribute.InputContext | None = None
                     ) -> tf.data.Dataset:
        """``(encoder input, clean target)`` batches."""
        return self.map_training_images(
            lambda images, seed: (self.corrupt(images, seed), images), input_context)

    def build_losses(self, labels: tf.Tensor, outputs: dict[str, tf.Tensor]) -> tf.Tensor:
        """Mean pixel loss over values, pixels and the batch."""
        return tf.reduce_mean(pixel_losses(labels, outputs["logits"],
                                           self.config.reconstruction_loss))

    def build_metrics(self) -> list[keras.metrics.Metric]:
        return [keras.metrics.Mean("loss")]

    def update_metrics(self, metrics: list[keras.metrics.Metric], loss: tf.Tensor,
                       labels, outputs: dict[str, tf.Tensor]) -> None:
        for metric in metrics:
            metric.update_state(loss if metric.name == "loss" else outputs[metric.name])

    def sample_images(self, model: keras.Model) -> dict[str, tf.Tensor]:
        images = self.first_training_images(SAMPLE_PAIRS)
        reconstructions = tf.sigmoid(model(images, training=False)["logits"])
        return {"reconstructions": interleave(images, reconstructions)}


class DenoisingAutoencoderTask(AutoencoderTask):
    """Denoising autoencoder (Vincent et al. 2008, 2010): clean image from a corrupted one."""

    config_class = DenoisingAutoencoderConfig
    config: DenoisingAutoencoderConfig
    model_name = "denoising_autoencoder"

    def corrupt(self, images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        config = self.config
        if config.corruption == "masking":
            return masking_noise(images, seed, config.masking_fraction)
        return gaussian_noise(images, seed, config.noise_stddev)

    def sample_images(self, model: keras.Model) -> dict[str, tf.Tensor]:
        images = self.first_training_images(SAMPLE_TRIPLES)
        corrupted = self.corrupt(images, tf.constant([self.config.seed, SAMPLE_SEED], tf.int64))
        reconstructions = tf.sigmoid(model(corrupted, training=False)["logits"])
        return {"reconstructions": interleave(tf.clip_by_value(corrupted, 0.0, 1.0),
                                              reconstructions, images)}


TASKS.register("autoencoder", AutoencoderTask)
TASKS.register("denoising_autoencoder", DenoisingAutoencoderTask)
