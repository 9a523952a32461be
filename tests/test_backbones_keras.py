"""VGG16, ResNet50 and DenseNet121 against keras.applications: the same parameter counts, and
Keras' weights copied layer by layer give the same logits; endpoint names and shapes at 32 and
224 px, and ``output_specs`` equal to the shapes a call returns; the adaptive pooling that lets
VGG's fc6 take any input size, against a numpy loop.

Both networks see the same tensor: ours takes [0, 1] images and rescales them to [-1, 1]
inside, so the Keras network is fed the rescaled images.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

import keras
import numpy as np
import pytest

from selfsup.models import build_backbone, densenet, resnet
from selfsup.models.blocks import AdaptiveAveragePooling2D

NUM_CLASSES = 1000
LOGIT_TOLERANCE = 1e-4

# (keras.applications network, our layout options for it)
REFERENCES = {
    "vgg16": (keras.applications.VGG16, {}),
    "resnet50": (keras.applications.ResNet50, resnet.KERAS_APPLICATIONS_LAYOUT),
    "densenet121": (keras.applications.DenseNet121, densenet.KERAS_APPLICATIONS_LAYOUT),
}

# Endpoint shapes without the batch axis, written out from the papers' tables: VGG16 halves the
# map in each of its five blocks (the small layout skips block4's and block5's pools, and its
# trunk is 512 wide); ResNet-50's stages end with 256 … 2048 channels at strides 4 … 32 (the
# small stem keeps stride 1); DenseNet-121's blocks end with 64 + 6·32 = 256, 128 + 12·32 = 512,
# 256 + 24·32 = 1024 and 512 + 16·32 = 1024 channels.
ENDPOINT_SHAPES = {
    ("vgg16", 224): {"block1": (112, 112, 64), "block2": (56, 56, 128), "block3": (28, 28, 256),
                     "block4": (14, 14, 512), "block5": (7, 7, 512), "fc6": (4096,),
                     "fc7": (4096,), "pool": (4096,)},
    ("vgg16", 32): {"block1": (16, 16, 64), "block2": (8, 8, 128), "block3": (4, 4, 256),
                    "block4": (4, 4, 512), "block5": (4, 4, 512), "fc6": (512,),
                    "fc7": (512,), "pool": (512,)},
    ("resnet50", 224): {"stem": (56, 56, 64), "res2": (56, 56, 256), "res3": (28, 28, 512),
                        "res4": (14, 14, 1024), "res5": (7, 7, 2048), "pool": (2048,)},
    ("resnet50", 32): {"stem": (32, 32, 64), "res2": (32, 32, 256), "res3": (16, 16, 512),
                       "res4": (8, 8, 1024), "res5": (4, 4, 2048), "pool": (2048,)},
    ("densenet121", 224): {"dense1": (56, 56, 256), "dense2": (28, 28, 512),
                           "dense3": (14, 14, 1024), "dense4": (7, 7, 1024), "pool": (1024,)},
    ("densenet121", 32): {"dense1": (32, 32, 256), "dense2": (16, 16, 512),
                          "dense3": (8, 8, 1024), "dense4": (4, 4, 1024), "pool": (1024,)},
}


def _vgg_layer_pairs(ours: keras.Model) -> list[tuple[str, keras.layers.Layer]]:
    pairs = [(f"block{b + 1}_conv{i + 1}", conv)
             for b, convs in enumerate(ours.convs) for i, conv in enumerate(convs)]
    return pairs + [("fc1", ours.fc6), ("fc2", ours.fc7)]


def _resnet_layer_pairs(ours: keras.Model) -> list[tuple[str, keras.layers.Layer]]:
    pairs = [("conv1_conv", ours.stem_conv), ("conv1_bn", ours.stem_bn)]
    for s, stage in enumerate(ours.stages):
        for b, block in enumerate(stage):
            prefix = f"conv{s + 2}_block{b + 1}"
            pairs += [(f"{prefix}_1_conv", block.conv1), (f"{prefix}_1_bn", block.bn1),
                      (f"{prefix}_2_conv", block.conv2), (f"{prefix}_2_bn", block.bn2),
                      (f"{prefix}_3_conv", block.conv3), (f"{prefix}_3_bn", block.bn3)]
            if block.shortcut_conv is not None:
                pairs += [(f"{prefix}_0_conv", block.shortcut_conv),
                          (f"{prefix}_0_bn", block.shortcut_bn)]
    return pairs


def _densenet_layer_pairs(ours: keras.Model) -> list[tuple[str, keras.layers.Layer]]:
    pairs = [("conv1_conv", ours.stem_conv), ("conv1_bn", ours.stem_bn)]
    for b, layers in enumerate(ours.blocks):
        for i, layer in enumerate(layers):
            prefix = f"conv{b + 2}_block{i + 1}"
            pairs += [(f"{prefix}_0_bn", layer.bn1), (f"{prefix}_1_conv", layer.conv1),
                      (f"{prefix}_1_bn", layer.bn2), (f"{prefix}_2_conv", layer.conv2)]
        if b < len(ours.transitions):
            transition = ours.transitions[b]
            pairs += [(f"pool{b + 2}_bn", transition.bn), (f"pool{b + 2}_conv", transition.conv)]
    return pairs + [("bn", ours.final_bn)]


LAYER_PAIRS: dict[str, Callable[[keras.Model], list[tuple[str, keras.layers.Layer]]]] = {
    "vgg16": _vgg_layer_pairs, "resnet50": _resnet_layer_pairs,
    "densenet121": _densenet_layer_pairs,
}


def _parameters(weights) -> int:
    return sum(int(np.prod(w.shape)) for w in weights)


def _randomise(model: keras.Model, rng: np.random.Generator) -> None:
    """Gives every variable informative values, so a wrong copy changes the logits.

    Biases and BatchNorm variables start as constants (a swapped bias or statistic would not
    show); kernels are rescaled from Glorot to He variance (Keras' default Glorot init shrinks a
    plain ReLU net's signal by about 2× per layer, which would hide VGG's early layers).
    """
    for variable in model.weights:
        shape = tuple(variable.shape)
        if variable.name == "kernel":
            receptive_field = int(np.prod(shape[:-2]))
            fan_in, fan_out = receptive_field * shape[-2], receptive_field * shape[-1]
            variable.assign(variable.numpy() * np.sqrt((fan_in + fan_out) / fan_in))
        elif variable.name == "moving_variance":
            variable.assign(rng.uniform(0.5, 2.0, shape).astype(np.float32))
        elif variable.name == "gamma":
            variable.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32))
        elif variable.name == "bias":
            # Small: thirteen layers of larger biases drown VGG's input in a constant.
            variable.assign(rng.normal(0.0, 0.01, shape).astype(np.float32))
        else:  # beta, moving_mean
            variable.assign(rng.normal(0.0, 0.1, shape).astype(np.float32))


def _copy_weights(reference: keras.Model,
                  pairs: list[tuple[str, keras.layers.Layer]]) -> list[keras.Variable]:
    """Assigns each Keras layer's weights to its counterpart; returns our variables written.

    Fails if a shape differs, a weight is used twice, or a Keras weight is left over.
    """
    read, written = set(), []
    for keras_name, layer in pairs:
        theirs = reference.get_layer(keras_name).weights
        ours = layer.weights
        assert [tuple(w.shape) for w in theirs] == [tuple(w.shape) for w in ours], keras_name
        for source, target in zip(theirs, ours, strict=True):
            assert id(source) not in read, f"{source.path} copied twice"
            assert all(target is not w for w in written), f"{target.path} written twice"
            read.add(id(source))
            target.assign(source)
            written.append(target)
    unread = [w.path for w in reference.weights if id(w) not in read]
    assert not unread, f"Keras weights without a counterpart: {unread}"
    return written


def _test_images(rng: np.random.Generator, size: int) -> np.ndarray:
    """Two [0, 1] images with content at every scale (blocky 8×8 colours plus pixel noise):
    i.i.d. pixel noise alone would look alike to the deep layers of every network."""
    coarse = np.kron(rng.random((2, 8, 8, 3)), np.ones((1, size // 8, size // 8, 1)))
    return (0.8 * coarse + 0.2 * rng.random((2, size, size, 3))).astype(np.float32)


def _shapes(endpoints: dict) -> dict[str, tuple]:
    return {name: tuple(value.shape[1:]) for name, value in endpoints.items()}


def _assert_specs_match(model: keras.Model, endpoints: dict, size: int) -> None:
    specs = model.output_specs((None, size, size, 3))
    assert list(specs) == list(endpoints)
    assert {name: shape[1:] for name, shape in specs.items()} == _shapes(endpoints)


@pytest.mark.parametrize("name", list(REFERENCES))
def test_copied_keras_applications_weights_give_the_same_logits(name):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    factory, layout = REFERENCES[name]
    reference = factory(weights=None, classes=NUM_CLASSES, classifier_activation=None)
    ours = build_backbone(name, input_size=224, **layout)
    head = keras.layers.Dense(NUM_CLASSES, name="predictions")
    images = _test_images(rng, 224)
    endpoints = ours(images, training=False)
    head(endpoints["pool"])

    assert list(endpoints)[-1] == "pool"
    assert _shapes(endpoints) == ENDPOINT_SHAPES[(name, 224)]
    _assert_specs_match(ours, endpoints, 224)

    ours_weights = ours.weights + head.weights
    assert _parameters(ours.trainable_weights + head.trainable_weights) == _parameters(
        reference.trainable_weights)
    assert _parameters(ours_weights) == _parameters(reference.weights)

    _randomise(reference, rng)
    # Logits of unit spread, so the tolerance is relative to their scale (ResNet-50's BatchNorm
    # with random statistics does not normalise, and its logits would spread over hundreds).
    classifier = reference.get_layer("predictions")
    spread = np.std(reference(images * 2.0 - 1.0, training=False).numpy())
    for variable in classifier.weights:
        variable.assign(variable.numpy() / spread)
    written = _copy_weights(reference, LAYER_PAIRS[name](ours) + [("predictions", head)])
    assert {id(w) for w in written} == {id(w) for w in ours_weights}

    expected = reference(images * 2.0 - 1.0, training=False).numpy()
    logits = head(ours(images, training=False)["pool"]).numpy()
    # The input matters: agreement is not a matter of both ignoring it.
    assert np.abs(expected[0] - expected[1]).max() > 0.1
    np.testing.assert_allclose(logits, expected, rtol=0, atol=LOGIT_TOLERANCE)
    del reference, ours, head, endpoints
    gc.collect()


@pytest.mark.parametrize("name", list(REFERENCES))
def test_small_image_endpoints_and_specs(name):
    model = build_backbone(name, input_size=32)
    endpoints = model(_test_images(np.random.default_rng(0), 32), training=False)
    assert _shapes(endpoints) == ENDPOINT_SHAPES[(name, 32)]
    _assert_specs_match(model, endpoints, 32)



@pytest.mark.parametrize(("height", "width"), [(10, 10), (7, 7), (3, 16), (1, 1)])
def test_adaptive_pooling_matches_a_numpy_loop(height, width):
    size = 7
    maps = np.random.default_rng(0).normal(size=(2, height, width, 3)).astype(np.float32)
    expected = np.zeros((2, size, size, 3), np.float32)
    for i in range(size):
        for j in range(size):
            rows = slice(i * height // size, -(-(i + 1) * height // size))
            cols = slice(j * width // size, -(-(j + 1) * width // size))
            expected[:, i, j] = maps[:, rows, cols].mean(axis=(1, 2))
    pooled = AdaptiveAveragePooling2D(size)(maps).numpy()
    np.testing.assert_allclose(pooled, expected, rtol=1e-6, atol=1e-6)
