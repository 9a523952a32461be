"""GANs as pretext tasks: DCGAN (the discriminator is transferred) and BiGAN (the encoder is).

``dcgan``: Radford, Metz & Chintala, "Unsupervised Representation Learning with Deep
Convolutional Generative Adversarial Networks", ICLR 2016. A generator G maps noise z to images,
a discriminator D tells them from real ones; Radford et al. then use D's convolutional features
for classification (§5.1), so D is the feature extractor here: D = the registry backbone
(``model.backbone``, probed and exported) + a linear real/fake logit on its ``pool`` vector.
G = :class:`~selfsup.models.decoders.ImageDecoder` from z (DCGAN's projection and fractionally
strided convolutions), sigmoid output (DCGAN's tanh output range [−1, 1], mapped to our images'
[0, 1]). z is 100-dimensional and uniform on [−1, 1] (Radford et al., Fig. 1;
``latent_distribution=normal`` draws N(0, I) instead).

``bigan``: Donahue, Krähenbühl & Darrell, "Adversarial Feature Learning", ICLR 2017. Besides
G: z → x an encoder E: x → z is learnt, and the discriminator D(x, z) sees image–latent pairs:
(x, E(x)) for real images and (G(z), z) for generated ones; at the optimum E inverts G (§3).
E is transferred: E = the registry backbone (``model.backbone``) + a linear map of ``pool`` to
the latent; G = ImageDecoder from z; D = :class:`~selfsup.models.discriminators
.JointDiscriminator`. E and G form one player (one optimizer, the run's step counter), D the
other; E and G minimise D's loss with the labels swapped (the non-saturating "inverted"
objective, §3.4). z is 50-dimensional uniform on [−1, 1] (the authors' MNIST setting,
``train_mnist.sh`` of the official code; ImageNet: 200 dimensions).

Both: the adversarial step of :class:`~selfsup.tasks.adversarial.AdversarialTask` (one D update,
then one G update, non-saturating losses, Adam β₁ = 0.5 by default). Recommended command line,
DCGAN's optimiser (§4: Adam, learning rate 0.0002, β₁ = 0.5) without our default weight decay:
``--optimizer=adam --learning_rate=2e-4 --weight_decay=0``. D sees separate all-real and
all-generated batches (so BatchNorm statistics are per kind of batch), as DCGAN's reference
implementation feeds them.

Choices here:
  * z is drawn in tf.data with stateless ops seeded from (config seed, input pipeline, batch
    index) and enters the model as an input, so a step is a function of its batch: one device
    and two replicas compute the same step, a resumed run replays the same z.
  * Keras' default initialisers are kept (DCGAN draws every weight from N(0, 0.02²)).
  * The DCGAN discriminator here is whatever backbone is chosen (the paper's is all-convolutional
    with LeakyReLU and no BatchNorm on its first layer).
  * Logged besides the losses: ``d_real`` and ``d_fake``, the mean probability D gives real and
    generated images (pairs, for BiGAN) before its update.

``sample_images``: ``samples``, G(z) for a fixed 8 × 8 grid of z (seeded from the config seed);
BiGAN also ``reconstructions``, the first training images beside G(E(x)).
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from selfsup.models import FEATURE_ENDPOINT
from selfsup.models.decoders import ImageDecoder
from selfsup.models.discriminators import JointDiscriminator
from selfsup.models.registry import ConfigError
from selfsup.tasks import adversarial
from selfsup.tasks.adversarial import AdversarialConfig, AdversarialTask
from selfsup.tasks.base import TASKS
from selfsup.tasks.pictures import interleave

LATENT_DISTRIBUTIONS = ("uniform", "normal")
DCGAN_LATENT_DIM = 100  # Radford et al. 2016, Fig. 1: "100 dimensional uniform distribution Z"
BIGAN_LATENT_DIM = 50  # Donahue et al. 2017, official code: "u-50" on MNIST ("u-200" ImageNet)
GENERATOR_WIDTH = 32
DISCRIMINATOR_WIDTH = 32
JOINT_UNITS = 512
SAMPLE_GRID = 64  # fixed z shown as an 8 × 8 grid
SAMPLE_PAIRS = 8  # BiGAN reconstructions: 8 (x, G(E(x))) pairs, two per grid row
# Stateless seed component of the fixed sample z (the input pipelines use ids ≥ 0).
SAMPLE_SEED = -1


def sample_latents(shape, seed: tf.Tensor, distribution: str = "uniform") -> tf.Tensor:
    """z of ``shape`` from the stateless ``seed`` ``[2]``: uniform on [−1, 1) or N(0, 1)."""
    if distribution == "uniform":
        return tf.random.stateless_uniform(shape, seed, minval=-1.0, maxval=1.0)
    if distribution == "normal":
        return tf.random.stateless_normal(shape, seed)
    raise ValueError(f"unknown latent distribution {distribution!r}; valid: "
                     f"{', '.join(LATENT_DISTRIBUTIONS)}")


def mean_probability(logits: tf.Tensor) -> tf.Tensor:
    """Mean of σ(logits): the average probability D gives a batch of being real."""
    return tf.reduce_mean(tf.sigmoid(tf.cast(logits, tf.float32)))


@dataclasses.dataclass(frozen=True)
class GANConfig(AdversarialConfig):
    """Settings of the noise-driven GANs (see the module docstring)."""

    latent_dim: int = DCGAN_LATENT_DIM
    latent_distribution: str = "uniform"
    generator_width: int = GENERATOR_WIDTH

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.latent_dim <= 0:
            raise ConfigError(f"latent_dim must be positive, got {self.latent_dim}")
        if self.latent_distribution not in LATENT_DISTRIBUTIONS:
            raise ConfigError(f"latent_distribution must be one of "
                              f"{', '.join(LATENT_DISTRIBUTIONS)}, got "
                              f"{self.latent_distribution!r}")
        if self.generator_width <= 0:
            raise ConfigError(f"generator_width must be positive, got {self.generator_width}")


@dataclasses.dataclass(frozen=True)
class BiGANConfig(GANConfig):
    """BiGAN settings: the latent (Donahue et al. 2017) and the joint discriminator's size."""

    latent_dim: int = BIGAN_LATENT_DIM
    discriminator_width: int = DISCRIMINATOR_WIDTH
    joint_units: int = JOINT_UNITS

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.discriminator_width <= 0 or self.joint_units <= 0:
            raise ConfigError(f"discriminator_width and joint_units must be positive, got "
                              f"{self.discriminator_width} and {self.joint_units}")


