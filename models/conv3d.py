"""A Keras ``Conv3D`` whose kernel gradient is computed in float32 when it runs in bfloat16.

TensorFlow 2.21's CPU kernel ``Conv3DBackpropFilterV2`` for bfloat16 returns wrong values on
this project's machines (AMD EPYC with AVX512_BF16, oneDNN on): on a ``[48, 2, 4, 4, 32]`` input
with a 3×3×3×32×32 kernel, 18 of 20 calls returned NaN and the other two were off by more than
the gradient's own scale, while the float32 kernel and the bfloat16 input gradient
(``Conv3DBackpropInputV2``) are right. Under ``mixed_bfloat16`` every video backbone therefore
diverged at its first steps (VCOP: NaN at step 3).

:class:`Conv3D` keeps the forward convolution and the input gradient in the compute dtype and
computes only the kernel gradient from float32 copies of the input and of the incoming gradient
(the op that is broken), casting the result back. In float32 it is exactly Keras' ``Conv3D``:
same variables, same checkpoints, same outputs.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def _as_tf_list(values, ones: int = 1) -> list[int]:
    """Keras' per-axis ``(t, h, w)`` → TF's 5-D ``[1, t, h, w, 1]`` (channels last)."""
    return [ones, *values, ones]


def conv3d_with_float32_kernel_gradient(inputs: tf.Tensor, kernel: tf.Tensor, strides: list[int],
                                        padding: str, dilations: list[int]) -> tf.Tensor:
    """``tf.nn.conv3d`` whose kernel gradient is computed in float32 (see the module docstring).

    ``strides`` and ``dilations`` are TF's 5-D lists, ``padding`` is "SAME" or "VALID".
    """

    @tf.custom_gradient
    def convolve(x, w):
        y = tf.nn.conv3d(x, w, strides=strides, padding=padding, dilations=dilations)

        def gradient(dy):
            dx = tf.raw_ops.Conv3DBackpropInputV2(
                input_sizes=tf.shape(x), filter=w, out_backprop=dy, strides=strides,
                padding=padding, dilations=dilations)
            dw = tf.raw_ops.Conv3DBackpropFilterV2(
                input=tf.cast(x, tf.float32), filter_sizes=tf.shape(w),
                out_backprop=tf.cast(dy, tf.float32), strides=strides, padding=padding,
                dilations=dilations)
            return dx, tf.cast(dw, w.dtype)

        return y, gradient

    # A tensor, not the variable: custom_gradient then differentiates through the cast to it.
    return convolve(inputs, tf.cast(kernel, inputs.dtype))


class Conv3D(keras.layers.Conv3D):
    """Keras' ``Conv3D`` (channels last), with the float32 kernel gradient under bfloat16."""

    def convolution_op(self, inputs, kernel):
        if inputs.dtype != tf.bfloat16 or self.data_format != "channels_last":
            return super().convolution_op(inputs, kernel)
        return conv3d_with_float32_kernel_gradient(
            inputs, kernel, strides=_as_tf_list(self.strides),
            padding=self.padding.upper(), dilations=_as_tf_list(self.dilation_rate))
