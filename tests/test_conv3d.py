"""Conv3D under bfloat16: gradients agree with a float32 reference; float32 is Keras' Conv3D."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from selfsup.models.conv3d import Conv3D


def _gradients(layer, inputs, upstream):
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        outputs = layer(inputs)
        loss = tf.reduce_sum(tf.cast(outputs, tf.float32) * upstream)
    input_gradient, kernel_gradient = tape.gradient(loss, [inputs, layer.kernel])
    return outputs, input_gradient, kernel_gradient


@pytest.mark.parametrize("strides", [1, 2])
def test_bfloat16_gradients_match_a_float32_reference(strides):
    rng = np.random.default_rng(0)
    # The shape where TF's own bfloat16 kernel gradient came out NaN (models/conv3d.py); Keras'
    # Conv3D fails this test at stride 1.
    inputs = tf.constant(rng.normal(size=(48, 2, 4, 4, 32)), tf.float32)
    reference = keras.layers.Conv3D(32, 3, strides=strides, padding="same", use_bias=False)
    layer = Conv3D(32, 3, strides=strides, padding="same", use_bias=False, dtype="mixed_bfloat16")
    reference.build(inputs.shape)
    layer.build(inputs.shape)
    # bfloat16-representable weights and inputs, so only the arithmetic differs.
    weights = tf.cast(tf.cast(reference.kernel, tf.bfloat16), tf.float32)
    reference.kernel.assign(weights)
    layer.kernel.assign(weights)
    inputs = tf.cast(tf.cast(inputs, tf.bfloat16), tf.float32)
    output_shape = reference(inputs).shape
    upstream = tf.constant(rng.normal(size=output_shape), tf.float32)

    expected = [t.numpy() for t in _gradients(reference, inputs, upstream)]
    outputs, input_gradient, kernel_gradient = _gradients(layer, inputs, upstream)
    assert outputs.dtype == tf.bfloat16
    for got, want in zip([outputs, input_gradient, kernel_gradient], expected, strict=True):
        got = tf.cast(got, tf.float32).numpy()
        assert np.all(np.isfinite(got))
        # bfloat16 keeps 8 bits of mantissa: a few parts in a hundred of the tensor's scale.
        assert np.abs(got - want).max() <= 0.03 * np.abs(want).max()


def test_float32_is_keras_conv3d_exactly():
    rng = np.random.default_rng(1)
    inputs = tf.constant(rng.normal(size=(2, 3, 5, 5, 4)), tf.float32)
    reference = keras.layers.Conv3D(6, (1, 3, 3), strides=(1, 2, 2), padding="same")
    layer = Conv3D(6, (1, 3, 3), strides=(1, 2, 2), padding="same")
    reference.build(inputs.shape)
    layer.build(inputs.shape)
    for target, source in zip(layer.weights, reference.weights, strict=True):
        target.assign(source)
    upstream = tf.constant(rng.normal(size=reference(inputs).shape), tf.float32)
    for got, want in zip(_gradients(layer, inputs, upstream),
                         _gradients(reference, inputs, upstream), strict=True):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
