"""AlexNet backbones (Krizhevsky et al. 2012, "ImageNet Classification with Deep CNNs").

Variants:
  * ``alexnet``: the paper's network (§3.5, Fig. 2). Five convolutions of 96-256-384-384-256
    channels (11×11/4, 5×5, 3×3, 3×3, 3×3), ReLU after each, local response normalisation
    after conv1 and conv2 (§3.3: k = 2, n = 5, α = 1e-4, β = 0.75), overlapping 3×3/2 max-pools
    after conv1, conv2 and conv5 (§3.4), then fc6 and fc7 of 4096 units with dropout 0.5
    (§4.2). conv2, conv4 and conv5 are grouped convolutions with 2 groups: the paper's two GPUs
    each hold half of the kernels, and those layers only see the kernel maps on their own GPU,
    while conv3 and the fully connected layers see both halves. With a 1000-way classifier this
    is 60,965,224 parameters (the paper's "60 million"):

      conv1  11·11·3·96   + 96   =     34,944
      conv2   5·5·48·256  + 256  =    307,456   (2 groups of 48 → 128)
      conv3   3·3·256·384 + 384  =    885,120
      conv4   3·3·192·384 + 384  =    663,936   (2 groups of 192 → 192)
      conv5   3·3·192·256 + 256  =    442,624   (2 groups of 192 → 128)
      fc6    6·6·256·4096 + 4096 = 37,752,832
      fc7       4096·4096 + 4096 = 16,781,312
      fc8       4096·1000 + 1000 =  4,097,000   (the task head, not part of the backbone)

    ``groups=1`` gives the single-tower network with the same channel counts (62,378,344
    parameters, the "62.4 million" quoted by Jing & Tian's survey). It is not the "one weird
    trick" / torchvision AlexNet, which has 64-192-384-256-256 channels.
  * ``alexnet_bn``: the self-supervised community's AlexNet (Gidaris et al. 2018, RotNet; Caron
    et al. 2018, DeepCluster): single tower, BatchNorm after every convolution and after fc6 and
    fc7 (as RotNet's), no LRN, no dropout by default. Layers followed by BatchNorm have no bias.

Choices (the paper leaves these open or they do not carry over):
  * Padding: convolutions use 'same' padding and the pools 'valid', so a 224 px image gives
    56 → 27 → 13 → 6 maps, the paper's 55/27/13/6 except for conv1 (its 224 px input does not
    divide evenly; Caffe uses 227 px).
  * conv5's pooled map is adaptively average-pooled to 6×6 (PyTorch's bins; the identity at
    224 px) before fc6, so every input size feeds the same 9216-input fc6.
  * ``"pool"`` is fc7's activation (the same tensor as ``"fc7"``), not a global average of
    conv5: RotNet and DeepCluster put their pretext classifiers on fc7, and a head on a conv5
    average would leave fc6/fc7 without gradients. Dropout acts on the inputs of fc6 and fc7
    (torchvision's placement), so the feature vector itself is never dropped out (TF Hub
    convention).
  * Initialisation: He-normal kernels and zero biases instead of the paper's N(0, 0.01) with
    unit biases, which only trains with the paper's learning-rate schedule. Without BatchNorm
    the network wants the paper's small steps (SGD, lr 0.01): SGD at 0.1 or Adam at 1e-3
    blows the loss up in the first steps. ``alexnet_bn`` takes either.
  * Small-image stem (inputs up to 64 px, ``stem="auto"``): conv1 becomes a 5×5 stride-1
    convolution (96 channels) and the three max-pools use 'same' padding, so 28 px gives
    28 → 14 → 7 → 4 maps instead of collapsing to nothing. The ImageNet stem needs inputs of
    at least MIN_IMAGENET_INPUT px.

Endpoints (ReLU outputs, before LRN and pooling): ``conv1`` … ``conv5``, ``fc6``, ``fc7``,
``pool``.
"""

from __future__ import annotations

from functools import partial

import keras
import tensorflow as tf

from selfsup.models.backbone import (
    BACKBONES,
    FEATURE_ENDPOINT,
    Backbone,
    make_batch_norm,
    resolve_stem,
)
from selfsup.models.blocks import AdaptiveAveragePooling2D, maybe_dropout

