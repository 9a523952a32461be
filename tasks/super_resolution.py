"""Super-resolution with an adversarial loss (SRGAN); the discriminator is the transferred encoder.

Ledig et al., "Photo-Realistic Single Image Super-Resolution Using a Generative Adversarial
Network", CVPR 2017. A generator (SRResNet, :class:`~selfsup.models.generators.SRResNet`) maps
the image downscaled by ``scale`` back to full size; a discriminator tells its outputs from the
originals. Super-resolution is one of the survey's generation-based pretext tasks (Jing & Tian,
§5.1); the features transferred here are the discriminator's: D = the registry backbone
(``model.backbone``, probed and exported) + a linear real/fake logit on ``pool``.

Generator loss (the paper's eq. 3 with a pixel term):
``pixel_weight · MSE + content_weight · content + adversarial_weight · (−log D(G(x_LR)))``.
  * Pixel MSE is computed on the paper's HR range [−1, 1] (§3.2: "The MSE loss was thus
    calculated on images of intensity range [−1, 1]"), i.e. 4× the MSE of our [0, 1] images, so
    the paper's weights carry over.
  * Adversarial weight 10⁻³ (eq. 3); non-saturating −log D(G(x_LR)) (eq. 6).
  * Content loss — a deviation: the paper's is the MSE between ImageNet-pretrained VGG19 feature
    maps (φ₅,₄, rescaled by 1/12.75, i.e. ×0.006 on the loss) of the output and the original.
    No pretrained network can be downloaded here, so the feature space is the discriminator's
    own backbone at ``content_endpoint`` (None: its last spatial endpoint, the analogue of the
    paper's deepest VGG54; e.g. ``res4`` of ``resnet_small``), run in inference mode (BatchNorm
    moving statistics, like a fixed VGG) — feature matching on D's features. The content loss
    updates only the generator (D's variables belong to the other optimizer and the targets
    φ(x) are constants), and its feature space moves as D trains. Default weight 0.06 (10×
    the paper's 0.006), chosen as the paper chose its rescaling, to put the content term on
    the scale of the pixel MSE: measured on Fashion-MNIST (``resnet_small`` ``res4``, ×4,
    Adam 2e-4, batch 64), the mean content MSE was 2.80 over the first 20 steps and 0.70 at
    step 200 against pixel MSEs of 0.45 and 0.11, so 0.06 makes it ≈ 40 % of the pixel term
    (0.006: 4 %).
  * The paper initialises SRGAN from an MSE-trained SRResNet (10⁶ steps); here all three terms
    train from the start.

Input: the image downscaled by ``scale`` (paper ×4) in tf.data, vectorised per batch: bicubic
with antialiasing (the paper's "bicubic kernel"), clipped to [0, 1]. ``image_size`` must be a
multiple of ``scale`` (28 px: ×4 → 7 px, ×2 → 14 px).

Generator size: the paper's SRResNet has 16 residual blocks of 64 channels; the defaults here
(``num_blocks=4``, ``generator_width=32``) keep a step cheap on a CPU. Output through a sigmoid
(the paper's tanh range [−1, 1] mapped to our [0, 1]).

Recommended command line (Adam β₁ 0.9 in the paper with lr 10⁻⁴; the adversarial tasks default
to β₁ = 0.5, ``--task_param=adam_beta1=0.9`` restores the paper's):
``--optimizer=adam --learning_rate=2e-4 --weight_decay=0``.

Logged: ``pixel_loss``, ``content_loss``, ``adversarial_loss`` (the generator's three terms,
unweighted) and ``d_real`` / ``d_fake`` (mean probability D gives originals and outputs).
``sample_images``: ``super_resolution``, for the first 12 training images: the low-resolution
input (nearest-neighbour upsampled for display), the generator's output, the original.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from selfsup.models.decoders import last_spatial_endpoint
from selfsup.models.generators import SRResNet, upsampling_blocks
from selfsup.models.registry import ConfigError
from selfsup.tasks import adversarial
from selfsup.tasks.adversarial import AdversarialConfig, AdversarialTask
from selfsup.tasks.base import TASKS
from selfsup.tasks.gan import BackboneDiscriminatorModel
from selfsup.tasks.pictures import interleave

SRGAN_SCALE = 4  # Ledig et al. 2017, §3.1: downsampling factor r = 4
SRGAN_ADVERSARIAL_WEIGHT = 1e-3  # Ledig et al. 2017, eq. 3
# Ledig et al. 2017, §3.2: VGG feature maps rescaled by 1/12.75, ≈ ×0.006 on the loss; ×10 for our
# feature space (measured, see the module docstring).
CONTENT_WEIGHT = 0.06
PIXEL_WEIGHT = 1.0
GENERATOR_BLOCKS = 4
GENERATOR_WIDTH = 32
SAMPLE_TRIPLES = 12  # 36 images: a 6-column grid, two (input, output, original) triples a row


def downscale(images: tf.Tensor, scale: int) -> tf.Tensor:
    """``[b, s, s, c]`` → ``[b, s/scale, s/scale, c]``: antialiased bicubic, clipped to [0, 1]."""
    size = images.shape[1] // scale
    low_res = tf.image.resize(images, [size, size], method="bicubic", antialias=True)
    return tf.clip_by_value(low_res, 0.0, 1.0)


def pixel_mse(images: tf.Tensor, outputs: tf.Tensor) -> tf.Tensor:
    """MSE of ``outputs`` against ``images`` (both in [0, 1]) on the paper's [−1, 1] scale."""
    difference = 2.0 * (tf.cast(outputs, tf.float32) - tf.cast(images, tf.float32))
    return tf.reduce_mean(tf.square(difference))


