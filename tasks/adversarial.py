"""Adversarial training inside our trainer: two players, two optimizers, alternating updates.

Goodfellow et al., "Generative Adversarial Nets", NIPS 2014: a discriminator D learns to tell
real data from the generator's, a generator G learns to fool it. Each training step here is
Algorithm 1 of the paper with k = 1 (as DCGAN, Radford et al. 2016): one update of D on the
current batch, then one update of G, each by its own optimizer (the trainer builds one per
:class:`~selfsup.tasks.base.OptimizerGroup` and checkpoints both), both under the strategy
(each update all-reduces its gradients across replicas, and each player's loss is scaled for
the global batch like every other task's).

Losses: D minimises the sigmoid cross-entropy of real → 1 and generated → 0; G minimises the
non-saturating −log D(G(z)) (Goodfellow et al. §3, "in practice"), both written with softplus
so large logits do not overflow. Adam with β₁ = 0.5 (Radford et al. 2016, §4: 0.9 oscillated)
is every adversarial task's default (``adam_beta1``); choose ``--optimizer=adam`` and a small
learning rate (DCGAN: 2e-4) on the command line.

A subclass says which variables belong to which player and what each player's loss is; when
:meth:`AdversarialTask.uses_discriminator` is False (e.g. the context encoder without its
adversarial term) the task is a plain single-optimizer task on the generator's loss.
"""

from __future__ import annotations

import abc
import dataclasses

import keras
import tensorflow as tf

from selfsup.models.registry import ConfigError
from selfsup.tasks.base import (
    OptimizerGroup,
    Task,
    TaskConfig,
    apply_loss_gradients,
    scale_replica_loss,
)

GENERATOR = "generator"
DISCRIMINATOR = "discriminator"
DCGAN_ADAM_BETA1 = 0.5  # Radford et al. 2016, §4


def discriminator_loss(real_logits: tf.Tensor, fake_logits: tf.Tensor) -> tf.Tensor:
    """Mean over the batch of −log σ(real) − log(1 − σ(fake)) (Goodfellow et al. 2014, eq. 1)."""
    real_logits = tf.cast(real_logits, tf.float32)
    fake_logits = tf.cast(fake_logits, tf.float32)
    return tf.reduce_mean(tf.math.softplus(-real_logits)) + tf.reduce_mean(
        tf.math.softplus(fake_logits))


def generator_loss(fake_logits: tf.Tensor) -> tf.Tensor:
    """Mean over the batch of −log σ(fake): the non-saturating generator loss (§3)."""
    return tf.reduce_mean(tf.math.softplus(-tf.cast(fake_logits, tf.float32)))


@dataclasses.dataclass(frozen=True)
class AdversarialConfig(TaskConfig):
    """Settings every adversarial task shares (see the module docstring)."""

    adam_beta1: float = DCGAN_ADAM_BETA1
    discriminator_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.adam_beta1 < 1:
            raise ConfigError(f"adam_beta1 must be in [0, 1), got {self.adam_beta1}")
        if self.discriminator_lr_scale <= 0:
            raise ConfigError(f"discriminator_lr_scale must be positive, got "
                              f"{self.discriminator_lr_scale}")


