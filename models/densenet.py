"""DenseNet backbones (Huang et al. 2017, "Densely Connected Convolutional Networks").

Variant ``densenet121``: DenseNet-BC (§3, "Compression" and "Bottleneck layers") with dense
blocks of 6, 12, 24 and 16 layers and growth rate k = 32 (Table 1). Each layer is
BN-ReLU-1×1 conv (4k channels)-BN-ReLU-3×3 conv (k channels), and its output is concatenated
to its input. Transitions between blocks are BN-ReLU-1×1 conv (compression θ = 0.5)-2×2/2
average pool; the last block is followed by BN-ReLU and global average pooling.

Endpoints: ``dense1`` … ``dense4``, each dense block's concatenated output (before the next
transition); ``dense4`` includes the final BN-ReLU, so ``pool`` is its global average.

Stems: the ImageNet stem is a 7×7/2 convolution of 2k channels, BN-ReLU and a 3×3/2 max-pool,
with symmetric zero padding (3 and 1) as in the paper's Torch code and keras.applications. The
small-image stem (``"auto"`` up to 64 px) is the paper's CIFAR one: a single 3×3 convolution of
2k channels, no BN-ReLU (each dense layer starts with its own) and no pooling. Transitions
average-pool with "same" padding, identical to the paper's at even sizes and never producing
an empty map on odd ones, so any input size works.

``bn_epsilon`` defaults to the BatchNorm factory's 1e-5; keras.applications uses 1.001e-5, and
``KERAS_APPLICATIONS_LAYOUT`` sets it so that network's weights give identical outputs.
"""

from __future__ import annotations

from functools import partial

import keras

from selfsup.models.backbone import (
    BACKBONES,
    FEATURE_ENDPOINT,
    Backbone,
    make_batch_norm,
    resolve_stem,
)
from selfsup.models.blocks import conv

# Table 1: layers per dense block of DenseNet-121, and the growth rate of the ImageNet models.
DENSENET121_BLOCKS = (6, 12, 24, 16)
GROWTH_RATE = 32
# §3 "Bottleneck layers": the 1×1 convolution produces 4k feature maps.
BOTTLENECK_FACTOR = 4
# §3 "Compression": a transition keeps ⌊θ·m⌋ of its m feature maps; DenseNet-BC uses θ = 0.5.
COMPRESSION = 0.5
KERAS_APPLICATIONS_LAYOUT = dict(bn_epsilon=1.001e-5)