def content_mse(real_features: tf.Tensor, fake_features: tf.Tensor) -> tf.Tensor:
    """Mean squared difference of two feature maps (over positions, channels and the batch);
    the real features are constants (no gradient)."""
    real = tf.stop_gradient(tf.cast(real_features, tf.float32))
    return tf.reduce_mean(tf.square(tf.cast(fake_features, tf.float32) - real))


@dataclasses.dataclass(frozen=True)
class SuperResolutionConfig(AdversarialConfig):
    """SRGAN settings (see the module docstring)."""

    scale: int = SRGAN_SCALE
    num_blocks: int = GENERATOR_BLOCKS
    generator_width: int = GENERATOR_WIDTH
    pixel_weight: float = PIXEL_WEIGHT
    content_weight: float = CONTENT_WEIGHT
    adversarial_weight: float = SRGAN_ADVERSARIAL_WEIGHT
    content_endpoint: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            upsampling_blocks(self.scale)
        except ValueError:
            raise ConfigError(f"scale must be a power of 2 (2, 4, 8, ...), got {self.scale}"
                              ) from None
        if self.image_size % self.scale:
            raise ConfigError(f"image_size {self.image_size} is not a multiple of scale "
                              f"{self.scale}")
        if self.num_blocks < 0 or self.generator_width <= 0:
            raise ConfigError(f"num_blocks must be ≥ 0 and generator_width positive, got "
                              f"{self.num_blocks} and {self.generator_width}")
        for name in ("pixel_weight", "content_weight", "adversarial_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")


class SuperResolutionTask(AdversarialTask):
    """SRGAN (Ledig et al. 2017) with the discriminator's backbone as the transferred encoder."""

    config_class = SuperResolutionConfig
    config: SuperResolutionConfig

    def __init__(self, config: SuperResolutionConfig) -> None:
        super().__init__(config)
        self._content_endpoint: str | None = config.content_endpoint

    def log_names(self) -> tuple[str, ...]:
        return (*super().log_names(), "pixel_loss", "content_loss", "adversarial_loss",
                "d_real", "d_fake")

    @property
    def low_res_size(self) -> int:
        return self.config.image_size // self.config.scale

    def build_model(self) -> BackboneDiscriminatorModel:
        config = self.config
        generator = SRResNet(config.scale, config.num_blocks, config.generator_width,
                             output_activation="sigmoid", synchronized_bn=config.synchronized_bn,
                             name="generator")
        model = BackboneDiscriminatorModel(self.build_backbone(), generator,
                                           name="super_resolution")
        # Built through its own call (variable paths "backbone/...") before the backbone's
        # endpoints are looked up.
        model(self.dummy_inputs(), training=False)
        specs = model.backbone.output_specs((None, config.image_size, config.image_size, 3))
        if config.content_endpoint is None:
            self._content_endpoint = last_spatial_endpoint(model.backbone, config.image_size)[0]
        elif config.content_endpoint not in specs:
            raise ConfigError(f"content_endpoint {config.content_endpoint!r} is not an endpoint "
                              f"of {config.backbone}; valid: {', '.join(specs)}")
        return model

    @property
    def content_endpoint(self) -> str:
        """The endpoint of D's backbone whose features the content loss compares."""
        if self._content_endpoint is None:
            raise RuntimeError("build the model first (the default endpoint depends on it)")
        return self._content_endpoint

    def generator_variables(self, model: BackboneDiscriminatorModel) -> list:
        return model.generator_variables()

    def discriminator_variables(self, model: BackboneDiscriminatorModel) -> list:
        return model.discriminator_variables()

    def dummy_inputs(self) -> tuple[tf.Tensor, tf.Tensor]:
        size, low = self.config.image_size, self.low_res_size
        return tf.zeros([1, size, size, 3]), tf.zeros([1, low, low, 3])

    def build_inputs(self, input_context: tf.distribute.InputContext | None = None
                     ) -> tf.data.Dataset:
        """``(images, low-resolution images)`` batches."""
        scale = self.config.scale
        images = self.training_images(input_context)
        return images.map(lambda batch: (batch, downscale(batch, scale)),
                          num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    def discriminator_loss(self, inputs, model: BackboneDiscriminatorModel, training: bool):
        images, low_res = inputs
        return model.discriminator_loss(images, low_res, training=training)

    def generator_loss(self, inputs, model: BackboneDiscriminatorModel, training: bool):
        config = self.config
        images, low_res = inputs
        outputs = model.generator(low_res, training=training)
        _, fake_logits = model.discriminate(outputs, training=training)
        adversarial_loss = adversarial.generator_loss(fake_logits)
        pixel_loss = pixel_mse(images, outputs)
        # D's backbone as a fixed feature extractor (inference-mode BatchNorm), see above.
        endpoint = self.content_endpoint
        content_loss = content_mse(model.backbone(images, training=False)[endpoint],
                                   model.backbone(outputs, training=False)[endpoint])
        loss = (config.pixel_weight * pixel_loss + config.content_weight * content_loss
                + config.adversarial_weight * adversarial_loss)
        return loss, {"pixel_loss": pixel_loss, "content_loss": content_loss,
                      "adversarial_loss": adversarial_loss}

    def sample_images(self, model: BackboneDiscriminatorModel) -> dict[str, tf.Tensor]:
        images = self.first_training_images(SAMPLE_TRIPLES)
        low_res = downscale(images, self.config.scale)
        size = self.config.image_size
        shown = tf.image.resize(low_res, [size, size], method="nearest")
        outputs = model.generator(low_res, training=False)
        return {"super_resolution": interleave(shown, outputs, images)}


TASKS.register("super_resolution", SuperResolutionTask)
