"""AlexNet and GoogLeNet: the papers' parameter counts, endpoints and their specs, own layers.

Every expected count below is written out from the papers (Krizhevsky et al. 2012 §3.5;
Szegedy et al. 2015 Table 1) as weights + biases per layer, independently of the model code.
The task head is a 1000-way Dense on "pool" (for AlexNet "pool" is fc7, so this is fc8).
"""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from selfsup.models import FEATURE_ENDPOINT, build_backbone
from selfsup.models.alexnet import GroupedConv2D, LocalResponseNormalization
from selfsup.models.backbone import variable_map
from selfsup.models.blocks import AdaptiveAveragePooling2D

HEAD = 4096 * 1000 + 1000  # AlexNet's fc8
GOOGLENET_HEAD = 1024 * 1000 + 1000


@functools.cache
def _built(name: str, size: int, groups: int | None = None):
    """A built backbone and its outputs on 2 seeded images (at inference), cached: creating
    AlexNet's 57M variables takes seconds. No test may depend on another's use of a model."""
    kwargs = {} if groups is None else {"groups": groups}
    model = build_backbone(name, input_size=size, **kwargs)
    images = np.random.default_rng(0).random((2, size, size, 3)).astype(np.float32)
    return model, model(images, training=False)


def _trainable_per_layer(model) -> dict[str, int]:
    """Trainable parameters per top-level layer of ``model`` (keyed by the layer's name)."""
    counts: dict[str, int] = {}
    for key, variable in variable_map(model).items():
        if variable.trainable:
            layer = key.split("/")[0]
            counts[layer] = counts.get(layer, 0) + int(np.prod(variable.shape))
    return counts


def test_alexnet_has_the_papers_60_million_parameters():
    model, _ = _built("alexnet", 224)
    # §3.5: conv2, conv4 and conv5 only see the 48 / 192 / 192 kernel maps on their own GPU.
    expected = {
        "conv1": 11 * 11 * 3 * 96 + 96,       # 34,944
        "conv2": 5 * 5 * 48 * 256 + 256,      # 307,456
        "conv3": 3 * 3 * 256 * 384 + 384,     # 885,120 (sees both GPUs)
        "conv4": 3 * 3 * 192 * 384 + 384,     # 663,936
        "conv5": 3 * 3 * 192 * 256 + 256,     # 442,624
        "fc6": 6 * 6 * 256 * 4096 + 4096,     # 37,752,832
        "fc7": 4096 * 4096 + 4096,            # 16,781,312
    }
    assert _trainable_per_layer(model) == expected
    # Caffe's bvlc_alexnet count; the paper rounds it to "60 million".
    assert sum(expected.values()) + HEAD == 60_965_224


def test_single_tower_alexnet_has_the_surveys_62_4_million_parameters():
    model, _ = _built("alexnet", 224, groups=1)
    expected = {
        "conv1": 11 * 11 * 3 * 96 + 96,
        "conv2": 5 * 5 * 96 * 256 + 256,
        "conv3": 3 * 3 * 256 * 384 + 384,
        "conv4": 3 * 3 * 384 * 384 + 384,
        "conv5": 3 * 3 * 384 * 256 + 256,
        "fc6": 6 * 6 * 256 * 4096 + 4096,
        "fc7": 4096 * 4096 + 4096,
    }
    assert _trainable_per_layer(model) == expected
    assert sum(expected.values()) + HEAD == 62_378_344  # Jing & Tian: "62.4 million"


def test_alexnet_bn_counts_batch_norm_scales_and_offsets_instead_of_biases():
    model, _ = _built("alexnet_bn", 224)
    expected = {
        "conv1": 11 * 11 * 3 * 96, "conv1_bn": 2 * 96,
        "conv2": 5 * 5 * 96 * 256, "conv2_bn": 2 * 256,
        "conv3": 3 * 3 * 256 * 384, "conv3_bn": 2 * 384,
        "conv4": 3 * 3 * 384 * 384, "conv4_bn": 2 * 384,
        "conv5": 3 * 3 * 384 * 256, "conv5_bn": 2 * 256,
        "fc6": 6 * 6 * 256 * 4096, "fc6_bn": 2 * 4096,
        "fc7": 4096 * 4096, "fc7_bn": 2 * 4096,
    }
    assert _trainable_per_layer(model) == expected
    assert sum(expected.values()) + HEAD == 62_387_912


# Szegedy et al. 2015 Table 1, restated: input channels, #1×1, #3×3 reduce, #3×3, #5×5 reduce,
# #5×5, pool proj.
TABLE_1 = {
    "inception_3a": (192, 64, 96, 128, 16, 32, 32),
    "inception_3b": (256, 128, 128, 192, 32, 96, 64),
    "inception_4a": (480, 192, 96, 208, 16, 48, 64),
    "inception_4b": (512, 160, 112, 224, 24, 64, 64),
    "inception_4c": (512, 128, 128, 256, 24, 64, 64),
    "inception_4d": (512, 112, 144, 288, 32, 64, 64),
    "inception_4e": (528, 256, 160, 320, 32, 128, 128),
    "inception_5a": (832, 256, 160, 320, 32, 128, 128),
    "inception_5b": (832, 384, 192, 384, 48, 128, 128),
}