# §3.5: kernels of the five convolutional layers and units of the two hidden fc layers.
CONV_WIDTHS = (96, 256, 384, 384, 256)
CONV_KERNELS = (11, 5, 3, 3, 3)
FC_WIDTH = 4096
# conv2, conv4 and conv5 only connect to kernel maps on the same GPU (§3.5), hence grouped.
GROUPED_CONVS = (False, True, False, True, True)
POOL_AFTER = (True, True, False, False, True)
# §3.4: overlapping pooling, z = 3, s = 2.
POOL_SIZE, POOL_STRIDE = 3, 2
# fc6 sees a 6×6×256 map (§3.5, Fig. 2).
FC_INPUT_GRID = 6
# §3.3: k, n (→ depth radius n // 2), α, β.
LRN_BIAS, LRN_SIZE, LRN_ALPHA, LRN_BETA = 2.0, 5, 1e-4, 0.75
# §4.2: dropout probability in the first two fully connected layers.
DROPOUT_RATE = 0.5
SMALL_STEM_KERNEL = 5
# Smallest side that survives the ImageNet stem: 57 px → conv1 15 → pool 7 → pool 3 → pool 1.
MIN_IMAGENET_INPUT = 57


class LocalResponseNormalization(keras.layers.Layer):
    """Krizhevsky et al. 2012 §3.3: b_i = a_i / (k + α Σ_{|j−i| ≤ n//2} a_j²)^β over channels.

    α is used as written in the paper (Caffe divides it by n). Has no weights.
    """

    def __init__(self, size: int = LRN_SIZE, bias: float = LRN_BIAS, alpha: float = LRN_ALPHA,
                 beta: float = LRN_BETA, **kwargs) -> None:
        super().__init__(**kwargs)
        self.size, self.bias, self.alpha, self.beta = size, bias, alpha, beta

    def call(self, x):
        # The TF kernel is float32-only; mixed-precision activations go through float32.
        y = tf.nn.local_response_normalization(
            tf.cast(x, tf.float32), depth_radius=self.size // 2, bias=self.bias,
            alpha=self.alpha, beta=self.beta)
        return tf.cast(y, x.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "size": self.size, "bias": self.bias,
                "alpha": self.alpha, "beta": self.beta}


class GroupedConv2D(keras.layers.Conv2D):
    """A grouped convolution run as one convolution per group (AlexNet's GPU towers).

    Krizhevsky et al. 2012 §3.5 split conv2/4/5 across two GPUs. The kernel has Keras' grouped
    layout ``[k, k, in / groups, out]``, but Keras' TensorFlow backend compiles grouped
    convolutions with XLA on CPU (one trace per eager call, slower, and XLA in exported
    graphs); splitting into plain convolutions avoids that and computes the same thing.
    """

    def convolution_op(self, inputs, kernel):
        if self.groups == 1:
            return super().convolution_op(inputs, kernel)
        towers = []
        for x, k in zip(keras.ops.split(inputs, self.groups, axis=-1),
                        keras.ops.split(kernel, self.groups, axis=-1), strict=True):
            towers.append(super().convolution_op(x, k))
        return keras.ops.concatenate(towers, axis=-1)


