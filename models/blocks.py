"""Building blocks shared by backbone families: the residual blocks of the ResNet family (He et al.
2016, "Deep Residual Learning"), and adaptive
average pooling (fully connected trunks on any input size).

Each block builds all its layers in ``__init__``; ``call`` only wires them. The residual blocks'
defaults are the torchvision / TF Model Garden layout (bias-free convolutions, BatchNorm epsilon
1e-5, stride on the 3×3 convolution); ``conv_bias``, ``bn_epsilon`` and ``stride_on`` give the
layout of ``keras.applications`` (biases, epsilon 1.001e-5, stride on the first 1×1 convolution).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from selfsup.models.backbone import make_batch_norm

STRIDE_PLACEMENTS = ("3x3", "1x1")


def conv(filters: int, kernel_size: int, strides: int = 1, name: str | None = None,
         use_bias: bool = False, padding: str = "same") -> keras.layers.Conv2D:
    """A convolution with He initialisation; bias-free by default (BatchNorm follows it)."""
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=use_bias,
        kernel_initializer="he_normal",
        name=name,
    )


class BasicBlock(keras.layers.Layer):
    """Two 3×3 convolutions with an identity (or 1×1 projection) shortcut; ResNet-18/34."""

    expansion = 1

    def __init__(self, filters: int, strides: int = 1, project: bool = False,
                 synchronized_bn: bool = False, conv_bias: bool = False,
                 bn_epsilon: float | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.conv1 = conv(filters, 3, strides, name="conv1", use_bias=conv_bias)
        self.bn1 = make_batch_norm(synchronized_bn, epsilon=bn_epsilon, name="bn1")
        self.conv2 = conv(filters, 3, name="conv2", use_bias=conv_bias)
        self.bn2 = make_batch_norm(synchronized_bn, epsilon=bn_epsilon, name="bn2")
        self.shortcut_conv = (conv(filters, 1, strides, name="shortcut_conv", use_bias=conv_bias)
                              if project else None)
        self.shortcut_bn = (make_batch_norm(synchronized_bn, epsilon=bn_epsilon, name="shortcut_bn")
                            if project else None)

    def call(self, x, training=None):
        shortcut = x
        if self.shortcut_conv is not None:
            shortcut = self.shortcut_bn(self.shortcut_conv(x), training=training)
        y = keras.ops.relu(self.bn1(self.conv1(x), training=training))
        y = self.bn2(self.conv2(y), training=training)
        return keras.ops.relu(y + shortcut)


class BottleneckBlock(keras.layers.Layer):
    """1×1 reduce, 3×3, 1×1 expand ×4, with a projection shortcut; ResNet-50 and up (He et al.).

    ``stride_on="3x3"`` (default) puts the stride on the 3×3 convolution, the "ResNet v1.5"
    placement of torchvision and TF Model Garden; ``"1x1"`` puts it on the first 1×1
    convolution, as in the original paper's Caffe models and ``keras.applications.ResNet50``.
    Neither changes the parameter count.
    """

    expansion = 4

    def __init__(self, filters: int, strides: int = 1, project: bool = False,
                 synchronized_bn: bool = False, stride_on: str = "3x3",
                 conv_bias: bool = False, bn_epsilon: float | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if stride_on not in STRIDE_PLACEMENTS:
            raise ValueError(f"stride_on must be one of {STRIDE_PLACEMENTS}, got {stride_on!r}")
        reduce_strides, spatial_strides = (1, strides) if stride_on == "3x3" else (strides, 1)
        out = filters * self.expansion
        self.conv1 = conv(filters, 1, reduce_strides, name="conv1", use_bias=conv_bias)
        self.bn1 = make_batch_norm(synchronized_bn, epsilon=bn_epsilon, name="bn1")
        self.conv2 = conv(filters, 3, spatial_strides, name="conv2", use_bias=conv_bias)
        self.bn2 = make_batch_norm(synchronized_bn, epsilon=bn_epsilon, name="bn2")
        self.conv3 = conv(out, 1, name="conv3", use_bias=conv_bias)
        self.bn3 = make_batch_norm(synchronized_bn, epsilon=bn_epsilon, name="bn3")
        self.shortcut_conv = (conv(out, 1, strides, name="shortcut_conv", use_bias=conv_bias)
                              if project else None)
        self.shortcut_bn = (make_batch_norm(synchronized_bn, epsilon=bn_epsilon, name="shortcut_bn")
                            if project else None)

    def call(self, x, training=None):
        shortcut = x
        if self.shortcut_conv is not None:
            shortcut = self.shortcut_bn(self.shortcut_conv(x), training=training)
        y = keras.ops.relu(self.bn1(self.conv1(x), training=training))
        y = keras.ops.relu(self.bn2(self.conv2(y), training=training))
        y = self.bn3(self.conv3(y), training=training)
        return keras.ops.relu(y + shortcut)


def _adaptive_bin_weights(input_size: tf.Tensor, output_size: int, dtype) -> tf.Tensor:
    """``[output_size, input_size]`` weights averaging rows ⌊i·n/s⌋ … ⌈(i+1)·n/s⌉ − 1 into i."""
    bins = tf.range(output_size)
    first = (bins * input_size) // output_size
    stop = ((bins + 1) * input_size + output_size - 1) // output_size
    rows = tf.range(input_size)
    member = (rows[None, :] >= first[:, None]) & (rows[None, :] < stop[:, None])
    return tf.cast(member, dtype) / tf.cast(stop - first, dtype)[:, None]


class AdaptiveAveragePooling2D(keras.layers.Layer):
    """``[b, h, w, c]`` → ``[b, s, s, c]`` average pooling over PyTorch's adaptive bins.

    Lets a fully connected trunk written for one map size (VGG's fc6 on 7×7, Simonyan &
    Zisserman 2015) take any input size: bins overlap when ``h`` is not a multiple of ``s`` and
    repeat rows when ``h < s``. A map that is already ``s × s`` passes through untouched (the
    identity at the paper's 224 px); other sizes may be dynamic (exported signatures).
    """

    def __init__(self, output_size: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.output_size = output_size

    def call(self, x):
        if x.shape[1] == self.output_size and x.shape[2] == self.output_size:
            return x
        shape = tf.shape(x)
        rows = _adaptive_bin_weights(shape[1], self.output_size, x.dtype)
        cols = _adaptive_bin_weights(shape[2], self.output_size, x.dtype)
        return tf.einsum("ih,bhwc,jw->bijc", rows, x, cols)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_size, self.output_size, input_shape[3])

    def get_config(self) -> dict:
        return {**super().get_config(), "output_size": self.output_size}


def maybe_dropout(x: tf.Tensor, rate: float, training: bool | None) -> tf.Tensor:
    """Dropout while training, identity otherwise.

    ``tf.nn.dropout`` rather than ``keras.layers.Dropout``: the Keras layer owns a seed-generator
    variable whose name carries a per-process counter, which would make checkpoint keys depend
    on how many models a process built before.
    """
    if training and rate > 0.0:
        return tf.nn.dropout(x, rate=rate)
    return x
