"""Generators of the adversarial tasks that :class:`~selfsup.models.decoders.ImageDecoder` (the
DCGAN generator from a vector) does not cover.

* :class:`SRResNet`: the super-resolution generator of Ledig et al., "Photo-Realistic Single
  Image Super-Resolution Using a Generative Adversarial Network", CVPR 2017 (§2.2, Fig. 4): a
  9×9 convolution with PReLU, B residual blocks (3×3 conv – BN – PReLU – 3×3 conv – BN, plus
  the block's input), a 3×3 conv – BN closed by a long skip from the first convolution, one
  ×2 sub-pixel upsampling block (3×3 conv to 4× the channels, pixel shuffle, PReLU) per factor
  2 of the scale, and a 9×9 convolution to the output channels. The paper: B = 16 blocks of 64
  channels, scale 4 (two upsampling blocks of 256 channels).
* :class:`PixelShuffle`: the sub-pixel convolution's rearrangement (Shi et al., "Real-Time
  Single Image and Video Super-Resolution Using an Efficient Sub-Pixel Convolutional Neural
  Network", CVPR 2016), ``[b, h, w, r²c] → [b, rh, rw, c]`` with TensorFlow's channel order
  (``tf.nn.depth_to_space``): output pixel ``(r·y + i, r·x + j)``, channel ``k`` is input
  pixel ``(y, x)``, channel ``(r·i + j)·c + k``. (PyTorch's ``PixelShuffle`` reads channel
  ``k·r² + r·i + j``; the convolution before it learns either order.)

PReLU slopes are per channel and start at 0.25 (He et al., "Delving Deep into Rectifiers",
2015, the PReLU the SRGAN paper cites).
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from selfsup.models.backbone import make_batch_norm

# Ledig et al. 2017, Fig. 4 / §3.2: 16 residual blocks of 64 channels, ×4 upscaling.
SRRESNET_PAPER_BLOCKS = 16
SRRESNET_PAPER_WIDTH = 64
SRRESNET_PAPER_SCALE = 4
OUTER_KERNEL = 9  # the first and last convolutions (k9n64s1, k9n3s1)
INNER_KERNEL = 3
UPSAMPLING_FACTOR = 2  # each sub-pixel block doubles the resolution
PRELU_INITIAL_SLOPE = 0.25  # He et al. 2015, §2.1


def prelu(name: str) -> keras.layers.PReLU:
    """Channel-wise PReLU (one slope per channel, shared over positions) starting at 0.25."""
    return keras.layers.PReLU(alpha_initializer=keras.initializers.Constant(PRELU_INITIAL_SLOPE),
                              shared_axes=[1, 2], name=name)


def upsampling_blocks(scale: int) -> int:
    """How many ×2 sub-pixel blocks make ``scale`` (a power of two ≥ 2)."""
    blocks = round(math.log2(scale)) if scale >= 1 else -1
    if scale < UPSAMPLING_FACTOR or UPSAMPLING_FACTOR ** blocks != scale:
        raise ValueError(f"scale must be a power of 2 (2, 4, 8, ...), got {scale}")
    return blocks


class PixelShuffle(keras.layers.Layer):
    """Sub-pixel rearrangement (Shi et al. 2016): ``[b, h, w, r²c] → [b, rh, rw, c]`` in
    ``tf.nn.depth_to_space``'s channel order (see the module docstring)."""

    def __init__(self, block_size: int = UPSAMPLING_FACTOR, **kwargs) -> None:
        super().__init__(**kwargs)
        if block_size < 2:
            raise ValueError(f"block_size must be at least 2, got {block_size}")
        self.block_size = block_size

    def call(self, x):
        return tf.nn.depth_to_space(x, self.block_size)

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        r = self.block_size
        return (batch, None if height is None else height * r,
                None if width is None else width * r, channels // (r * r))

    def get_config(self) -> dict:
        return {**super().get_config(), "block_size": self.block_size}


class SRResidualBlock(keras.layers.Layer):
    """SRResNet's residual block (Ledig et al. 2017, Fig. 4): conv – BN – PReLU – conv – BN,
    plus the input (no activation after the sum)."""

    def __init__(self, width: int, synchronized_bn: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.conv1 = keras.layers.Conv2D(width, INNER_KERNEL, padding="same", name="conv1")
        self.bn1 = make_batch_norm(synchronized_bn, name="bn1")
        self.act = prelu("prelu")
        self.conv2 = keras.layers.Conv2D(width, INNER_KERNEL, padding="same", name="conv2")
        self.bn2 = make_batch_norm(synchronized_bn, name="bn2")

    def call(self, x, training=None):
        y = self.act(self.bn1(self.conv1(x), training=training))
        return x + self.bn2(self.conv2(y), training=training)


class SRResNet(keras.layers.Layer):
    """The SRResNet generator (Ledig et al. 2017): low-resolution images ``[b, h, w, c]`` →
    ``[b, scale·h, scale·w, output_channels]``; see the module docstring.

    ``output_activation`` (e.g. ``"sigmoid"``) is applied after the last convolution (None:
    linear).
    """

    def __init__(self, scale: int = SRRESNET_PAPER_SCALE, num_blocks: int = SRRESNET_PAPER_BLOCKS,
                 width: int = SRRESNET_PAPER_WIDTH, output_channels: int = 3,
                 output_activation: str | None = None, synchronized_bn: bool = False,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if num_blocks < 0 or width < 1 or output_channels < 1:
            raise ValueError("num_blocks must be ≥ 0, width and output_channels positive")
        self.scale = scale
        self.num_blocks = num_blocks
        self.width = width
        self.output_channels = output_channels
        self.output_activation = output_activation
        self.synchronized_bn = synchronized_bn
        self.head = keras.layers.Conv2D(width, OUTER_KERNEL, padding="same", name="head")
        self.head_act = prelu("head_prelu")
        self.blocks = [SRResidualBlock(width, synchronized_bn, name=f"block{i + 1}")
                       for i in range(num_blocks)]
        self.trunk_conv = keras.layers.Conv2D(width, INNER_KERNEL, padding="same",
                                              name="trunk_conv")
        self.trunk_bn = make_batch_norm(synchronized_bn, name="trunk_bn")
        self.upsample_convs, self.shuffles, self.upsample_acts = [], [], []
        for i in range(upsampling_blocks(scale)):
            self.upsample_convs.append(keras.layers.Conv2D(
                width * UPSAMPLING_FACTOR ** 2, INNER_KERNEL, padding="same", name=f"up{i + 1}"))
            self.shuffles.append(PixelShuffle(UPSAMPLING_FACTOR, name=f"up{i + 1}_shuffle"))
            self.upsample_acts.append(prelu(f"up{i + 1}_prelu"))
        self.tail = keras.layers.Conv2D(output_channels, OUTER_KERNEL, padding="same",
                                        name="tail")
        self.activation = keras.activations.get(output_activation)

    def call(self, images, training=None):
        features = self.head_act(self.head(images))
        x = features
        for block in self.blocks:
            x = block(x, training=training)
        x = features + self.trunk_bn(self.trunk_conv(x), training=training)
        for conv, shuffle, act in zip(self.upsample_convs, self.shuffles, self.upsample_acts,
                                      strict=True):
            x = act(shuffle(conv(x)))
        return self.activation(self.tail(x))

    def get_config(self) -> dict:
        return {**super().get_config(), "scale": self.scale, "num_blocks": self.num_blocks,
                "width": self.width, "output_channels": self.output_channels,
                "output_activation": self.output_activation,
                "synchronized_bn": self.synchronized_bn}
