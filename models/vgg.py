"""VGG backbones (Simonyan & Zisserman 2015, "Very Deep Convolutional Networks for Large-Scale
Image Recognition").

Variants:
  * ``vgg16``: configuration D of Table 1, thirteen 3×3 convolutions (stride 1, "same") with
    ReLU in five blocks of 2, 2, 3, 3, 3 layers and 64, 128, 256, 512, 512 channels, each block
    followed by a 2×2/2 max-pool, then the fully connected trunk fc6 and fc7 of 4096 units with
    ReLU. With the ImageNet layout it has the layers of ``keras.applications.VGG16`` minus its
    1000-way classifier (fc8), so that network's weights copy over one to one.
  * ``vgg16_bn``: the same with BatchNorm between every convolution and its ReLU (the
    torchvision ``vgg16_bn`` layout, which keeps the convolution biases; 138,365,992 parameters
    with fc8 there, 8,448 more than ``vgg16``). Not in the paper, which predates BatchNorm; it
    trains from scratch without the paper's stage-wise initialisation.

Endpoints: ``block1`` … ``block5`` (each block's output after its max-pool, when it has one),
``fc6``, ``fc7`` (after ReLU) and ``pool``: fc7's features, i.e. the input of the paper's fc8
classifier. Dropout 0.5 acts while training on the inputs of fc6 and fc7 (§3.1: "regularised
by dropout for the first two fully-connected layers"), never on ``pool`` itself: an exported
feature vector carries no dropout (TF Hub's image-feature-vector convention).

Input sizes:
  * ImageNet layout: block5's map is adaptively average-pooled to 7×7 before fc6 so any input
    size works; at 224 px block5 is already 7×7 and the pooling is the identity. Max-pools use
    "same" padding (Caffe's ceil rounding, the paper's framework), identical to "valid" for
    sizes divisible by 32, and keeping a 1×1 map instead of an empty one below 32 px.
  * Small-image layout (``stem="small"``, the ``"auto"`` choice up to 64 px): block4 and block5
    have no max-pool, so at 32 px the last map is 4×4 (like the CIFAR ResNets' last stage)
    instead of 1×1; fc6 reads its global average (adaptive pooling to 1×1), and the trunk is
    512 units wide as in the CIFAR VGG of Zagoruyko (2015, "92.45% on CIFAR-10 in Torch")
    rather than 4096 (which would add 18M parameters to read 512 numbers).
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
from selfsup.models.blocks import AdaptiveAveragePooling2D, maybe_dropout

# Table 1, configuration D (VGG-16): convolutions per block and their channels.
VGG16_BLOCK_CONVS = (2, 2, 3, 3, 3)
VGG16_BLOCK_WIDTHS = (64, 128, 256, 512, 512)
# §2.1: fc6 and fc7 have 4096 channels each; fc6 reads the 7×7 map of a 224 px input.
FC_UNITS = 4096
FC_INPUT_SIZE = 7
# §3.1: dropout ratio of the first two fully connected layers.
DROPOUT_RATE = 0.5
# Small-image layout: trunk width of Zagoruyko's CIFAR VGG, and the blocks that keep their pool.
SMALL_FC_UNITS = 512
SMALL_POOLED_BLOCKS = 3


class VGG(Backbone):
    """VGG (Simonyan & Zisserman 2015) returning named endpoints (see the module docstring).

    ``fc_units`` None means 4096 (ImageNet layout) or 512 (small-image layout). ``batch_norm``
    adds BatchNorm after every convolution; ``synchronized_bn`` only matters then. Dropout uses
    ``tf.nn.dropout`` (no RNG-state variables, so checkpoint keys do not depend on how many
    models the process built).
    """

    def __init__(
        self,
        block_convs: tuple[int, ...] = VGG16_BLOCK_CONVS,
        block_widths: tuple[int, ...] = VGG16_BLOCK_WIDTHS,
        batch_norm: bool = False,
        stem: str = "auto",
        input_size: int | None = None,
        fc_units: int | None = None,
        dropout_rate: float = DROPOUT_RATE,
        synchronized_bn: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if len(block_convs) != len(block_widths):
            raise ValueError("block_convs and block_widths must have the same length")
        if not 0.0 <= dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate}")
        stem = resolve_stem(stem, input_size)
        small = stem == "small"
        fc_units = fc_units or (SMALL_FC_UNITS if small else FC_UNITS)
        self._config = dict(
            block_convs=tuple(block_convs), block_widths=tuple(block_widths),
            batch_norm=batch_norm, stem=stem, input_size=input_size, fc_units=fc_units,
            dropout_rate=dropout_rate, synchronized_bn=synchronized_bn,
        )
        self.dropout_rate = dropout_rate

        # Maps [0, 1] RGB to [-1, 1], the convention of every selfsup backbone.
        self.rescale = keras.layers.Rescaling(2.0, offset=-1.0, name="rescale")
        self.convs: list[list[keras.layers.Conv2D]] = []
        self.norms: list[list[keras.layers.Layer | None]] = []
        self.pools: list[keras.layers.Layer | None] = []
        for b, (num_convs, width) in enumerate(zip(block_convs, block_widths, strict=True)):
            block = f"block{b + 1}"
            # He et al. 2015 ("Delving Deep into Rectifiers") initialisation trains the 16-layer
            # plain net from scratch; the paper initialised it from the shallower config A.
            self.convs.append([
                keras.layers.Conv2D(width, 3, padding="same", kernel_initializer="he_normal",
                                    name=f"{block}_conv{i + 1}")
                for i in range(num_convs)])
            self.norms.append([
                make_batch_norm(synchronized_bn, name=f"{block}_bn{i + 1}") if batch_norm
                else None
                for i in range(num_convs)])
            keeps_pool = not small or b < SMALL_POOLED_BLOCKS
            self.pools.append(
                keras.layers.MaxPooling2D(2, strides=2, padding="same", name=f"{block}_pool")
                if keeps_pool else None)
        self.fc_pool = AdaptiveAveragePooling2D(1 if small else FC_INPUT_SIZE, name="fc_pool")
        self.flatten = keras.layers.Flatten(name="flatten")
        self.fc6 = keras.layers.Dense(fc_units, activation="relu", name="fc6")
        self.fc7 = keras.layers.Dense(fc_units, activation="relu", name="fc7")
        self.endpoint_names = [f"block{b + 1}" for b in range(len(block_convs))]
        self.endpoint_names += ["fc6", "fc7", FEATURE_ENDPOINT]
        self.num_features = fc_units

    def call(self, images, training=None):
        endpoints = {}
        x = self.rescale(images)
        for b, (convs, norms, pool) in enumerate(
                zip(self.convs, self.norms, self.pools, strict=True)):
            for conv, norm in zip(convs, norms, strict=True):
                x = conv(x)
                if norm is not None:
                    x = norm(x, training=training)
                x = keras.ops.relu(x)
            if pool is not None:
                x = pool(x)
            endpoints[f"block{b + 1}"] = x
        # Dropout on the inputs of fc6 and fc7, never on the exported feature vector (TF Hub's
        # image-feature-vector convention).
        x = self.flatten(self.fc_pool(x))
        x = self.fc6(maybe_dropout(x, self.dropout_rate, training))
        endpoints["fc6"] = x
        x = self.fc7(maybe_dropout(x, self.dropout_rate, training))
        endpoints["fc7"] = x
        endpoints[FEATURE_ENDPOINT] = x
        return endpoints



vgg16 = partial(VGG, block_convs=VGG16_BLOCK_CONVS, block_widths=VGG16_BLOCK_WIDTHS)
vgg16_bn = partial(VGG, block_convs=VGG16_BLOCK_CONVS, block_widths=VGG16_BLOCK_WIDTHS,
                   batch_norm=True)

BACKBONES.register("vgg16", vgg16)
BACKBONES.register("vgg16_bn", vgg16_bn)