class DenseLayer(keras.layers.Layer):
    """One DenseNet-BC layer (Huang et al. 2017): BN-ReLU-1×1 conv-BN-ReLU-3×3 conv, concatenated
    to its input."""

    def __init__(self, growth_rate: int, bottleneck_factor: int = BOTTLENECK_FACTOR,
                 synchronized_bn: bool = False, bn_epsilon: float | None = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.bn1 = make_batch_norm(synchronized_bn, epsilon=bn_epsilon, name="bn1")
        self.conv1 = conv(bottleneck_factor * growth_rate, 1, name="conv1")
        self.bn2 = make_batch_norm(synchronized_bn, epsilon=bn_epsilon, name="bn2")
        self.conv2 = conv(growth_rate, 3, name="conv2")

    def call(self, x, training=None):
        y = self.conv1(keras.ops.relu(self.bn1(x, training=training)))
        y = self.conv2(keras.ops.relu(self.bn2(y, training=training)))
        return keras.ops.concatenate([x, y], axis=-1)


class Transition(keras.layers.Layer):
    """A DenseNet transition (Huang et al. 2017): BN-ReLU-1×1 conv to ``filters``, 2×2/2
    average pool."""

    def __init__(self, filters: int, synchronized_bn: bool = False,
                 bn_epsilon: float | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.bn = make_batch_norm(synchronized_bn, epsilon=bn_epsilon, name="bn")
        self.conv = conv(filters, 1, name="conv")
        self.pool = keras.layers.AveragePooling2D(2, strides=2, padding="same", name="pool")

    def call(self, x, training=None):
        return self.pool(self.conv(keras.ops.relu(self.bn(x, training=training))))


class DenseNet(Backbone):
    """DenseNet-BC (Huang et al. 2017) returning named endpoints (see the module docstring).

    ``stem_width`` None means 2 × ``growth_rate`` (the paper's choice for DenseNet-BC).
    """

    def __init__(
        self,
        block_layers: tuple[int, ...] = DENSENET121_BLOCKS,
        growth_rate: int = GROWTH_RATE,
        bottleneck_factor: int = BOTTLENECK_FACTOR,
        compression: float = COMPRESSION,
        stem: str = "auto",
        stem_width: int | None = None,
        input_size: int | None = None,
        bn_epsilon: float | None = None,
        synchronized_bn: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not 0.0 < compression <= 1.0:
            raise ValueError(f"compression must be in (0, 1], got {compression}")
        stem = resolve_stem(stem, input_size)
        stem_width = stem_width or 2 * growth_rate
        self._config = dict(
            block_layers=tuple(block_layers), growth_rate=growth_rate,
            bottleneck_factor=bottleneck_factor, compression=compression, stem=stem,
            stem_width=stem_width, input_size=input_size, bn_epsilon=bn_epsilon,
            synchronized_bn=synchronized_bn,
        )
        norm = partial(make_batch_norm, synchronized_bn, epsilon=bn_epsilon)

        # Maps [0, 1] RGB to [-1, 1], the convention of every selfsup backbone.
        self.rescale = keras.layers.Rescaling(2.0, offset=-1.0, name="rescale")
        if stem == "imagenet":
            self.stem_conv_pad = keras.layers.ZeroPadding2D(3, name="stem_conv_pad")
            self.stem_conv = conv(stem_width, 7, strides=2, padding="valid", name="stem_conv")
            self.stem_bn = norm(name="stem_bn")
            # Zero padding before the max-pool equals padding with -inf: it follows a ReLU.
            self.stem_pool_pad = keras.layers.ZeroPadding2D(1, name="stem_pool_pad")
            self.stem_pool = keras.layers.MaxPooling2D(3, strides=2, name="stem_pool")
        else:
            self.stem_conv_pad = self.stem_bn = self.stem_pool_pad = self.stem_pool = None
            self.stem_conv = conv(stem_width, 3, name="stem_conv")

        self.blocks: list[list[DenseLayer]] = []
        self.transitions: list[Transition] = []
        channels = stem_width
        for b, num_layers in enumerate(block_layers):
            self.blocks.append([
                DenseLayer(growth_rate, bottleneck_factor, synchronized_bn, bn_epsilon,
                           name=f"dense{b + 1}_layer{i + 1}")
                for i in range(num_layers)])
            channels += num_layers * growth_rate
            if b < len(block_layers) - 1:
                channels = int(channels * compression)
                self.transitions.append(Transition(channels, synchronized_bn, bn_epsilon,
                                                   name=f"transition{b + 1}"))
        self.final_bn = norm(name="final_bn")
        self.pool = keras.layers.GlobalAveragePooling2D(name=FEATURE_ENDPOINT)
        self.endpoint_names = [f"dense{b + 1}" for b in range(len(block_layers))]
        self.endpoint_names.append(FEATURE_ENDPOINT)
        self.num_features = channels

    def call(self, images, training=None):
        endpoints = {}
        x = self.rescale(images)
        if self.stem_conv_pad is not None:
            x = self.stem_conv_pad(x)
        x = self.stem_conv(x)
        if self.stem_bn is not None:
            x = self.stem_pool(self.stem_pool_pad(
                keras.ops.relu(self.stem_bn(x, training=training))))
        last = len(self.blocks) - 1
        for b, layers in enumerate(self.blocks):
            for layer in layers:
                x = layer(x, training=training)
            if b == last:
                x = keras.ops.relu(self.final_bn(x, training=training))
            endpoints[f"dense{b + 1}"] = x
            if b < last:
                x = self.transitions[b](x, training=training)
        endpoints[FEATURE_ENDPOINT] = self.pool(x)
        return endpoints



densenet121 = partial(DenseNet, block_layers=DENSENET121_BLOCKS, growth_rate=GROWTH_RATE)

BACKBONES.register("densenet121", densenet121)
