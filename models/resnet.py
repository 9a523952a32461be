"""ResNet backbones (He et al. 2016) for self-supervised pretraining.

Variants:
  * ``resnet18`` / ``resnet34`` (basic blocks) and ``resnet50`` (bottleneck blocks), stages of
    64/128/256/512 base channels, endpoints ``stem``, ``res2`` … ``res5``, ``pool``.
  * ``resnet_small``: the CIFAR-style network of He et al. §4.2 shrunk for 28–32 px inputs on a
    CPU: a 16-channel 3×3 stem and three stages of 16/32/64 channels with 2 basic blocks each
    (endpoints ``stem``, ``res2`` … ``res4``, ``pool``).

The ImageNet stem is a 7×7/2 convolution and a 3×3/2 max-pool; the small-image stem is one 3×3
convolution without pooling. ``stem="auto"`` picks the small stem for inputs up to 64 px.

Layouts: the defaults are torchvision's "v1.5" networks (bias-free convolutions, BatchNorm
epsilon 1e-5, bottleneck stride on the 3×3 convolution, TF "same" padding in the stem). With
``stride_on="1x1", conv_bias=True, bn_epsilon=1.001e-5, stem_padding="symmetric"`` a
``resnet50`` has exactly the layers of ``keras.applications.ResNet50`` (see
``KERAS_APPLICATIONS_LAYOUT``), so its weights can be copied over one to one.
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
from selfsup.models.blocks import STRIDE_PLACEMENTS, BasicBlock, BottleneckBlock, conv

BLOCKS = {"basic": BasicBlock, "bottleneck": BottleneckBlock}
# "same": TensorFlow's padding, the extra row/column of an even input at the bottom/right.
# "symmetric": explicit zero padding of 3 (conv) and 1 (max-pool) on every side, as in Caffe,
# torchvision and keras.applications; the output sizes are the same, the sampling grid is not.
STEM_PADDINGS = ("same", "symmetric")
# The options that turn ``resnet50`` into keras.applications.ResNet50's layer-for-layer twin.
KERAS_APPLICATIONS_LAYOUT = dict(stride_on="1x1", conv_bias=True, bn_epsilon=1.001e-5,
                                 stem_padding="symmetric")


class ResNet(Backbone):
    """ResNet (He et al. 2016) returning a dict of named endpoints (see the module docstring).

    ``stride_on`` (bottleneck blocks only), ``conv_bias``, ``bn_epsilon`` (None: the factory's
    1e-5) and ``stem_padding`` select the layout; see the module docstring.
    """

    def __init__(
        self,
        stage_blocks: tuple[int, ...] = (2, 2, 2, 2),
        stage_widths: tuple[int, ...] = (64, 128, 256, 512),
        block: str = "basic",
        stem: str = "auto",
        stem_width: int | None = None,
        input_size: int | None = None,
        width_multiplier: float = 1.0,
        synchronized_bn: bool = False,
        stride_on: str = "3x3",
        conv_bias: bool = False,
        bn_epsilon: float | None = None,
        stem_padding: str = "same",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if len(stage_blocks) != len(stage_widths):
            raise ValueError("stage_blocks and stage_widths must have the same length")
        stem = resolve_stem(stem, input_size)
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {sorted(BLOCKS)}, got {block!r}")
        if stride_on not in STRIDE_PLACEMENTS:
            raise ValueError(f"stride_on must be one of {STRIDE_PLACEMENTS}, got {stride_on!r}")
        if block == "basic" and stride_on != "3x3":
            raise ValueError("stride_on applies to bottleneck blocks; basic blocks stride a 3×3")
        if stem_padding not in STEM_PADDINGS:
            raise ValueError(f"stem_padding must be one of {STEM_PADDINGS}, got {stem_padding!r}")
        self._config = dict(
            stage_blocks=tuple(stage_blocks), stage_widths=tuple(stage_widths), block=block,
            stem=stem, stem_width=stem_width, input_size=input_size,
            width_multiplier=width_multiplier, synchronized_bn=synchronized_bn,
            stride_on=stride_on, conv_bias=conv_bias, bn_epsilon=bn_epsilon,
            stem_padding=stem_padding,
        )
        widths = [max(1, round(w * width_multiplier)) for w in stage_widths]
        stem_channels = max(1, round((stem_width or stage_widths[0]) * width_multiplier))

        # Maps [0, 1] RGB to [-1, 1] so the exported model takes the Hub image convention.
        self.rescale = keras.layers.Rescaling(2.0, offset=-1.0, name="rescale")
        self.stem_conv_pad = self.stem_pool_pad = None
        padding = "same"
        if stem == "imagenet" and stem_padding == "symmetric":
            self.stem_conv_pad = keras.layers.ZeroPadding2D(3, name="stem_conv_pad")
            # Zero padding before the max-pool equals padding with -inf: it follows a ReLU.
            self.stem_pool_pad = keras.layers.ZeroPadding2D(1, name="stem_pool_pad")
            padding = "valid"
        if stem == "imagenet":
            self.stem_conv = conv(stem_channels, 7, strides=2, name="stem_conv",
                                  use_bias=conv_bias, padding=padding)
            self.stem_pool = keras.layers.MaxPooling2D(3, strides=2, padding=padding,
                                                       name="stem_pool")
        else:
            self.stem_conv = conv(stem_channels, 3, name="stem_conv", use_bias=conv_bias)
            self.stem_pool = None
        self.stem_bn = make_batch_norm(synchronized_bn, epsilon=bn_epsilon, name="stem_bn")

        block_cls = BLOCKS[block]
        layout = dict(conv_bias=conv_bias, bn_epsilon=bn_epsilon)
        if block == "bottleneck":
            layout["stride_on"] = stride_on
        self.stages: list[list[keras.layers.Layer]] = []
        self.endpoint_names = ["stem"]
        in_channels = stem_channels
        for index, (num_blocks, width) in enumerate(zip(stage_blocks, widths, strict=True)):
            stage = []
            for b in range(num_blocks):
                strides = 2 if (b == 0 and index > 0) else 1
                out_channels = width * block_cls.expansion
                stage.append(block_cls(
                    width, strides=strides, project=(strides != 1 or in_channels != out_channels),
                    synchronized_bn=synchronized_bn, name=f"res{index + 2}_block{b + 1}",
                    **layout))
                in_channels = out_channels
            self.stages.append(stage)
            self.endpoint_names.append(f"res{index + 2}")
        self.endpoint_names.append(FEATURE_ENDPOINT)
        self.pool = keras.layers.GlobalAveragePooling2D(name=FEATURE_ENDPOINT)
        self.num_features = in_channels

    def call(self, images, training=None):
        endpoints = {}
        x = self.rescale(images)
        if self.stem_conv_pad is not None:
            x = self.stem_conv_pad(x)
        x = keras.ops.relu(self.stem_bn(self.stem_conv(x), training=training))
        if self.stem_pool_pad is not None:
            x = self.stem_pool_pad(x)
        if self.stem_pool is not None:
            x = self.stem_pool(x)
        endpoints["stem"] = x
        for index, stage in enumerate(self.stages):
            for block in stage:
                x = block(x, training=training)
            endpoints[f"res{index + 2}"] = x
        endpoints[FEATURE_ENDPOINT] = self.pool(x)
        return endpoints



resnet18 = partial(ResNet, stage_blocks=(2, 2, 2, 2), block="basic")
resnet34 = partial(ResNet, stage_blocks=(3, 4, 6, 3), block="basic")
resnet50 = partial(ResNet, stage_blocks=(3, 4, 6, 3), block="bottleneck")
resnet_small = partial(ResNet, stage_blocks=(2, 2, 2), stage_widths=(16, 32, 64), stem="small")

BACKBONES.register("resnet18", resnet18)
BACKBONES.register("resnet34", resnet34)
BACKBONES.register("resnet50", resnet50)
BACKBONES.register("resnet_small", resnet_small)
