"""Residual building blocks shared by the ResNet family (He et al. 2016, "Deep Residual Learning").

Each block builds all its layers in ``__init__``; ``call`` only wires them.
"""

from __future__ import annotations

import keras

from selfsup.models.backbone import make_batch_norm


def conv(filters: int, kernel_size: int, strides: int = 1, name: str | None = None):
    """A bias-free 'same' convolution with He initialisation (BatchNorm follows it)."""
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=name,
    )


class BasicBlock(keras.layers.Layer):
    """Two 3×3 convolutions with an identity (or 1×1 projection) shortcut; ResNet-18/34."""

    expansion = 1

    def __init__(self, filters: int, strides: int = 1, project: bool = False,
                 synchronized_bn: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.conv1 = conv(filters, 3, strides, name="conv1")
        self.bn1 = make_batch_norm(synchronized_bn, name="bn1")
        self.conv2 = conv(filters, 3, name="conv2")
        self.bn2 = make_batch_norm(synchronized_bn, name="bn2")
        self.shortcut_conv = conv(filters, 1, strides, name="shortcut_conv") if project else None
        self.shortcut_bn = make_batch_norm(synchronized_bn, name="shortcut_bn") if project else None

    def call(self, x, training=None):
        shortcut = x
        if self.shortcut_conv is not None:
            shortcut = self.shortcut_bn(self.shortcut_conv(x), training=training)
        y = keras.ops.relu(self.bn1(self.conv1(x), training=training))
        y = self.bn2(self.conv2(y), training=training)
        return keras.ops.relu(y + shortcut)


class BottleneckBlock(keras.layers.Layer):
    """1×1 reduce, 3×3 (strided), 1×1 expand ×4, with a projection shortcut; ResNet-50 and up.

    The stride sits on the 3×3 convolution (the "ResNet v1.5" placement used by torchvision and
    TF Model Garden), which does not change the parameter count.
    """

    expansion = 4

    def __init__(self, filters: int, strides: int = 1, project: bool = False,
                 synchronized_bn: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.conv1 = conv(filters, 1, name="conv1")
        self.bn1 = make_batch_norm(synchronized_bn, name="bn1")
        self.conv2 = conv(filters, 3, strides, name="conv2")
        self.bn2 = make_batch_norm(synchronized_bn, name="bn2")
        self.conv3 = conv(filters * self.expansion, 1, name="conv3")
        self.bn3 = make_batch_norm(synchronized_bn, name="bn3")
        out = filters * self.expansion
        self.shortcut_conv = conv(out, 1, strides, name="shortcut_conv") if project else None
        self.shortcut_bn = make_batch_norm(synchronized_bn, name="shortcut_bn") if project else None

    def call(self, x, training=None):
        shortcut = x
        if self.shortcut_conv is not None:
            shortcut = self.shortcut_bn(self.shortcut_conv(x), training=training)
        y = keras.ops.relu(self.bn1(self.conv1(x), training=training))
        y = keras.ops.relu(self.bn2(self.conv2(y), training=training))
        y = self.bn3(self.conv3(y), training=training)
        return keras.ops.relu(y + shortcut)
