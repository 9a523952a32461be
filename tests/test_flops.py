"""The FLOP counter of benchmarks/backbones.py against hand-worked counts and published figures.

Convention: FLOPs = 2 × multiply-adds of convolutions and matrix products; biases and other
elementwise ops are not counted.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import keras
import pytest
import tensorflow as tf

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "backbones.py"
_spec = importlib.util.spec_from_file_location("benchmark_backbones", _PATH)
bench = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bench  # dataclasses look their module up here
_spec.loader.exec_module(bench)


def _model_flops(layers: list[keras.layers.Layer], input_shape: tuple[int, ...]):
    model = keras.Sequential([keras.Input(input_shape), *layers])
    return bench.count_flops(lambda x: model(x, training=False), (1, *input_shape))


def test_conv_and_dense_by_hand():
    # Input 8×8×3.
    # Conv2D(4, 3×3, 'same', bias): 8·8·4 = 256 outputs, each 3·3·3 = 27 multiply-adds → 6,912.
    # Conv2D(8, 3×3, stride 2, 'valid'): floor((8 − 3) / 2) + 1 = 3 → 3·3·8 = 72 outputs, each
    #   3·3·4 = 36 multiply-adds → 2,592.
    # GlobalAveragePooling2D (not counted) → 8 features; Dense(10): 8·10 = 80 multiply-adds.
    # Total 6,912 + 2,592 + 80 = 9,584 multiply-adds = 19,168 FLOPs.
    count = _model_flops([
        keras.layers.Conv2D(4, 3, padding="same"),
        keras.layers.ReLU(),
        keras.layers.Conv2D(8, 3, strides=2, padding="valid"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10),
    ], (8, 8, 3))
    assert count.by_op == {"Conv2D": 6_912 + 2_592, "MatMul": 80}
    assert count.multiply_adds == 9_584
    assert count.flops == 19_168


def test_count_is_per_traced_batch():
    layers = [keras.layers.Conv2D(4, 3, padding="same")]
    model = keras.Sequential([keras.Input((8, 8, 3)), *layers])
    one = bench.count_flops(lambda x: model(x), (1, 8, 8, 3))
    five = bench.count_flops(lambda x: model(x), (5, 8, 8, 3))
    assert five.multiply_adds == 5 * one.multiply_adds == 5 * 6_912


def test_depthwise_grouped_and_transposed_conv_by_hand():
    # Input 8×8×4.
    # DepthwiseConv2D(3×3, multiplier 2, 'same'): 8·8·8 = 512 outputs, each 3·3 = 9 → 4,608.
    # Conv2D(8, 3×3, groups 2, 'same'): 512 outputs, each 3·3·(8/2 = 4 inputs per group) = 36
    #   → 18,432 (Keras runs grouped convolutions in a nested function on a CPU).
    # Conv2DTranspose(2, 2×2, stride 2): each of the 8·8·8 = 512 input values scatters into
    #   2·2·2 = 8 outputs → 4,096 (= the 16·16·2 outputs × 2·2·8 / 4 taps that hit them).
    count = _model_flops([
        keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same"),
        keras.layers.Conv2D(8, 3, groups=2, padding="same"),
        keras.layers.Conv2DTranspose(2, 2, strides=2),
    ], (8, 8, 4))
    assert count.by_op == {"DepthwiseConv2dNative": 4_608, "Conv2D": 18_432,
                           "Conv2DBackpropInput": 4_096}


def test_dense_on_sequence_and_transposed_matmul():
    # Dense(6) on [1, 4, 5]: 4 positions × 5 inputs × 6 outputs = 120 multiply-adds.
    count = _model_flops([keras.layers.Dense(6)], (4, 5))
    assert count.multiply_adds == 120
    # [3, 7]ᵀ @ [3, 2] → [7, 2], contracted over 3: 7·2·3 = 42.
    b = tf.ones([3, 2])
    count = bench.count_flops(lambda a: tf.matmul(a, b, transpose_a=True), (3, 7))
    assert count.by_op == {"MatMul": 42}


def test_einsum_by_hand():
    # "bi,ij->bj" on [2, 5] × [5, 3]: every (b, i, j) is one multiply-add, 2·5·3 = 30.
    w = tf.ones([5, 3])
    assert bench.count_flops(lambda x: tf.einsum("bi,ij->bj", x, w), (2, 5)).multiply_adds == 30
    # With "...": [4, 2, 5] × [5, 3] → 4·2·5·3 = 120; a one-operand einsum multiplies nothing.
    count = bench.count_flops(lambda x: tf.einsum("...i,ij->...j", x, w), (4, 2, 5))
    assert count.multiply_adds == 120
    assert bench.count_flops(lambda x: tf.einsum("ij->j", x), (4, 5)).multiply_adds == 0


def test_three_operand_einsum_with_dynamic_weights():
    # Adaptive average pooling as in models/blocks.py: rows [3, h] and cols [3, w] built from
    # tf.shape (statically [3, None]); TF splits "ih,bhwc,jw->bijc" on x [1, 6, 4, 2] into
    # "ih,bhwc->biwc" (3·1·6·4·2 = 144) and "biwc,jw->bijc" (1·3·4·2·3 = 72): 216.
    def pool(x):
        shape = tf.shape(x)
        rows = tf.ones(tf.stack([3, shape[1]]))
        cols = tf.ones(tf.stack([3, shape[2]]))
        return tf.einsum("ih,bhwc,jw->bijc", rows, x, cols)

    count = bench.count_flops(pool, (1, 6, 4, 2))
    assert count.by_op == {"Einsum": 216}


def test_agrees_with_tensorflow_profiler_on_bias_free_convolutions():
    # The profiler also counts elementwise ops; without biases both count only the products.
    model = keras.Sequential([keras.Input((16, 16, 3)),
                              keras.layers.Conv2D(8, 3, strides=2, use_bias=False),
                              keras.layers.Conv2D(4, 1, use_bias=False)])
    graph = bench.trace(lambda x: model(x), (1, 16, 16, 3)).graph
    assert bench.tf_profiler_flops(graph) == bench.graph_multiply_adds(graph).flops > 0


def test_refuses_what_it_cannot_count():
    w = tf.ones([5, 5])
    with pytest.raises(bench.UncountedOpError, match="While"):  # a loop hides its trip count
        bench.count_flops(lambda x: tf.while_loop(lambda i, y: i < 3,
                                                  lambda i, y: (i + 1, tf.matmul(y, w)),
                                                  (0, x))[1], (2, 5))
    with pytest.raises(bench.UncountedOpError, match="unknown shape"):
        bench.count_flops(lambda x: tf.matmul(x, w), (None, 5))


@pytest.mark.parametrize("name, size, multiply_adds, parameters", [
    # torchvision's published figures (1.81 / 4.09 G multiply-adds, 11.69 / 25.56 M params)
    # minus the 1000-way classifier (512·1000 / 2048·1000 multiply-adds, weights + biases).
    ("resnet18", 224, 1.814e9, 11.690e6 - 513_000),
    pytest.param("resnet50", 224, 4.087e9, 25.557e6 - 2_049_000, marks=pytest.mark.slow),
])
def test_resnets_match_published_figures(name, size, multiply_adds, parameters):
    from selfsup.models import build_backbone

    model = build_backbone(name, input_size=size)
    count = bench.count_flops(lambda x: model(x, training=False), (1, size, size, 3))
    assert count.multiply_adds == pytest.approx(multiply_adds, rel=2e-3)
    assert bench.trainable_parameters(model) == pytest.approx(parameters, rel=1e-3)