class AdversarialTask(Task):
    """A task trained as a two-player game (Goodfellow et al. 2014); see the module docstring.

    Subclasses implement the four abstract methods. Logged metrics: ``loss`` (both players'
    losses summed, the value the trainer's NaN guard watches), ``g_loss``, ``d_loss`` and any
    name a subclass adds to :meth:`log_names` and returns in its loss logs.
    """

    config_class = AdversarialConfig
    config: AdversarialConfig
    # Two optimizers and a step of its own: not a multitask sub-task (a subclass that can
    # run without its discriminator may set True; see can_share_backbone).
    shares_backbone = False

    @abc.abstractmethod
    def generator_variables(self, model: keras.Model) -> list:
        """Variables the generator's optimizer updates."""

    @abc.abstractmethod
    def discriminator_variables(self, model: keras.Model) -> list:
        """Variables the discriminator's optimizer updates."""

    @abc.abstractmethod
    def generator_loss(self, inputs, model: keras.Model, training: bool
                       ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """``(mean generator loss of this replica's batch, extra logs)``."""

    @abc.abstractmethod
    def discriminator_loss(self, inputs, model: keras.Model, training: bool
                           ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """``(mean discriminator loss of this replica's batch, extra logs)``."""

    def uses_discriminator(self) -> bool:
        """False: no adversarial term; the task trains the generator's loss alone."""
        return True

    def can_share_backbone(self) -> bool:
        """Only without a discriminator: the two-player step needs optimizers of its own."""
        return self.shares_backbone and not self.uses_discriminator()

    def log_names(self) -> tuple[str, ...]:
        # Without a discriminator the generator's loss is the loss.
        return ("loss", "g_loss", "d_loss") if self.uses_discriminator() else ("loss",)

    def trainable_variables(self, model: keras.Model) -> list:
        return self.generator_variables(model)

    def optimizer_groups(self, model: keras.Model) -> dict[str, OptimizerGroup]:
        beta_1 = self.config.adam_beta1
        groups = {GENERATOR: OptimizerGroup(self.generator_variables(model), beta_1=beta_1)}
        if self.uses_discriminator():
            groups[DISCRIMINATOR] = OptimizerGroup(
                self.discriminator_variables(model),
                learning_rate_scale=self.config.discriminator_lr_scale, beta_1=beta_1)
        return groups

    def build_metrics(self) -> list[keras.metrics.Metric]:
        return [keras.metrics.Mean(name) for name in self.log_names()]

    def update_metrics(self, metrics: list[keras.metrics.Metric], loss: tf.Tensor, labels,
                       outputs: dict[str, tf.Tensor]) -> None:
        logs = {**outputs, "loss": loss}
        for metric in metrics:
            metric.update_state(logs[metric.name])

    def compute_loss(self, inputs, model: keras.Model, training: bool):
        """The generator's loss alone (the step of a task without a discriminator)."""
        loss, logs = self.generator_loss(inputs, model, training)
        return loss, None, logs

    def train_step(self, inputs, model: keras.Model, optimizer, metrics):
        """One discriminator update, then one generator update (``optimizer``: the dict of
        the trainer's optimizers by group; a single optimizer without a discriminator)."""
        if not self.uses_discriminator():
            return super().train_step(inputs, model, optimizer, metrics)
        d_optimizer, g_optimizer = optimizer[DISCRIMINATOR], optimizer[GENERATOR]
        with tf.GradientTape() as tape:
            d_loss, d_logs = self.discriminator_loss(inputs, model, training=True)
            replica_loss = scale_replica_loss(d_loss, d_optimizer)
        apply_loss_gradients(tape, replica_loss, self.discriminator_variables(model),
                             d_optimizer)
        with tf.GradientTape() as tape:
            g_loss, g_logs = self.generator_loss(inputs, model, training=True)
            replica_loss = scale_replica_loss(g_loss, g_optimizer)
        apply_loss_gradients(tape, replica_loss, self.generator_variables(model), g_optimizer)
        loss = d_loss + g_loss
        self.update_metrics(metrics, loss, None,
                            {"d_loss": d_loss, "g_loss": g_loss, **d_logs, **g_logs})
        return {"loss": loss}

    def validation_step(self, inputs, model: keras.Model, metrics):
        g_loss, g_logs = self.generator_loss(inputs, model, training=False)
        logs = {"g_loss": g_loss, **g_logs}
        loss = g_loss
        if self.uses_discriminator():
            d_loss, d_logs = self.discriminator_loss(inputs, model, training=False)
            logs.update(d_loss=d_loss, **d_logs)
            loss = g_loss + d_loss
        self.update_metrics(metrics, loss, None, logs)
        return {"loss": loss}
