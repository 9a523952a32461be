"""Backbones: registry errors, published parameter counts, endpoints and their specs."""

import numpy as np
import pytest

from selfsup.models import BACKBONES, ConfigError, build_backbone


def _trainable_parameters(model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # torchvision's resnet18 / resnet50 (He et al. 2016) have 11,689,512 and 25,557,032
        # parameters with their 1000-way classifier (512·1000 + 1000 and 2048·1000 + 1000).
        ("resnet18", 11_689_512 - 513_000),
        ("resnet50", 25_557_032 - 2_049_000),
    ],
)
def test_parameter_counts_match_the_published_networks(name, expected):
    model = build_backbone(name, input_size=224)
    model(np.zeros((1, 224, 224, 3), np.float32))
    assert _trainable_parameters(model) == expected


def test_small_resnet_endpoints_and_specs():
    model = build_backbone("resnet_small", input_size=28)
    outputs = model(np.random.default_rng(0).random((2, 28, 28, 3)).astype(np.float32))
    assert list(outputs) == ["stem", "res2", "res3", "res4", "pool"]
    shapes = {name: tuple(value.shape) for name, value in outputs.items()}
    assert shapes == {"stem": (2, 28, 28, 16), "res2": (2, 28, 28, 16), "res3": (2, 14, 14, 32),
                      "res4": (2, 7, 7, 64), "pool": (2, 64)}
    specs = model.output_specs((None, 28, 28, 3))
    assert {k: v[1:] for k, v in specs.items()} == {k: v[1:] for k, v in shapes.items()}
    # "pool" is the global average of the last feature map.
    np.testing.assert_allclose(outputs["pool"], np.mean(outputs["res4"], axis=(1, 2)), rtol=1e-5)


def test_imagenet_stem_is_chosen_for_large_inputs():
    small = build_backbone("resnet18", input_size=32)
    large = build_backbone("resnet18", input_size=224)
    assert small(np.zeros((1, 32, 32, 3), np.float32))["stem"].shape == (1, 32, 32, 64)
    assert large(np.zeros((1, 224, 224, 3), np.float32))["stem"].shape == (1, 56, 56, 64)


def test_unknown_backbone_lists_the_valid_names():
    with pytest.raises(ConfigError) as error:
        build_backbone("resnet9000")
    for name in BACKBONES.names():
        assert name in str(error.value)
