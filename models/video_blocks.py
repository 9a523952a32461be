"""Building blocks of the 3D ResNet family (Tran et al. 2018, "A Closer Look at Spatiotemporal
Convolutions for Action Recognition"; Hara et al. 2018, "Can Spatiotemporal 3D CNNs Retrace
the History of 2D CNNs and ImageNet?").

A "3×3×3 convolution" of a residual block comes in three forms (``CONV_KINDS``):
  * ``"3d"``: a full 3×3×3 convolution (R3D; the bottom of MCx), stride ``s`` in t, h and w.
  * ``"2d"``: a 1×3×3 convolution applied frame by frame (the top of MCx), stride 1 in time:
    a temporal stride on a kernel one frame deep would drop frames without ever seeing them.
  * ``"2plus1d"``: (2+1)D, a 1×3×3 spatial convolution to ``M`` channels, BatchNorm, ReLU and a
    3×1×1 temporal convolution (R(2+1)D, §3.5), spatial stride on the first, temporal on the
    second. ``M`` is chosen by :func:`mid_channels_2plus1d` so the pair has about the 3D
    convolution's parameters.

All convolutions are bias-free (BatchNorm follows), He-initialised, with TF "same" padding:
outputs have ``ceil(n / stride)`` positions along every axis, so a clip of any length ≥ 1
never collapses to zero (the sizes equal torchvision's symmetric padding of 1).

The blocks (and the video backbones) build their sublayers from shapes in ``build``: without
it Keras builds a subclassed layer by tracing its whole ``call`` symbolically first, which
costs seconds per network on a CPU before the first real step. Variable paths are the same
either way (Keras opens each layer's name scope around its ``build``).
"""

from __future__ import annotations

import keras

from selfsup.models.backbone import make_batch_norm
from selfsup.models.conv3d import Conv3D

CONV_KINDS = ("3d", "2d", "2plus1d")


def conv3d(filters: int, kernel_size: tuple[int, int, int] | int,
           strides: tuple[int, int, int] | int = 1, name: str | None = None,
           use_bias: bool = False) -> keras.layers.Conv3D:
    """A "same"-padded 3D convolution with He initialisation; bias-free unless ``use_bias``
    (:class:`~selfsup.models.conv3d.Conv3D`: right kernel gradients under bfloat16)."""
    return Conv3D(filters, kernel_size, strides=strides, padding="same",
                               use_bias=use_bias, kernel_initializer="he_normal", name=name)


def mid_channels_2plus1d(in_channels: int, out_channels: int, temporal: int = 3,
                         spatial: int = 3) -> int:
    """Tran et al. 2018 §3.5: ``M = ⌊t·d²·N_in·N_out / (d²·N_in + t·N_out)⌋``.

    With M channels, a d×d spatial convolution (N_in → M) followed by a t×1×1 temporal one
    (M → N_out) has ``M·(d²·N_in + t·N_out)`` ≤ ``t·d²·N_in·N_out`` weights, the weights of
    the t×d×d convolution it replaces.
    """
    return (temporal * spatial * spatial * in_channels * out_channels) // (
        spatial * spatial * in_channels + temporal * out_channels)


def shortcut_strides(kind: str, stride: int) -> tuple[int, int, int]:
    """The (t, h, w) stride of a block whose convolutions are of ``kind`` and stride ``stride``."""
    return (1, stride, stride) if kind == "2d" else (stride, stride, stride)


