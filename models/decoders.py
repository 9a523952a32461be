"""Decoders: heads that turn an encoder's features back into images or dense prediction maps.

:class:`ImageDecoder` is the up-convolutional stack of the DCGAN generator (Radford, Metz &
Chintala 2016, §3: fractionally strided convolutions, BatchNorm and ReLU in every layer but the
output, no pooling or fully connected hidden layers), used as the decoder of the autoencoders
and the context encoder, as the DCGAN/BiGAN generator, and as the dense prediction head of the
colorization, split-brain and edge tasks. It accepts a feature vector (``[b, d]``: a dense
layer first projects it to the smallest map, as DCGAN projects z) or a feature map
(``[b, h, w, c]``: the last spatial endpoint of a backbone, see :func:`last_spatial_endpoint`).

Resolution plan: each stage is a 4×4 transposed convolution with stride 2 (DCGAN's kernel). From
a vector the decoder starts at ``ceil(output_size / 2ⁿ)`` with ``n = floor(log2(output_size /
4))`` stages (28 → 7·2², 32 → 4·2³, 224 → 7·2⁵); from a map of side ``s`` it doubles while
``2s ≤ output_size``. Whatever is left (7·2⁵ = 224 exactly, but 13 → 208 for AlexNet's conv5 at
224 px) is closed by a bilinear resize, so every backbone and input size works. Stage ``i`` of
``n`` has ``width · 2^(n−1−i)`` channels (halving towards the output, as DCGAN's 1024→128), and
a convolution (3×3 by default, ``output_kernel_size``) maps the last one to ``output_channels``
(linear, or ``output_activation``).
"""

from __future__ import annotations

import math

import keras

from selfsup.models.backbone import make_batch_norm

# DCGAN's transposed-convolution kernel and stride (Radford et al. 2016, reference code).
UPSAMPLING_KERNEL = 4
# The smallest map a vector is projected to has a side in [4, 8) (DCGAN starts at 4×4).
MIN_START_SIZE = 4


def upsampling_plan(output_size: int, input_size: int | None = None) -> tuple[int, int]:
    """``(start side, number of stride-2 stages)`` for a vector (``input_size`` None) or a map
    of side ``input_size`` decoded to ``output_size`` (see the module docstring)."""
    if output_size < 1:
        raise ValueError(f"output_size must be positive, got {output_size}")
    if input_size is None:
        stages = max(0, int(math.floor(math.log2(output_size / MIN_START_SIZE))))
        return math.ceil(output_size / 2 ** stages), stages
    if input_size < 1:
        raise ValueError(f"input_size must be positive, got {input_size}")
    stages = 0
    while input_size * 2 ** (stages + 1) <= output_size:
        stages += 1
    return input_size, stages


def last_spatial_endpoint(backbone: keras.Model, image_size: int) -> tuple[str, tuple]:
    """The name and ``(h, w, c)`` of the backbone's last 4-D endpoint for square inputs.

    The decoders of the dense tasks read it: ``res4`` of ``resnet_small``, ``conv5`` of AlexNet,
    ``block5`` of VGG (their fully connected endpoints after it are vectors).
    """
    specs = backbone.output_specs((None, image_size, image_size, 3))
    spatial = [(name, shape[1:]) for name, shape in specs.items() if len(shape) == 4]
    if not spatial:
        raise ValueError(f"backbone {backbone.name!r} has no spatial endpoint")
    return spatial[-1]


class ImageDecoder(keras.layers.Layer):
    """Up-convolutional decoder (DCGAN generator layout) from a feature vector or map to an
    ``output_size × output_size × output_channels`` map; see the module docstring."""

    def __init__(self, output_size: int, output_channels: int, input_size: int | None = None,
                 width: int = 32, output_activation: str | None = None,
                 synchronized_bn: bool = False, output_kernel_size: int = 3, **kwargs) -> None:
        super().__init__(**kwargs)
        if output_channels < 1 or width < 1 or output_kernel_size < 1:
            raise ValueError("output_channels, width and output_kernel_size must be positive")
        self.output_size = output_size
        self.output_channels = output_channels
        self.input_size = input_size
        self.width = width
        self.output_activation = output_activation
        self.synchronized_bn = synchronized_bn
        self.output_kernel_size = output_kernel_size
        self.start_size, stages = upsampling_plan(output_size, input_size)
        widths = [width * 2 ** (stages - 1 - i) for i in range(stages)]
        self.project = self.project_bn = None
        if input_size is None:
            # DCGAN projects z with a dense layer to the first map (which then has BN and ReLU).
            start_channels = widths[0] * 2 if widths else width
            self.start_channels = start_channels
            self.project = keras.layers.Dense(self.start_size ** 2 * start_channels,
                                              use_bias=False, name="project")
            self.project_bn = make_batch_norm(synchronized_bn, name="project_bn")
        self.upsample = [keras.layers.Conv2DTranspose(
            channels, UPSAMPLING_KERNEL, strides=2, padding="same", use_bias=False,
            name=f"up{i + 1}") for i, channels in enumerate(widths)]
        self.upsample_bn = [make_batch_norm(synchronized_bn, name=f"up{i + 1}_bn")
                            for i in range(stages)]
        self.reached_size = self.start_size * 2 ** stages
        self.out = keras.layers.Conv2D(output_channels, output_kernel_size, padding="same",
                                       name="out")
        self.activation = keras.activations.get(output_activation)

    def call(self, features, training=None):
        x = features
        if self.project is not None:
            x = self.project(x)
            x = keras.ops.relu(self.project_bn(x, training=training))
            x = keras.ops.reshape(x, (-1, self.start_size, self.start_size, self.start_channels))
        for upsample, norm in zip(self.upsample, self.upsample_bn, strict=True):
            x = keras.ops.relu(norm(upsample(x), training=training))
        if self.reached_size != self.output_size:
            x = keras.ops.image.resize(x, (self.output_size, self.output_size),
                                       interpolation="bilinear")
        return self.activation(self.out(x))

    def get_config(self) -> dict:
        return {**super().get_config(), "output_size": self.output_size,
                "output_channels": self.output_channels, "input_size": self.input_size,
                "width": self.width, "output_activation": self.output_activation,
                "synchronized_bn": self.synchronized_bn,
                "output_kernel_size": self.output_kernel_size}
