"""GoogLeNet / Inception v1 backbones (Szegedy et al. 2015, "Going Deeper with Convolutions").

Variants:
  * ``googlenet``: the network of the paper's Table 1 without its auxiliary classifiers: a 7×7/2
    convolution (64), 3×3/2 max-pool, 1×1 (64) and 3×3 (192) convolutions, 3×3/2 max-pool,
    inception 3a–3b, max-pool, 4a–4e, max-pool, 5a–5b, global average pool (1024 features).
    Each inception module has the four branches of Fig. 2(b) with Table 1's widths: 1×1; 1×1
    reduce → 3×3; 1×1 reduce → 5×5 (a real 5×5, where torchvision uses 3×3); 3×3/1 max-pool →
    1×1 projection. ReLU after every convolution, biases, no normalisation. The paper's local
    response normalisation layers (Fig. 3) are omitted, as in torchvision and most
    reimplementations. With a 1000-way classifier it has 6,998,552 parameters (Table 1's column
    sums to ≈ 6.8M because it counts weights without biases, in units of 1024).
  * ``googlenet_bn``: the same network with BatchNorm after every convolution (bias-free
    convolutions), torchvision's choice; trainable parameters 7,005,832 with the classifier
    (torchvision's 6,624,904 is this minus 16·reduce·out weights per module for its 3×3 kernels
    in the "5×5" branch). Deep plain networks train far more easily with it: ``googlenet``
    blows up under Adam at 1e-3 in its first steps (the paper used SGD at small rates), while
    ``googlenet_bn`` does not.

The classifier's 40% dropout (Table 1) belongs to a task head, not to the feature vector (TF Hub
convention), so it is not here. Pools use 'same' padding, which at 224 px reproduces Table 1's
112 → 56 → 28 → 14 → 7 maps (torchvision's ceil-mode pools).

Small-image stem (inputs up to 64 px, ``stem="auto"``): the first convolution is 3×3 stride 1
and the max-pool after it is dropped (4× less downsampling, like ResNet's small stem), so a 28 px
image gives 28 → 14 → 7 → 4 maps.

Endpoints (each the last activation of a stage, before the max-pool that follows it): ``stem``
(the 192-channel 3×3 convolution), ``inception3`` (3b), ``inception4`` (4e), ``inception5`` (5b),
``pool`` (global average of ``inception5``).
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

# Table 1: #1×1, #3×3 reduce, #3×3, #5×5 reduce, #5×5, pool proj of each inception module.
INCEPTION_MODULES: dict[str, tuple[int, int, int, int, int, int]] = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}
# Table 1's stem: 7×7/2 conv (64), 1×1 reduce (64), 3×3 conv (192).
STEM_WIDTHS = (64, 64, 192)
SMALL_STEM_KERNEL = 3


class ConvUnit(keras.layers.Layer):
    """Convolution (+ optional BatchNorm) + ReLU, the unit GoogLeNet (Szegedy et al. 2015) uses
    everywhere; the convolution has a bias only when no BatchNorm follows it."""

    def __init__(self, filters: int, kernel_size: int, strides: int = 1,
                 batch_norm: bool = False, synchronized_bn: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(filters, kernel_size, strides=strides, padding="same",
                                        use_bias=not batch_norm,
                                        kernel_initializer="he_normal", name="conv")
        self.bn = make_batch_norm(synchronized_bn, name="bn") if batch_norm else None

    def call(self, x, training=None):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x, training=training)
        return keras.ops.relu(x)


class InceptionModule(keras.layers.Layer):
    """The inception module with dimension reductions (Szegedy et al. 2015, Fig. 2b).

    Four branches concatenated on channels: 1×1; 1×1 → 3×3; 1×1 → 5×5; 3×3/1 max-pool → 1×1.
    """

    def __init__(self, widths: tuple[int, int, int, int, int, int], batch_norm: bool = False,
                 synchronized_bn: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        n1x1, reduce3x3, n3x3, reduce5x5, n5x5, pool_proj = widths
        unit = partial(ConvUnit, batch_norm=batch_norm, synchronized_bn=synchronized_bn)
        self.branch1x1 = unit(n1x1, 1, name="branch1x1")
        self.branch3x3_reduce = unit(reduce3x3, 1, name="branch3x3_reduce")
        self.branch3x3 = unit(n3x3, 3, name="branch3x3")
        self.branch5x5_reduce = unit(reduce5x5, 1, name="branch5x5_reduce")
        self.branch5x5 = unit(n5x5, 5, name="branch5x5")
        self.branch_pool = keras.layers.MaxPooling2D(3, strides=1, padding="same",
                                                     name="branch_pool")
        self.pool_proj = unit(pool_proj, 1, name="pool_proj")
        self.filters = n1x1 + n3x3 + n5x5 + pool_proj

    def call(self, x, training=None):
        return keras.ops.concatenate([
            self.branch1x1(x, training=training),
            self.branch3x3(self.branch3x3_reduce(x, training=training), training=training),
            self.branch5x5(self.branch5x5_reduce(x, training=training), training=training),
            self.pool_proj(self.branch_pool(x), training=training),
        ], axis=-1)


class GoogLeNet(Backbone):
    """GoogLeNet / Inception v1 (Szegedy et al. 2015) returning named endpoints (see the module
    docstring)."""

    def __init__(
        self,
        batch_norm: bool = False,
        stem: str = "auto",
        input_size: int | None = None,
        synchronized_bn: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        stem = resolve_stem(stem, input_size)
        self._config = dict(batch_norm=batch_norm, stem=stem, input_size=input_size,
                            synchronized_bn=synchronized_bn)
        unit = partial(ConvUnit, batch_norm=batch_norm, synchronized_bn=synchronized_bn)

        # Maps [0, 1] RGB to [-1, 1], the same input convention as the other backbones.
        self.rescale = keras.layers.Rescaling(2.0, offset=-1.0, name="rescale")
        if stem == "imagenet":
            self.conv1 = unit(STEM_WIDTHS[0], 7, strides=2, name="conv1")
            self.pool1 = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")
        else:
            self.conv1 = unit(STEM_WIDTHS[0], SMALL_STEM_KERNEL, name="conv1")
            self.pool1 = None
        self.conv2_reduce = unit(STEM_WIDTHS[1], 1, name="conv2_reduce")
        self.conv2 = unit(STEM_WIDTHS[2], 3, name="conv2")

        self.stages: list[list[InceptionModule]] = []
        self.stage_pools: list[keras.layers.MaxPooling2D] = []
        self.stage_names = [f"inception{stage}" for stage in ("3", "4", "5")]
        for stage in ("3", "4", "5"):
            self.stage_pools.append(keras.layers.MaxPooling2D(3, strides=2, padding="same",
                                                              name=f"pool{stage}"))
            self.stages.append([
                InceptionModule(widths, batch_norm=batch_norm, synchronized_bn=synchronized_bn,
                                name=f"inception_{module}")
                for module, widths in INCEPTION_MODULES.items() if module.startswith(stage)])
        self.endpoint_names = ["stem", *self.stage_names, FEATURE_ENDPOINT]
        self.pool = keras.layers.GlobalAveragePooling2D(name=FEATURE_ENDPOINT)
        self.num_features = self.stages[-1][-1].filters

    def call(self, images, training=None):
        endpoints = {}
        x = self.conv1(self.rescale(images), training=training)
        if self.pool1 is not None:
            x = self.pool1(x)
        x = self.conv2(self.conv2_reduce(x, training=training), training=training)
        endpoints["stem"] = x
        for name, pool, stage in zip(self.stage_names, self.stage_pools, self.stages,
                                     strict=True):
            x = pool(x)
            for module in stage:
                x = module(x, training=training)
            endpoints[name] = x
        endpoints[FEATURE_ENDPOINT] = self.pool(x)
        return endpoints



googlenet = partial(GoogLeNet, batch_norm=False)
googlenet_bn = partial(GoogLeNet, batch_norm=True)

BACKBONES.register("googlenet", googlenet)
BACKBONES.register("googlenet_bn", googlenet_bn)
