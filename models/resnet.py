"""ResNet backbones (He et al. 2016) for self-supervised pretraining.

Variants:
  * ``resnet18`` / ``resnet34`` (basic blocks) and ``resnet50`` (bottleneck blocks), stages of
    64/128/256/512 base channels, endpoints ``stem``, ``res2`` … ``res5``, ``pool``.
  * ``resnet_small``: the CIFAR-style network of He et al. §4.2 shrunk for 28–32 px inputs on a
    CPU: a 16-channel 3×3 stem and three stages of 16/32/64 channels with 2 basic blocks each
    (endpoints ``stem``, ``res2`` … ``res4``, ``pool``).

The ImageNet stem is a 7×7/2 convolution and a 3×3/2 max-pool; the small-image stem is one 3×3
convolution without pooling. ``stem="auto"`` picks the small stem for inputs up to 64 px.
"""

from __future__ import annotations

from functools import partial

import keras

from selfsup.models.backbone import BACKBONES, FEATURE_ENDPOINT, make_batch_norm, resolve_stem
from selfsup.models.blocks import BasicBlock, BottleneckBlock, conv

BLOCKS = {"basic": BasicBlock, "bottleneck": BottleneckBlock}


class ResNet(keras.Model):
    """A ResNet that returns a dict of named endpoints (see the module docstring)."""

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
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if len(stage_blocks) != len(stage_widths):
            raise ValueError("stage_blocks and stage_widths must have the same length")
        stem = resolve_stem(stem, input_size)
        if block not in BLOCKS:
            raise ValueError(f"block must be one of {sorted(BLOCKS)}, got {block!r}")
        self._config = dict(
            stage_blocks=tuple(stage_blocks), stage_widths=tuple(stage_widths), block=block,
            stem=stem, stem_width=stem_width, input_size=input_size,
            width_multiplier=width_multiplier, synchronized_bn=synchronized_bn,
        )
        widths = [max(1, round(w * width_multiplier)) for w in stage_widths]
        stem_channels = max(1, round((stem_width or stage_widths[0]) * width_multiplier))

        # Maps [0, 1] RGB to [-1, 1] so the exported model takes the Hub image convention.
        self.rescale = keras.layers.Rescaling(2.0, offset=-1.0, name="rescale")
        if stem == "imagenet":
            self.stem_conv = conv(stem_channels, 7, strides=2, name="stem_conv")
            self.stem_pool = keras.layers.MaxPooling2D(3, strides=2, padding="same",
                                                       name="stem_pool")
        else:
            self.stem_conv = conv(stem_channels, 3, name="stem_conv")
            self.stem_pool = None
        self.stem_bn = make_batch_norm(synchronized_bn, name="stem_bn")

        block_cls = BLOCKS[block]
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
                    synchronized_bn=synchronized_bn, name=f"res{index + 2}_block{b + 1}"))
                in_channels = out_channels
            self.stages.append(stage)
            self.endpoint_names.append(f"res{index + 2}")
        self.endpoint_names.append(FEATURE_ENDPOINT)
        self.pool = keras.layers.GlobalAveragePooling2D(name=FEATURE_ENDPOINT)
        self.num_features = in_channels

    def call(self, images, training=None):
        endpoints = {}
        x = self.stem_conv(self.rescale(images))
        x = keras.ops.relu(self.stem_bn(x, training=training))
        if self.stem_pool is not None:
            x = self.stem_pool(x)
        endpoints["stem"] = x
        for index, stage in enumerate(self.stages):
            for block in stage:
                x = block(x, training=training)
            endpoints[f"res{index + 2}"] = x
        endpoints[FEATURE_ENDPOINT] = self.pool(x)
        return endpoints

    def output_specs(self, input_shape: tuple) -> dict[str, tuple]:
        """Endpoint name → output shape for images of ``input_shape`` ([batch, h, w, 3])."""
        specs = self.compute_output_spec(keras.KerasTensor(input_shape))
        return {name: tuple(spec.shape) for name, spec in specs.items()}

    def get_config(self) -> dict:
        return {**super().get_config(), **self._config}


resnet18 = partial(ResNet, stage_blocks=(2, 2, 2, 2), block="basic")
resnet34 = partial(ResNet, stage_blocks=(3, 4, 6, 3), block="basic")
resnet50 = partial(ResNet, stage_blocks=(3, 4, 6, 3), block="bottleneck")
resnet_small = partial(ResNet, stage_blocks=(2, 2, 2), stage_widths=(16, 32, 64), stem="small")

BACKBONES.register("resnet18", resnet18)
BACKBONES.register("resnet34", resnet34)
BACKBONES.register("resnet50", resnet50)
BACKBONES.register("resnet_small", resnet_small)
