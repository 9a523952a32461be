"""Discriminators of the adversarial tasks (heads in the sense of the backbone contract: they
are not transferred; where a task transfers its discriminator, that one is a registry backbone).

* :class:`ConvDiscriminator`: the DCGAN discriminator (Radford, Metz & Chintala 2016, §3):
  strided 4×4 convolutions instead of pooling, LeakyReLU with slope 0.2, BatchNorm on every
  layer but the first, and a single linear logit on the flattened last map. It halves the
  resolution until the map is at most 4×4 (28 → 14 → 7 → 4) with ``width · 2ⁱ`` channels.
  The context encoder's adversarial loss uses it (Pathak et al. 2016 take DCGAN's).
* :class:`JointDiscriminator`: BiGAN's D(x, z) (Donahue, Krähenbühl & Darrell 2017, §3): an
  image branch (the convolutional trunk above), a latent branch (a dense layer with LeakyReLU),
  and a joint dense layer on their concatenation before the logit.

Images enter as float RGB in [0, 1] and are mapped to [−1, 1] (DCGAN's range).
"""

from __future__ import annotations

import keras

from selfsup.models.backbone import make_batch_norm

LEAKY_RELU_SLOPE = 0.2  # Radford et al. 2016, §3 ("leak ... set to 0.2")
DISCRIMINATOR_KERNEL = 4
MAX_FINAL_SIZE = 4


class DiscriminatorTrunk(keras.layers.Layer):
    """The convolutional part of the DCGAN discriminator (Radford et al. 2016): images
    ``[b, s, s, c]`` in [0, 1] → the flattened last map ``[b, features]``."""

    def __init__(self, image_size: int, width: int = 32, synchronized_bn: bool = False,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if image_size < 1 or width < 1:
            raise ValueError("image_size and width must be positive")
        self.image_size = image_size
        self.width = width
        self.synchronized_bn = synchronized_bn
        self.rescale = keras.layers.Rescaling(2.0, offset=-1.0, name="rescale")
        self.convs, self.norms = [], []
        size, index = image_size, 0
        while size > MAX_FINAL_SIZE or index == 0:
            self.convs.append(keras.layers.Conv2D(
                width * 2 ** index, DISCRIMINATOR_KERNEL, strides=2, padding="same",
                use_bias=index == 0, name=f"conv{index + 1}"))
            # DCGAN: no BatchNorm on the discriminator's input layer.
            self.norms.append(None if index == 0 else
                              make_batch_norm(synchronized_bn, name=f"bn{index + 1}"))
            size, index = -(-size // 2), index + 1
        self.flatten = keras.layers.Flatten(name="flatten")

    def call(self, images, training=None):
        x = self.rescale(images)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = conv(x)
            if norm is not None:
                x = norm(x, training=training)
            x = keras.ops.leaky_relu(x, LEAKY_RELU_SLOPE)
        return self.flatten(x)

    def get_config(self) -> dict:
        return {**super().get_config(), "image_size": self.image_size, "width": self.width,
                "synchronized_bn": self.synchronized_bn}


class ConvDiscriminator(keras.layers.Layer):
    """DCGAN discriminator (Radford et al. 2016): images ``[b, s, s, c]`` → logits ``[b, 1]``."""

    def __init__(self, image_size: int, width: int = 32, synchronized_bn: bool = False,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.trunk = DiscriminatorTrunk(image_size, width, synchronized_bn, name="trunk")
        self.logit = keras.layers.Dense(1, name="logit")

    def call(self, images, training=None):
        return self.logit(self.trunk(images, training=training))

    def get_config(self) -> dict:
        trunk = self.trunk
        return {**super().get_config(), "image_size": trunk.image_size, "width": trunk.width,
                "synchronized_bn": trunk.synchronized_bn}


class JointDiscriminator(keras.layers.Layer):
    """BiGAN's D(x, z) (Donahue et al. 2017): ``(images, latents)`` → logits ``[b, 1]``."""

    def __init__(self, image_size: int, width: int = 32, joint_units: int = 512,
                 synchronized_bn: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.image_size = image_size
        self.width = width
        self.joint_units = joint_units
        self.synchronized_bn = synchronized_bn
        self.image_branch = DiscriminatorTrunk(image_size, width, synchronized_bn,
                                               name="image_branch")
        self.latent_branch = keras.layers.Dense(joint_units, name="latent_branch")
        self.joint = keras.layers.Dense(joint_units, name="joint")
        self.logit = keras.layers.Dense(1, name="logit")

    def call(self, inputs, training=None):
        images, latents = inputs
        image_features = self.image_branch(images, training=training)
        latent_features = keras.ops.leaky_relu(self.latent_branch(latents), LEAKY_RELU_SLOPE)
        joint = keras.ops.concatenate([image_features, latent_features], axis=-1)
        return self.logit(keras.ops.leaky_relu(self.joint(joint), LEAKY_RELU_SLOPE))

    def get_config(self) -> dict:
        return {**super().get_config(), "image_size": self.image_size, "width": self.width,
                "joint_units": self.joint_units, "synchronized_bn": self.synchronized_bn}