class SpatioTemporalConv(keras.layers.Layer):
    """One 3×3×3-receptive-field convolution: full 3D, frame-wise 2D or (2+1)D (module doc).

    ``mid_channels`` is required for ``"2plus1d"`` (the width between its spatial and temporal
    convolutions, with its own BatchNorm and ReLU) and ignored otherwise.
    """

    def __init__(self, filters: int, kind: str = "3d", stride: int = 1,
                 mid_channels: int | None = None, synchronized_bn: bool = False,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if kind not in CONV_KINDS:
            raise ValueError(f"kind must be one of {', '.join(CONV_KINDS)}, got {kind!r}")
        self.kind = kind
        self.mid_bn = None
        if kind == "3d":
            self.conv = conv3d(filters, 3, (stride, stride, stride), name="conv")
            self.temporal_conv = None
        elif kind == "2d":
            self.conv = conv3d(filters, (1, 3, 3), (1, stride, stride), name="conv")
            self.temporal_conv = None
        else:
            if mid_channels is None or mid_channels < 1:
                raise ValueError(f"(2+1)D needs mid_channels >= 1, got {mid_channels}")
            self.conv = conv3d(mid_channels, (1, 3, 3), (1, stride, stride), name="spatial_conv")
            self.mid_bn = make_batch_norm(synchronized_bn, name="mid_bn")
            self.temporal_conv = conv3d(filters, (3, 1, 1), (stride, 1, 1), name="temporal_conv")

    def build(self, input_shape) -> None:
        self.conv.build(input_shape)
        if self.temporal_conv is not None:
            shape = self.conv.compute_output_shape(input_shape)
            self.mid_bn.build(shape)
            self.temporal_conv.build(shape)

    def compute_output_shape(self, input_shape):
        shape = self.conv.compute_output_shape(input_shape)
        if self.temporal_conv is not None:
            shape = self.temporal_conv.compute_output_shape(shape)
        return shape

    def call(self, x, training=None):
        x = self.conv(x)
        if self.temporal_conv is not None:
            x = keras.ops.relu(self.mid_bn(x, training=training))
            x = self.temporal_conv(x)
        return x


class VideoBasicBlock(keras.layers.Layer):
    """The basic residual block (He et al. 2016) with spatiotemporal convolutions (Tran et al.
    2018): conv → BN → ReLU → conv → BN, plus an identity or 1×1×1 conv + BN projection
    shortcut, then ReLU. ``mid_channels`` gives the (2+1)D widths of its two convolutions.
    """

    def __init__(self, filters: int, kind: str = "3d", stride: int = 1, project: bool = False,
                 mid_channels: tuple[int, int] | None = None, synchronized_bn: bool = False,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        first_mid, second_mid = mid_channels if mid_channels is not None else (None, None)
        self.conv1 = SpatioTemporalConv(filters, kind, stride, first_mid, synchronized_bn,
                                        name="conv1")
        self.bn1 = make_batch_norm(synchronized_bn, name="bn1")
        self.conv2 = SpatioTemporalConv(filters, kind, 1, second_mid, synchronized_bn,
                                        name="conv2")
        self.bn2 = make_batch_norm(synchronized_bn, name="bn2")
        self.shortcut_conv = self.shortcut_bn = None
        if project:
            self.shortcut_conv = conv3d(filters, 1, shortcut_strides(kind, stride),
                                        name="shortcut_conv")
            self.shortcut_bn = make_batch_norm(synchronized_bn, name="shortcut_bn")

    def build(self, input_shape) -> None:
        if self.shortcut_conv is not None:
            self.shortcut_conv.build(input_shape)
            self.shortcut_bn.build(self.shortcut_conv.compute_output_shape(input_shape))
        self.conv1.build(input_shape)
        shape = self.conv1.compute_output_shape(input_shape)
        self.bn1.build(shape)
        self.conv2.build(shape)
        self.bn2.build(self.conv2.compute_output_shape(shape))

    def compute_output_shape(self, input_shape):
        return self.conv2.compute_output_shape(self.conv1.compute_output_shape(input_shape))

    def call(self, x, training=None):
        shortcut = x
        if self.shortcut_conv is not None:
            shortcut = self.shortcut_bn(self.shortcut_conv(x), training=training)
        y = keras.ops.relu(self.bn1(self.conv1(x, training=training), training=training))
        y = self.bn2(self.conv2(y, training=training), training=training)
        return keras.ops.relu(y + shortcut)
