"""Context encoder: fill a hole in the image from its surroundings.

Pathak, Krähenbühl, Donahue, Darrell & Efros, "Context Encoders: Feature Learning by
Inpainting", CVPR 2016. A region of the image is removed (filled with a constant), an encoder
reads what is left and a decoder paints the missing region; the loss is a masked L2
reconstruction, optionally joined by an adversarial loss on the inpainted image.

Choices here (paper §3–§5 and the official Torch code, ``pathak22/context-encoder``):
  * Masks (``mask``; ``selfsup.datasets.masks``, made in tf.data per batch with stateless seeds
    from the config seed, the input pipeline and the batch index): ``random_block`` (default;
    the paper found random blocks and random regions "similarly general" and far better
    features than the central region, §3.3, and used random regions for all its feature
    experiments; PASCAL-shaped random regions are not implemented) or ``central`` (a centred
    square of half the image side). See that module for the block rule and its coverage.
  * The hole is filled with a constant, the mean pixel (paper: "filled with constant mean
    value"; the official code fills with the fixed mean pixel (117, 104, 123) / 255):
    ``fill_value=None`` (default) takes the per-channel mean of the first 10,000 training
    images in file order (0.288 on Fashion-MNIST), or give one value for all channels.
  * Encoder: the registry backbone (``model.backbone``, probed and exported). Decoder:
    :class:`~selfsup.models.decoders.ImageDecoder` (DCGAN up-convolutions, as the paper's
    decoder, §3.1) from the encoder's ``pool`` vector to the full image, sigmoid, 3 channels.
    The paper joins the last conv map (AlexNet pool5, 6×6×256) to the decoder by a
    channel-wise fully connected layer so every decoder unit sees the whole context; decoding
    from ``pool`` (a dense projection of the global features) keeps that global view and is a
    real bottleneck, so the decoder cannot copy a local map. The channel-wise FC is not built.
  * Reconstruction loss: the paper's normalised masked L2 (eq. 1) on the hole, plus the
    official code's overlap: it predicts a region ``overlapPred`` = 4 px larger than the hole
    at 128 px, visible in the input, whose squared errors weigh ``overlapL2Weight`` = 10 times
    more (``train.lua``). Here ``overlap`` (px) defaults to 4/128 of the image side, at least
    1 px (1 px at 28 px), for ``central`` masks, and to 0 for ``random_block`` (the official
    random-mask training runs without it, ``useOverlapPred=0``); ``overlap_weight`` = 10. Per
    image the loss is Σ w·(x̂ − x)² / Σ w over pixels and channels (w: 1 on the hole,
    ``overlap_weight`` on the band, 0 elsewhere), then the mean over the batch, so replicas and
    one device agree. The official code shrinks the 64 px predicted square by the band to make
    the hole; here the hole is the mask and the band grows outside it.
  * Adversarial term: ``adversarial_weight`` = λ_adv; the generator minimises
    (1 − λ_adv)·L_rec + λ_adv·L_adv (the paper's implementation details: λ_rec = 0.999,
    λ_adv = 0.001; the official code's ``wtl2`` mixing). Default 0: the paper's
    feature-learning experiments used the reconstruction loss alone (with AlexNet the
    adversarial loss did not converge, §5.2). With λ_adv > 0 the task is a two-player
    :class:`~selfsup.tasks.adversarial.AdversarialTask`: a DCGAN discriminator
    (:class:`~selfsup.models.discriminators.ConvDiscriminator`, as the paper's) sees real
    images against images whose hole is filled by the prediction (the paper's discriminator
    sees the predicted region alone, unconditioned on the context; scattered random blocks
    have no such region, so it sees the full inpainted image here); the generator's loss is
    the non-saturating −log D; Adam β₁ = 0.5 and the discriminator's learning rate 1/10 of
    the generator's (``discriminator_lr_scale`` = 0.1: the official code runs the generator
    at 10× when both losses are on). ``adam_beta1`` and ``discriminator_lr_scale`` act only
    with the adversarial term; without it the run's optimizer settings apply unchanged.
  * Without the adversarial term the task has one optimizer and the shared step, so it can be
    a ``multitask`` sub-task; with it (two optimizers, a step of its own) it cannot.

``sample_images`` shows 12 fixed training images (file order) with fixed masks as triples:
the encoder's input, the inpainted image (hole filled with the prediction), the original.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from selfsup.datasets import pipelines
from selfsup.datasets.masks import (
    MAX_COVERAGE,
    NUM_BLOCKS,
    central_holes,
    fill_holes,
    overlap_loss_weights,
    random_block_holes,
)
from selfsup.models import FEATURE_ENDPOINT
from selfsup.models.decoders import ImageDecoder
from selfsup.models.discriminators import ConvDiscriminator
from selfsup.models.registry import ConfigError
from selfsup.tasks import adversarial
from selfsup.tasks.adversarial import AdversarialConfig, AdversarialTask
from selfsup.tasks.base import TASKS, TaskConfig
from selfsup.tasks.pictures import interleave

MASKS = ("central", "random_block")
# Official code (train.lua, README's training command): overlapPred = 4 px at fineSize = 128,
# overlapL2Weight = 10.
OFFICIAL_OVERLAP, OFFICIAL_IMAGE_SIZE = 4, 128
OVERLAP_WEIGHT = 10.0
# Pathak et al. 2016 (implementation details): λ_rec = 0.999, λ_adv = 0.001 (the value to use
# when the term is on).
PAPER_ADVERSARIAL_WEIGHT = 0.001
# Official code: with both losses on, the generator's learning rate is 10× the discriminator's.
DISCRIMINATOR_LR_SCALE = 0.1
DECODER_WIDTH = 32
DISCRIMINATOR_WIDTH = 32
# Training images whose mean pixel fills the hole (file order).
FILL_MEAN_EXAMPLES = 10_000
# Fixed training images of ``sample_images`` (triples: 36 images, a 6-column grid, two triples
# per row) and the stateless seed component of their masks (no batch uses it).
SAMPLE_TRIPLES = 12
SAMPLE_SEED = -1


def default_overlap(mask: str, image_size: int) -> int:
    """The official code's overlap band scaled to ``image_size`` (``central``), or 0."""
    if mask == "random_block":
        return 0
    return max(1, round(image_size * OFFICIAL_OVERLAP / OFFICIAL_IMAGE_SIZE))