class AlexNet(Backbone):
    """AlexNet (Krizhevsky et al. 2012) returning named endpoints (see the module docstring)."""

    def __init__(
        self,
        groups: int = 2,
        local_response_norm: bool = True,
        batch_norm: bool = False,
        dropout: float = DROPOUT_RATE,
        stem: str = "auto",
        input_size: int | None = None,
        synchronized_bn: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        stem = resolve_stem(stem, input_size)
        if groups < 1 or any(width % groups for width in CONV_WIDTHS):
            raise ValueError(f"groups must divide every conv width {CONV_WIDTHS}, got {groups}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if stem == "imagenet" and input_size is not None and input_size < MIN_IMAGENET_INPUT:
            raise ValueError(f"the ImageNet stem needs inputs of at least {MIN_IMAGENET_INPUT} "
                             f"px, got {input_size}; use stem='small'")
        self._config = dict(
            groups=groups, local_response_norm=local_response_norm, batch_norm=batch_norm,
            dropout=dropout, stem=stem, input_size=input_size, synchronized_bn=synchronized_bn,
        )
        self.stem = stem

        # Maps [0, 1] RGB to [-1, 1], the same input convention as the other backbones.
        self.rescale = keras.layers.Rescaling(2.0, offset=-1.0, name="rescale")
        pool_padding = "valid" if stem == "imagenet" else "same"
        self.convs: list[keras.layers.Conv2D] = []
        self.conv_norms: list[keras.layers.Layer | None] = []
        self.lrns: list[keras.layers.Layer | None] = []
        self.pools: list[keras.layers.Layer | None] = []
        for index, (width, kernel) in enumerate(zip(CONV_WIDTHS, CONV_KERNELS, strict=True)):
            name = f"conv{index + 1}"
            strides = 1
            if index == 0:
                kernel, strides = (kernel, 4) if stem == "imagenet" else (SMALL_STEM_KERNEL, 1)
            self.convs.append(GroupedConv2D(
                width, kernel, strides=strides, padding="same",
                groups=groups if GROUPED_CONVS[index] else 1, use_bias=not batch_norm,
                kernel_initializer="he_normal", name=name))
            self.conv_norms.append(
                make_batch_norm(synchronized_bn, name=f"{name}_bn") if batch_norm else None)
            self.lrns.append(LocalResponseNormalization(name=f"{name}_lrn")
                             if local_response_norm and index < 2 else None)
            self.pools.append(keras.layers.MaxPooling2D(
                POOL_SIZE, strides=POOL_STRIDE, padding=pool_padding, name=f"pool{index + 1}")
                if POOL_AFTER[index] else None)
        self.grid_pool = AdaptiveAveragePooling2D(FC_INPUT_GRID, name="grid_pool")
        self.flatten = keras.layers.Flatten(name="flatten")
        self.fcs: list[keras.layers.Dense] = []
        self.fc_norms: list[keras.layers.Layer | None] = []
        self.dropout_rate = dropout
        for name in ("fc6", "fc7"):
            self.fcs.append(keras.layers.Dense(FC_WIDTH, use_bias=not batch_norm,
                                               kernel_initializer="he_normal", name=name))
            self.fc_norms.append(
                make_batch_norm(synchronized_bn, name=f"{name}_bn") if batch_norm else None)
        self.endpoint_names = [f"conv{i + 1}" for i in range(len(CONV_WIDTHS))]
        self.endpoint_names += ["fc6", "fc7", FEATURE_ENDPOINT]
        self.num_features = FC_WIDTH

    def _check_input_size(self, images) -> None:
        if self.stem != "imagenet":
            return
        for size in images.shape[1:3]:
            if size is not None and size < MIN_IMAGENET_INPUT:
                raise ValueError(f"AlexNet's ImageNet stem needs inputs of at least "
                                 f"{MIN_IMAGENET_INPUT} px, got {tuple(images.shape)}; "
                                 f"build it with input_size or stem='small'")

    def call(self, images, training=None):
        self._check_input_size(images)
        endpoints = {}
        x = self.rescale(images)
        for index, conv in enumerate(self.convs):
            x = conv(x)
            if self.conv_norms[index] is not None:
                x = self.conv_norms[index](x, training=training)
            x = keras.ops.relu(x)
            endpoints[f"conv{index + 1}"] = x
            if self.lrns[index] is not None:
                x = self.lrns[index](x)
            if self.pools[index] is not None:
                x = self.pools[index](x)
        x = self.flatten(self.grid_pool(x))
        for index, fc in enumerate(self.fcs):
            x = fc(maybe_dropout(x, self.dropout_rate, training))
            if self.fc_norms[index] is not None:
                x = self.fc_norms[index](x, training=training)
            x = keras.ops.relu(x)
            endpoints[f"fc{index + 6}"] = x
        endpoints[FEATURE_ENDPOINT] = x
        return endpoints



alexnet = partial(AlexNet)
alexnet_bn = partial(AlexNet, groups=1, local_response_norm=False, batch_norm=True, dropout=0.0)

BACKBONES.register("alexnet", alexnet)
BACKBONES.register("alexnet_bn", alexnet_bn)