def _inception_parameters(c, n1, r3, n3, r5, n5, proj, batch_norm):
    weights = c * n1 + c * r3 + 3 * 3 * r3 * n3 + c * r5 + 5 * 5 * r5 * n5 + c * proj
    units = n1 + r3 + n3 + r5 + n5 + proj
    return weights + (2 * units if batch_norm else units)  # BN: γ and β; else: biases


@pytest.mark.parametrize(("name", "batch_norm", "total"),
                         [("googlenet", False, 6_998_552), ("googlenet_bn", True, 7_005_832)])
def test_googlenet_matches_table_1(name, batch_norm, total):
    model, _ = _built(name, 224)
    per_unit = 2 if batch_norm else 1
    expected = {
        "conv1": 7 * 7 * 3 * 64 + per_unit * 64,
        "conv2_reduce": 64 * 64 + per_unit * 64,
        "conv2": 3 * 3 * 64 * 192 + per_unit * 192,
    }
    for module, row in TABLE_1.items():
        expected[module] = _inception_parameters(*row, batch_norm=batch_norm)
    assert _trainable_per_layer(model) == expected
    assert sum(expected.values()) + GOOGLENET_HEAD == total
    # The restated inputs chain: each module's input is the previous one's concatenated output.
    rows = list(TABLE_1.values())
    for previous, row in zip(rows, rows[1:], strict=False):
        assert row[0] == previous[1] + previous[3] + previous[5] + previous[6]


def test_googlenet_bn_differs_from_torchvision_only_by_its_real_5x5_kernels():
    # torchvision's googlenet (BN, no aux heads) has 6,624,904 parameters but uses 3×3 kernels
    # in the "5×5" branch: 16 fewer weights per (reduce, output) channel pair.
    kernel_difference = sum((5 * 5 - 3 * 3) * row[4] * row[5] for row in TABLE_1.values())
    assert 7_005_832 - kernel_difference == 6_624_904


ALEXNET_224 = {"conv1": (56, 56, 96), "conv2": (27, 27, 256), "conv3": (13, 13, 384),
               "conv4": (13, 13, 384), "conv5": (13, 13, 256), "fc6": (4096,), "fc7": (4096,),
               "pool": (4096,)}
ALEXNET_28 = {"conv1": (28, 28, 96), "conv2": (14, 14, 256), "conv3": (7, 7, 384),
              "conv4": (7, 7, 384), "conv5": (7, 7, 256), "fc6": (4096,), "fc7": (4096,),
              "pool": (4096,)}
GOOGLENET_224 = {"stem": (56, 56, 192), "inception3": (28, 28, 480),
                 "inception4": (14, 14, 832), "inception5": (7, 7, 1024), "pool": (1024,)}
GOOGLENET_28 = {"stem": (28, 28, 192), "inception3": (14, 14, 480), "inception4": (7, 7, 832),
                "inception5": (4, 4, 1024), "pool": (1024,)}


@pytest.mark.parametrize(("name", "size", "expected"), [
    ("alexnet", 224, ALEXNET_224), ("alexnet_bn", 224, ALEXNET_224),
    ("alexnet", 28, ALEXNET_28), ("alexnet_bn", 28, ALEXNET_28),
    ("googlenet", 224, GOOGLENET_224), ("googlenet_bn", 224, GOOGLENET_224),
    ("googlenet", 28, GOOGLENET_28), ("googlenet_bn", 28, GOOGLENET_28),
])
def test_endpoints_in_order_with_their_shapes_and_specs(name, size, expected):
    model, outputs = _built(name, size)
    assert list(outputs) == list(expected)
    assert list(outputs)[-1] == FEATURE_ENDPOINT
    assert {k: tuple(v.shape) for k, v in outputs.items()} == {
        k: (2, *shape) for k, shape in expected.items()}
    assert model.output_specs((None, size, size, 3)) == {
        k: (None, *shape) for k, shape in expected.items()}


def test_alexnet_pool_is_fc7_and_googlenet_pool_averages_inception5():
    _, alex = _built("alexnet", 28)
    np.testing.assert_array_equal(alex["pool"], alex["fc7"])
    _, google = _built("googlenet", 28)
    np.testing.assert_allclose(google["pool"], np.mean(google["inception5"], axis=(1, 2)),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["alexnet", "alexnet_bn", "googlenet", "googlenet_bn"])
def test_unknown_keyword_arguments_fail(name):
    with pytest.raises((TypeError, ValueError), match="depth"):
        build_backbone(name, input_size=28, depth=18)