def masked_l2_loss(images: tf.Tensor, predictions: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """Mean over the batch of Σ w·(x̂ − x)² / Σ w per image (sums over pixels and channels).

    ``weights`` ``[b, h, w, 1]`` (see :func:`~selfsup.datasets.masks.overlap_loss_weights`)
    apply to every channel; pixels of weight 0 do not enter the loss at all.
    """
    images = tf.cast(images, tf.float32)
    predictions = tf.cast(predictions, tf.float32)
    weights = tf.cast(weights, tf.float32) * tf.ones_like(images)
    errors = tf.reduce_sum(weights * tf.square(predictions - images), axis=[1, 2, 3])
    return tf.reduce_mean(tf.math.divide_no_nan(errors, tf.reduce_sum(weights, axis=[1, 2, 3])))


def inpaint(images: tf.Tensor, predictions: tf.Tensor, holes: tf.Tensor) -> tf.Tensor:
    """``images`` with the hole pixels replaced by the prediction's."""
    holes = tf.cast(holes, predictions.dtype)
    return tf.cast(images, predictions.dtype) * (1.0 - holes) + predictions * holes


@dataclasses.dataclass(frozen=True)
class ContextEncoderConfig(AdversarialConfig):
    """Context encoder settings (see the module docstring for the defaults' sources)."""

    mask: str = "random_block"
    num_blocks: int = NUM_BLOCKS
    max_coverage: float = MAX_COVERAGE
    # None: 4/128 of the image side (≥ 1 px) for central masks, 0 for random blocks.
    overlap: int | None = None
    overlap_weight: float = OVERLAP_WEIGHT
    # None: the mean pixel of the training images.
    fill_value: float | None = None
    adversarial_weight: float = 0.0
    decoder_width: int = DECODER_WIDTH
    discriminator_width: int = DISCRIMINATOR_WIDTH
    discriminator_lr_scale: float = DISCRIMINATOR_LR_SCALE

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mask not in MASKS:
            raise ConfigError(f"mask must be one of {', '.join(MASKS)}, got {self.mask!r}")
        if self.num_blocks < 1:
            raise ConfigError(f"num_blocks must be at least 1, got {self.num_blocks}")
        if not 0.0 < self.max_coverage <= 1.0:
            raise ConfigError(f"max_coverage must be in (0, 1], got {self.max_coverage}")
        if self.overlap is not None and self.overlap < 0:
            raise ConfigError(f"overlap must be a number of pixels >= 0 or None, got "
                              f"{self.overlap}")
        if self.overlap_weight <= 0:
            raise ConfigError(f"overlap_weight must be positive, got {self.overlap_weight}")
        if self.fill_value is not None and not 0.0 <= self.fill_value <= 1.0:
            raise ConfigError(f"fill_value must be in [0, 1] or None (the mean pixel), got "
                              f"{self.fill_value}")
        if not 0.0 <= self.adversarial_weight < 1.0:
            raise ConfigError(f"adversarial_weight must be in [0, 1) (the paper's: "
                              f"{PAPER_ADVERSARIAL_WEIGHT}), got {self.adversarial_weight}")
        if self.decoder_width <= 0 or self.discriminator_width <= 0:
            raise ConfigError("decoder_width and discriminator_width must be positive")

    def resolved_overlap(self) -> int:
        """The overlap band in pixels (the default resolved for the mask and image size)."""
        if self.overlap is not None:
            return self.overlap
        return default_overlap(self.mask, self.image_size)


class ContextEncoderModel(keras.Model):
    """Encoder (``model.backbone``), image decoder and, with the adversarial term, the DCGAN
    discriminator (Pathak et al. 2016). ``call`` returns the encoder's endpoints plus
    ``inpainting``: the decoder's full-size image in [0, 1]."""

    def __init__(self, backbone: keras.Model, decoder: keras.layers.Layer,
                 discriminator: keras.layers.Layer | None, image_size: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone
        self.decoder = decoder
        self.discriminator = discriminator
        self.image_size = image_size

    def build(self, input_shape) -> None:
        # The discriminator is not on call()'s path: build it here so the first call creates
        # every variable (the trainer builds optimizers and checkpoints from them).
        if self.discriminator is not None:
            self.discriminator(tf.zeros([1, self.image_size, self.image_size, 3]),
                               training=False)

    def call(self, images, training=None):
        endpoints = dict(self.backbone(images, training=training))
        endpoints["inpainting"] = self.decoder(endpoints[FEATURE_ENDPOINT], training=training)
        return endpoints


class ContextEncoderTask(AdversarialTask):
    """Context encoder (Pathak et al. 2016): masked L2 reconstruction, joined by an adversarial
    loss when ``adversarial_weight > 0`` (encoder and decoder are then the generator, a DCGAN
    discriminator the other player); see the module docstring."""

    config_class = ContextEncoderConfig
    config: ContextEncoderConfig
    # Shareable without the adversarial term (AdversarialTask.can_share_backbone).
    shares_backbone = True

    def __init__(self, config: TaskConfig) -> None:
        super().__init__(config)
        self._mean_pixel: tuple[float, ...] | None = None

    def uses_discriminator(self) -> bool:
        return self.config.adversarial_weight > 0

    def build_discriminator(self) -> ConvDiscriminator | None:
        if not self.uses_discriminator():
            return None
        config = self.config
        return ConvDiscriminator(config.image_size, config.discriminator_width,
                                 synchronized_bn=config.synchronized_bn, name="discriminator")

    def build_model(self) -> ContextEncoderModel:
        config = self.config
        decoder = ImageDecoder(config.image_size, 3, width=config.decoder_width,
                               output_activation="sigmoid",
                               synchronized_bn=config.synchronized_bn, name="decoder")
        return ContextEncoderModel(self.build_backbone(), decoder, self.build_discriminator(),
                                   config.image_size, name="context_encoder")

    def fill_value(self) -> tuple[float, ...]:
        """The hole's per-channel fill: ``config.fill_value``, or the training images' mean
        pixel (computed once from the first FILL_MEAN_EXAMPLES images in file order)."""
        if self.config.fill_value is not None:
            return (float(self.config.fill_value),) * 3
        if self._mean_pixel is None:
            dataset = pipelines.image_label_dataset(self.source, self.config.train_split,
                                                    self.config.image_size,
                                                    first=FILL_MEAN_EXAMPLES)
            total, count = np.zeros(3), 0
            for batch in dataset.map(lambda image, label: image).batch(1000):
                pixels = batch.numpy().reshape(-1, 3)
                total += pixels.sum(axis=0, dtype=np.float64)
                count += len(pixels)
            self._mean_pixel = tuple(float(value) for value in total / count)
        return self._mean_pixel

    def make_holes(self, batch: int | tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """``[batch, s, s, 1]`` holes of the configured kind (``seed``: stateless ``[2]``)."""
        config = self.config
        if config.mask == "central":
            return central_holes(batch, config.image_size)
        return random_block_holes(batch, config.image_size, seed, config.num_blocks,
                                  config.max_coverage)

    def mask_images(self, images: tf.Tensor, seed: tf.Tensor
                    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """``(encoder input with the holes filled, images, holes)`` for a batch."""
        holes = self.make_holes(tf.shape(images)[0], seed)
        return fill_holes(images, holes, self.fill_value()), images, holes

    def build_inputs(self, input_context: tf.distribute.InputContext | None = None
                     ) -> tf.data.Dataset:
        """``(masked images, images, holes)`` batches."""
        self.fill_value()  # computed here, outside tf.data's tracing
        return self.map_training_images(self.mask_images, input_context)

    def loss_weights(self, holes: tf.Tensor) -> tf.Tensor:
        """1 on the hole, ``overlap_weight`` on the overlap band around it, 0 elsewhere."""
        return overlap_loss_weights(holes, self.config.resolved_overlap(),
                                    self.config.overlap_weight)

    def reconstruction(self, inputs, model: keras.Model, training: bool
                       ) -> tuple[tf.Tensor, tf.Tensor]:
        """``(masked L2 loss, predicted images)`` for a batch of inputs."""
        masked, images, holes = inputs
        predictions = model(masked, training=training)["inpainting"]
        loss = masked_l2_loss(images, predictions, self.loss_weights(holes))
        return loss, predictions

    def sample_images(self, model: keras.Model) -> dict[str, tf.Tensor]:
        """Triples: encoder input, inpainted image (hole from the prediction), original."""
        seed = tf.constant([self.config.seed, SAMPLE_SEED], tf.int64)
        masked, images, holes = self.mask_images(self.first_training_images(SAMPLE_TRIPLES), seed)
        predictions = model(masked, training=False)["inpainting"]
        return {"inpaintings": interleave(masked, inpaint(images, predictions, holes), images)}

    def log_names(self) -> tuple[str, ...]:
        names = super().log_names()
        return (*names, "reconstruction_loss", "adversarial_loss") if (
            self.uses_discriminator()) else names

    def generator_variables(self, model: ContextEncoderModel) -> list:
        return [*model.backbone.trainable_variables, *model.decoder.trainable_variables]

    def discriminator_variables(self, model: ContextEncoderModel) -> list:
        return list(model.discriminator.trainable_variables)

    def generator_loss(self, inputs, model: ContextEncoderModel, training: bool):
        """The masked L2 alone, or (1 − λ_adv)·L_rec + λ_adv·(−log D(inpainted))."""
        _, images, holes = inputs
        reconstruction, predictions = self.reconstruction(inputs, model, training)
        if not self.uses_discriminator():
            return reconstruction, {}
        fake_logits = model.discriminator(inpaint(images, predictions, holes), training=training)
        fooling = adversarial.generator_loss(fake_logits)
        weight = self.config.adversarial_weight
        loss = (1.0 - weight) * reconstruction + weight * fooling
        return loss, {"reconstruction_loss": reconstruction, "adversarial_loss": fooling}

    def discriminator_loss(self, inputs, model: ContextEncoderModel, training: bool):
        masked, images, holes = inputs
        predictions = tf.stop_gradient(model(masked, training=training)["inpainting"])
        real_logits = model.discriminator(images, training=training)
        fake_logits = model.discriminator(inpaint(images, predictions, holes), training=training)
        return adversarial.discriminator_loss(real_logits, fake_logits), {}


TASKS.register("context_encoder", ContextEncoderTask)
