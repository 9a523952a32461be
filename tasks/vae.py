"""Variational autoencoder: an autoencoder whose code is a sample of a Gaussian posterior.

Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014. The encoder gives the mean μ
and log-variance log σ² of a diagonal Gaussian q(z|x); the decoder reconstructs the image from
z = μ + σ ⊙ ε, ε ~ N(0, I) (the reparameterisation trick, §2.4, so gradients reach μ and σ
through the sample); the loss is the negative evidence lower bound (eq. 10, one sample per
image): reconstruction − log p(x|z) summed over pixels plus β · KL(q(z|x) ‖ N(0, I)) summed
over latent dimensions (closed form, Appendix B), averaged over the batch.

Choices here:
  * Encoder: the registry backbone (``model.backbone``, what is probed and exported); one dense
    layer on its ``pool`` vector gives μ and log σ² (so μ is a linear map of ``pool``), latent
    dimension ``latent_dim`` = 32 (the paper uses 2–200 on MNIST).
  * Decoder: :class:`~selfsup.models.decoders.ImageDecoder` from z, sigmoid output (as the
    autoencoders, :mod:`selfsup.tasks.autoencoder`).
  * ε is drawn in tf.data with stateless ops seeded from (config seed, input pipeline, batch
    index) and enters the model as an input, so a step is a deterministic function of its batch
    (one device and two replicas compute the same step; a resumed run sees the same ε).
  * Reconstruction term: ``reconstruction_loss=mse`` (default) sums squared errors, which is
    − log p(x|z) up to a constant for a Gaussian decoder of fixed variance ½;
    ``reconstruction_loss=bce`` sums Bernoulli cross-entropies (the paper's decoder for
    MNIST). The three identical channels of a gray image each count, which weights the
    reconstruction 3× against the KL term compared to a one-channel model.
  * β = 1 is the ELBO; other values give Higgins et al. 2017's β-VAE.

``sample_images``: ``reconstructions`` (fixed training images beside their decoding from
z = μ) and ``samples`` (decodings of fixed draws from the prior N(0, I)).
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from selfsup.models import FEATURE_ENDPOINT
from selfsup.models.registry import ConfigError
from selfsup.tasks.autoencoder import (
    SAMPLE_PAIRS,
    SAMPLE_SEED,
    AutoencoderConfig,
    AutoencoderTask,
    pixel_losses,
)
from selfsup.tasks.base import TASKS
from selfsup.tasks.pictures import interleave

LATENT_DIM = 32
PRIOR_SAMPLES = 16  # a 4 × 4 grid of decoded prior draws


def kl_to_standard_normal(mean: tf.Tensor, log_variance: tf.Tensor) -> tf.Tensor:
    """KL(N(μ, diag σ²) ‖ N(0, I)) per row ``[b]``: ½ Σ (σ² + μ² − 1 − log σ²) (Kingma &
    Welling 2014, Appendix B)."""
    mean = tf.cast(mean, tf.float32)
    log_variance = tf.cast(log_variance, tf.float32)
    return 0.5 * tf.reduce_sum(tf.exp(log_variance) + tf.square(mean) - 1.0 - log_variance,
                               axis=-1)


def reparameterise(mean: tf.Tensor, log_variance: tf.Tensor, noise: tf.Tensor) -> tf.Tensor:
    """z = μ + σ ⊙ ε with σ = exp(½ log σ²): differentiable in μ and log σ² for a given ε."""
    return mean + tf.exp(0.5 * log_variance) * tf.cast(noise, mean.dtype)


@dataclasses.dataclass(frozen=True)
class VAEConfig(AutoencoderConfig):
    """VAE settings: latent dimension and the KL weight β (see the module docstring)."""

    latent_dim: int = LATENT_DIM
    beta: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.latent_dim <= 0:
            raise ConfigError(f"latent_dim must be positive, got {self.latent_dim}")
        if self.beta < 0:
            raise ConfigError(f"beta must be non-negative, got {self.beta}")


class VAEModel(keras.Model):
    """Encoder (``model.backbone``), a dense layer to (μ, log σ²), and a decoder from z.

    ``call((images, noise))`` returns the encoder's endpoints plus ``mean``, ``log_variance``,
    ``latent`` (z = μ + σ ε) and ``logits`` (the decoder's output for z); ``noise`` = 0 decodes
    the posterior mean.
    """

    def __init__(self, backbone: keras.Model, decoder: keras.layers.Layer, latent_dim: int,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone
        self.latent_dim = latent_dim
        self.posterior = keras.layers.Dense(2 * latent_dim, name="posterior")
        self.decoder = decoder

    def call(self, inputs, training=None):
        images, noise = inputs
        endpoints = dict(self.backbone(images, training=training))
        statistics = self.posterior(endpoints[FEATURE_ENDPOINT])
        mean, log_variance = statistics[:, :self.latent_dim], statistics[:, self.latent_dim:]
        latent = reparameterise(mean, log_variance, noise)
        endpoints.update(mean=mean, log_variance=log_variance, latent=latent,
                         logits=self.decoder(latent, training=training))
        return endpoints


class VAETask(AutoencoderTask):
    """Variational autoencoder (Kingma & Welling 2014) on the registry backbone."""

    config_class = VAEConfig
    config: VAEConfig
    model_name = "vae"

    def build_model(self) -> VAEModel:
        return VAEModel(self.build_backbone(), self.build_decoder(), self.config.latent_dim,
                        name=self.model_name)

    def dummy_inputs(self) -> tuple[tf.Tensor, tf.Tensor]:
        size = self.config.image_size
        return tf.zeros([1, size, size, 3]), tf.zeros([1, self.config.latent_dim])

    def build_inputs(self, input_context: tf.distribute.InputContext | None = None
                     ) -> tf.data.Dataset:
        """``(images, ε)`` batches, ε ``[b, latent_dim]`` standard normal."""
        latent_dim = self.config.latent_dim

        def with_noise(images, seed):
            noise = tf.random.stateless_normal([tf.shape(images)[0], latent_dim], seed)
            return images, noise

        return self.map_training_images(with_noise, input_context)

    def compute_loss(self, inputs, model: keras.Model, training: bool):
        """Negative ELBO per image, averaged over the batch; the outputs are its two terms."""
        images, noise = inputs
        outputs = model((images, noise), training=training)
        per_image = tf.reduce_sum(
            pixel_losses(images, outputs["logits"], self.config.reconstruction_loss),
            axis=[1, 2, 3])
        reconstruction = tf.reduce_mean(per_image)
        kl = tf.reduce_mean(kl_to_standard_normal(outputs["mean"], outputs["log_variance"]))
        loss = reconstruction + self.config.beta * kl
        return loss, None, {"reconstruction_loss": reconstruction, "kl": kl}

    def build_metrics(self) -> list[keras.metrics.Metric]:
        return [keras.metrics.Mean("loss"), keras.metrics.Mean("reconstruction_loss"),
                keras.metrics.Mean("kl")]

    def sample_images(self, model: keras.Model) -> dict[str, tf.Tensor]:
        images = self.first_training_images(SAMPLE_PAIRS)
        no_noise = tf.zeros([SAMPLE_PAIRS, self.config.latent_dim])
        reconstructions = tf.sigmoid(model((images, no_noise), training=False)["logits"])
        prior = tf.random.stateless_normal([PRIOR_SAMPLES, self.config.latent_dim],
                                           tf.constant([self.config.seed, SAMPLE_SEED], tf.int64))
        samples = tf.sigmoid(model.decoder(prior, training=False))
        return {"reconstructions": interleave(images, reconstructions), "samples": samples}


TASKS.register("vae", VAETask)