class BackboneDiscriminatorModel(keras.Model):
    """A generator and a discriminator D = backbone (``model.backbone``) + linear real/fake
    logit on ``pool`` (DCGAN, Radford et al. 2016; the SRGAN task uses it too).

    ``call((images, generator_inputs))`` returns the backbone's endpoints of ``images`` plus
    ``real_logits``, ``fake_images`` (the generator's output) and ``fake_logits``.
    """

    def __init__(self, backbone: keras.Model, generator: keras.layers.Layer, **kwargs) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone
        self.logit = keras.layers.Dense(1, name="logit")
        self.generator = generator

    def discriminate(self, images, training=None) -> tuple[dict, tf.Tensor]:
        """``(backbone endpoints, real/fake logits [b, 1])`` of ``images``."""
        endpoints = dict(self.backbone(images, training=training))
        return endpoints, self.logit(endpoints[FEATURE_ENDPOINT])

    def discriminator_loss(self, images, generator_inputs, training=None
                           ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """D's loss on real ``images`` against G(``generator_inputs``) (no gradient into G),
        with the mean probabilities D gives each (``d_real``, ``d_fake``)."""
        fake_images = tf.stop_gradient(self.generator(generator_inputs, training=training))
        _, real_logits = self.discriminate(images, training=training)
        _, fake_logits = self.discriminate(fake_images, training=training)
        return adversarial.discriminator_loss(real_logits, fake_logits), {
            "d_real": mean_probability(real_logits), "d_fake": mean_probability(fake_logits)}

    def call(self, inputs, training=None):
        images, generator_inputs = inputs
        endpoints, real_logits = self.discriminate(images, training=training)
        fake_images = self.generator(generator_inputs, training=training)
        _, fake_logits = self.discriminate(fake_images, training=training)
        endpoints.update(real_logits=real_logits, fake_images=fake_images,
                         fake_logits=fake_logits)
        return endpoints

    def discriminator_variables(self) -> list:
        return [*self.backbone.trainable_variables, *self.logit.trainable_variables]

    def generator_variables(self) -> list:
        return list(self.generator.trainable_variables)


class BiGANModel(keras.Model):
    """BiGAN (Donahue et al. 2017): encoder E = backbone (``model.backbone``) + linear map of
    ``pool`` to z, generator G (z → image), joint discriminator D(x, z).

    ``call((images, latents))`` returns the backbone's endpoints plus ``encoded`` (E(x)),
    ``fake_images`` (G(z)), ``real_logits`` (D(x, E(x))) and ``fake_logits`` (D(G(z), z)).
    """

    def __init__(self, backbone: keras.Model, generator: keras.layers.Layer,
                 discriminator: JointDiscriminator, latent_dim: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone
        self.to_latent = keras.layers.Dense(latent_dim, name="to_latent")
        self.generator = generator
        self.discriminator = discriminator

    def encode(self, images, training=None) -> tuple[dict, tf.Tensor]:
        """``(backbone endpoints, E(x) [b, latent_dim])``."""
        endpoints = dict(self.backbone(images, training=training))
        return endpoints, self.to_latent(endpoints[FEATURE_ENDPOINT])

    def call(self, inputs, training=None):
        images, latents = inputs
        endpoints, encoded = self.encode(images, training=training)
        fake_images = self.generator(latents, training=training)
        endpoints.update(
            encoded=encoded, fake_images=fake_images,
            real_logits=self.discriminator((images, encoded), training=training),
            fake_logits=self.discriminator((fake_images, latents), training=training))
        return endpoints

    def discriminator_variables(self) -> list:
        return list(self.discriminator.trainable_variables)

    def generator_variables(self) -> list:
        """The encoder's and the generator's: one player (Donahue et al. 2017)."""
        return [*self.backbone.trainable_variables, *self.to_latent.trainable_variables,
                *self.generator.trainable_variables]


class GANTask(AdversarialTask):
    """What DCGAN and BiGAN share: (images, z) batches, the fixed z grid and the logs."""

    config_class = GANConfig
    config: GANConfig

    def log_names(self) -> tuple[str, ...]:
        return (*super().log_names(), "d_real", "d_fake")

    def generator_variables(self, model: keras.Model) -> list:
        return model.generator_variables()

    def discriminator_variables(self, model: keras.Model) -> list:
        return model.discriminator_variables()

    def build_generator(self) -> ImageDecoder:
        """G: z → ``image_size × image_size × 3`` in [0, 1] (DCGAN layout, sigmoid output)."""
        config = self.config
        return ImageDecoder(config.image_size, 3, width=config.generator_width,
                            output_activation="sigmoid", synchronized_bn=config.synchronized_bn,
                            name="generator")

    def dummy_inputs(self) -> tuple[tf.Tensor, tf.Tensor]:
        size = self.config.image_size
        return tf.zeros([1, size, size, 3]), tf.zeros([1, self.config.latent_dim])

    def build_inputs(self, input_context: tf.distribute.InputContext | None = None
                     ) -> tf.data.Dataset:
        """``(images, z)`` batches, z ``[b, latent_dim]`` from the latent distribution."""
        config = self.config

        def with_latents(images, seed):
            shape = [tf.shape(images)[0], config.latent_dim]
            return images, sample_latents(shape, seed, config.latent_distribution)

        return self.map_training_images(with_latents, input_context)

    def fixed_latents(self) -> tf.Tensor:
        """The z of the sample grid: the same for every checkpoint of a run."""
        config = self.config
        seed = tf.constant([config.seed, SAMPLE_SEED], tf.int64)
        return sample_latents([SAMPLE_GRID, config.latent_dim], seed, config.latent_distribution)

    def sample_images(self, model: keras.Model) -> dict[str, tf.Tensor]:
        return {"samples": model.generator(self.fixed_latents(), training=False)}


class DCGANTask(GANTask):
    """DCGAN (Radford et al. 2016); the discriminator's backbone is the transferred encoder."""

    def build_model(self) -> BackboneDiscriminatorModel:
        return BackboneDiscriminatorModel(self.build_backbone(), self.build_generator(),
                                          name="dcgan")

    def discriminator_loss(self, inputs, model: BackboneDiscriminatorModel, training: bool):
        images, latents = inputs
        return model.discriminator_loss(images, latents, training=training)

    def generator_loss(self, inputs, model: BackboneDiscriminatorModel, training: bool):
        _, latents = inputs
        _, fake_logits = model.discriminate(model.generator(latents, training=training),
                                            training=training)
        return adversarial.generator_loss(fake_logits), {}


def bigan_logits(model: BiGANModel, images: tf.Tensor, latents: tf.Tensor, training: bool,
                 stop_gradient: bool) -> tuple[tf.Tensor, tf.Tensor]:
    """``(D(x, E(x)), D(G(z), z))``; ``stop_gradient`` keeps E and G out of D's update."""
    _, encoded = model.encode(images, training=training)
    fake_images = model.generator(latents, training=training)
    if stop_gradient:
        encoded, fake_images = tf.stop_gradient(encoded), tf.stop_gradient(fake_images)
    real_logits = model.discriminator((images, encoded), training=training)
    fake_logits = model.discriminator((fake_images, latents), training=training)
    return real_logits, fake_logits


def bigan_encoder_generator_loss(real_logits: tf.Tensor, fake_logits: tf.Tensor) -> tf.Tensor:
    """E and G's loss: D's loss with the labels swapped, −log σ(D(G(z), z)) − log(1 −
    σ(D(x, E(x)))) averaged over the batch (Donahue et al. 2017, §3.4)."""
    return adversarial.discriminator_loss(fake_logits, real_logits)


class BiGANTask(GANTask):
    """BiGAN (Donahue et al. 2017); the encoder's backbone is the transferred encoder."""

    config_class = BiGANConfig
    config: BiGANConfig

    def build_model(self) -> BiGANModel:
        config = self.config
        discriminator = JointDiscriminator(config.image_size, width=config.discriminator_width,
                                           joint_units=config.joint_units,
                                           synchronized_bn=config.synchronized_bn,
                                           name="discriminator")
        return BiGANModel(self.build_backbone(), self.build_generator(), discriminator,
                          config.latent_dim, name="bigan")

    def discriminator_loss(self, inputs, model: BiGANModel, training: bool):
        images, latents = inputs
        real_logits, fake_logits = bigan_logits(model, images, latents, training,
                                                stop_gradient=True)
        loss = adversarial.discriminator_loss(real_logits, fake_logits)
        return loss, {"d_real": mean_probability(real_logits),
                      "d_fake": mean_probability(fake_logits)}

    def generator_loss(self, inputs, model: BiGANModel, training: bool):
        images, latents = inputs
        real_logits, fake_logits = bigan_logits(model, images, latents, training,
                                                stop_gradient=False)
        return bigan_encoder_generator_loss(real_logits, fake_logits), {}

    def sample_images(self, model: BiGANModel) -> dict[str, tf.Tensor]:
        images = self.first_training_images(SAMPLE_PAIRS)
        _, encoded = model.encode(images, training=False)
        reconstructions = model.generator(encoded, training=False)
        return {**super().sample_images(model),
                "reconstructions": interleave(images, reconstructions)}


TASKS.register("dcgan", DCGANTask)
TASKS.register("bigan", BiGANTask)