def test_alexnet_takes_any_image_size_through_a_dynamic_signature():
    # The exporter traces with [None, None, None, 3]; the 6×6 grid before fc6 must adapt at run
    # time. (GoogLeNet ends in a global average, which needs nothing of the kind.)
    model, _ = _built("alexnet", 224)
    features = tf.function(lambda images: model(images, training=False)[FEATURE_ENDPOINT],
                           input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    assert features(tf.zeros([1, 96, 72, 3])).shape == (1, 4096)
    assert features(tf.zeros([2, 130, 130, 3])).shape == (2, 4096)


def test_alexnet_imagenet_stem_rejects_inputs_it_would_shrink_to_nothing():
    with pytest.raises(ValueError, match="at least 57 px"):
        build_backbone("alexnet", input_size=32, stem="imagenet")
    model, _ = _built("alexnet", 224)
    with pytest.raises(ValueError, match="at least 57 px"):
        model(np.zeros((1, 56, 56, 3), np.float32))
    assert model(np.zeros((1, 57, 57, 3), np.float32))["conv5"].shape == (1, 3, 3, 256)


@pytest.mark.parametrize("name", ["alexnet_bn", "googlenet_bn"])
def test_a_head_on_pool_trains_every_variable(name):
    model, _ = _built(name, 28)
    head = keras.layers.Dense(4)
    images = tf.random.stateless_uniform([4, 28, 28, 3], seed=[1, 2])
    with tf.GradientTape() as tape:
        logits = head(model(images, training=True)[FEATURE_ENDPOINT])
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
            tf.constant([0, 1, 2, 3]), logits, from_logits=True))
    gradients = tape.gradient(loss, model.trainable_variables)
    missing = [v.path for v, g in zip(model.trainable_variables, gradients, strict=True)
               if g is None or not np.any(g.numpy())]
    assert not missing


@pytest.mark.parametrize("name", ["alexnet_bn", "googlenet_bn", "alexnet", "googlenet"])
def test_synchronized_bn_reaches_every_batch_norm(name):
    model = build_backbone(name, input_size=28, synchronized_bn=True)
    norms = [layer for layer in model._flatten_layers()
             if isinstance(layer, keras.layers.BatchNormalization)]
    assert all(layer.synchronized for layer in norms)
    assert len(norms) == {"alexnet_bn": 7, "googlenet_bn": 3 + 6 * 9}.get(name, 0)


def test_grouped_convolution_matches_keras_grouped_conv2d():
    x = tf.random.stateless_normal([2, 9, 9, 8], seed=[3, 4])
    ours = GroupedConv2D(6, 3, padding="same", groups=2)
    reference = keras.layers.Conv2D(6, 3, padding="same", groups=2)
    ours.build(x.shape)
    reference.build(x.shape)
    kernel = tf.random.stateless_normal(reference.kernel.shape, seed=[5, 6])
    for layer in (ours, reference):
        layer.kernel.assign(kernel)
        layer.bias.assign(tf.range(6, dtype=tf.float32))
    assert tuple(ours.kernel.shape) == (3, 3, 4, 6)
    np.testing.assert_allclose(ours(x), reference(x), rtol=1e-5, atol=1e-5)
    # Group 0's outputs must not depend on group 1's inputs.
    shifted = tf.concat([x[..., :4], x[..., 4:] + 1.0], axis=-1)
    np.testing.assert_allclose(ours(shifted)[..., :3], ours(x)[..., :3], rtol=1e-6)


def test_local_response_normalization_is_the_papers_formula():
    a = np.random.default_rng(1).normal(size=(2, 3, 3, 7)).astype(np.float32) * 20
    b = np.empty_like(a)
    k, n, alpha, beta = 2.0, 5, 1e-4, 0.75  # §3.3
    for i in range(a.shape[-1]):
        lo, hi = max(0, i - n // 2), min(a.shape[-1] - 1, i + n // 2)
        b[..., i] = a[..., i] / (k + alpha * np.sum(a[..., lo:hi + 1] ** 2, axis=-1)) ** beta
    np.testing.assert_allclose(LocalResponseNormalization()(a), b, rtol=1e-5)


@pytest.mark.parametrize(("height", "width"), [(6, 6), (13, 13), (4, 9), (1, 2)])
def test_adaptive_average_pooling_matches_pytorch_bins(height, width):
    x = np.random.default_rng(2).random((2, height, width, 3)).astype(np.float32)
    expected = np.empty((2, 6, 6, 3), np.float32)
    for i in range(6):
        for j in range(6):
            r0, r1 = (i * height) // 6, -((-(i + 1) * height) // 6)
            c0, c1 = (j * width) // 6, -((-(j + 1) * width) // 6)
            expected[:, i, j] = x[:, r0:r1, c0:c1].mean(axis=(1, 2))
    np.testing.assert_allclose(AdaptiveAveragePooling2D(6)(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("name", "size"), [("alexnet_bn", 28), ("googlenet", 224)])
def test_config_round_trips(name, size):
    model, _ = _built(name, size)
    config = model.get_config()
    assert type(model).from_config(config).get_config() == config
