"""Video backbones (r3d_18, mc3_18, r2plus1d_18, c3d): training passes, endpoints, configs, and
the published parameter counts written out layer by layer.

Counts follow PyTorch's ``numel`` over ``parameters()``: a BatchNorm contributes its scale and
offset (2·C); its moving mean and variance (2·C more) are buffers in PyTorch and non-trainable
variables here, so ``count_params()`` = trainable + 2·C per BatchNorm, and torchvision's figures
(which include a 512·400 + 400 Kinetics classifier) compare with trainable + that classifier.
"""

import functools
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from selfsup.models.backbone import build_backbone, variable_map
from selfsup.models.c3d import C3D
from selfsup.models.video_backbone import is_video_backbone
from selfsup.models.video_blocks import mid_channels_2plus1d
from selfsup.models.video_resnet import VideoResNet

CLIPS_SHAPE = (2, 8, 32, 32, 3)  # 2 clips of 8 frames of 32×32
TINY = {"width_multiplier": 0.125, "input_size": 32}
CASES = {
    "r3d_18": ("r3d_18", TINY),
    "mc3_18": ("mc3_18", TINY),
    "r2plus1d_18": ("r2plus1d_18", TINY),
    "c3d": ("c3d", TINY),
    "c3d_bn_fc": ("c3d", {**TINY, "batch_norm": True, "include_fc": True}),
}
KINETICS_HEAD = 512 * 400 + 400  # torchvision's fc of every video ResNet


def bn(channels: int) -> int:
    """Trainable parameters of a BatchNorm: scale and offset."""
    return 2 * channels


def _clips() -> np.ndarray:
    return np.random.default_rng(0).random(CLIPS_SHAPE).astype(np.float32)


@functools.cache
def _trained_once(case: str):
    """A tiny backbone, its training-mode endpoints on 2 seeded clips and the gradients of a
    random projection of ``pool`` (cached: each test only reads them)."""
    name, kwargs = CASES[case]
    model = build_backbone(name, **kwargs)
    clips = _clips()
    with tf.GradientTape() as tape:
        endpoints = model(clips, training=True)
        projection = np.random.default_rng(1).standard_normal(endpoints["pool"].shape[-1])
        loss = tf.reduce_sum(endpoints["pool"] * projection.astype(np.float32))
    gradients = tape.gradient(loss, model.trainable_variables)
    return model, {k: v.numpy() for k, v in endpoints.items()}, gradients


@functools.cache
def _full_width(name: str, **kwargs) -> keras.Model:
    """A full-width backbone built by a call on one 1-frame 16 px clip (no big pass).

    Its kernels start at zero instead of He-normal: counts do not depend on initial values,
    and drawing ~250M truncated-normal numbers for these tests would take seconds.
    """
    model = build_backbone(name, input_size=16, **kwargs)
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.Conv3D | keras.layers.Dense):
            layer.kernel_initializer = keras.initializers.Zeros()
    model(np.zeros((1, 1, 16, 16, 3), np.float32), training=False)
    return model


def _trainable(model: keras.Model) -> int:
    return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


@pytest.mark.parametrize("case", sorted(CASES))
def test_backward_pass_reaches_every_variable_with_finite_gradients(case):
    model, endpoints, gradients = _trained_once(case)
    assert is_video_backbone(CASES[case][0])
    assert np.isfinite(endpoints["pool"]).all()
    assert len(gradients) == len(model.trainable_variables) > 0
    for variable, gradient in zip(model.trainable_variables, gradients, strict=True):
        assert gradient is not None, variable.path
        gradient = tf.convert_to_tensor(gradient).numpy()
        assert np.isfinite(gradient).all(), variable.path
        assert np.abs(gradient).max() > 0, variable.path


# Hand-derived shapes for 8×32×32 clips at width 1/8 with the small stem (spatial stride 1).
# R3D/R(2+1)D: stride 2 in t, h, w at res3..res5, "same" padding → ceil(n / 2) each time.
# MC3: res3..res5 are 1×3×3 convolutions, strided in space only, so 8 frames stay 8.
# C3D: pool1 is 1×2×2, pool2..pool5 2×2×2, all "same": t 8→8→4→2→1→1, h 32→16→8→4→2→1.
EXPECTED_SHAPES = {
    "r3d_18": {"stem": (2, 8, 32, 32, 8), "res2": (2, 8, 32, 32, 8), "res3": (2, 4, 16, 16, 16),
               "res4": (2, 2, 8, 8, 32), "res5": (2, 1, 4, 4, 64), "pool": (2, 64)},
    "mc3_18": {"stem": (2, 8, 32, 32, 8), "res2": (2, 8, 32, 32, 8), "res3": (2, 8, 16, 16, 16),
               "res4": (2, 8, 8, 8, 32), "res5": (2, 8, 4, 4, 64), "pool": (2, 64)},
    "r2plus1d_18": {"stem": (2, 8, 32, 32, 8), "res2": (2, 8, 32, 32, 8),
                    "res3": (2, 4, 16, 16, 16), "res4": (2, 2, 8, 8, 32),
                    "res5": (2, 1, 4, 4, 64), "pool": (2, 64)},
    "c3d": {"conv1": (2, 8, 16, 16, 8), "conv2": (2, 4, 8, 8, 16), "conv3": (2, 2, 4, 4, 32),
            "conv4": (2, 1, 2, 2, 64), "conv5": (2, 1, 1, 1, 64), "pool": (2, 64)},
    "c3d_bn_fc": {"conv1": (2, 8, 16, 16, 8), "conv2": (2, 4, 8, 8, 16),
                  "conv3": (2, 2, 4, 4, 32), "conv4": (2, 1, 2, 2, 64),
                  "conv5": (2, 1, 1, 1, 64), "fc6": (2, 512), "fc7": (2, 512),
                  "pool": (2, 512)},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_endpoints_come_in_order_with_hand_derived_shapes(case):
    model, endpoints, _ = _trained_once(case)
    assert list(endpoints) == model.endpoint_names == list(EXPECTED_SHAPES[case])
    assert {k: v.shape for k, v in endpoints.items()} == EXPECTED_SHAPES[case]
    assert model.num_features == EXPECTED_SHAPES[case]["pool"][-1]
    if case == "c3d_bn_fc":
        np.testing.assert_array_equal(endpoints["pool"], endpoints["fc7"])
    else:
        last_map = list(endpoints.values())[-2]
        np.testing.assert_allclose(endpoints["pool"], last_map.mean(axis=(1, 2, 3)), rtol=1e-5,
                                   atol=1e-6)


@pytest.mark.parametrize("name", ["r3d_18", "mc3_18", "r2plus1d_18", "c3d"])
def test_a_single_frame_of_16_px_keeps_every_map_non_empty(name):
    # The ImageNet stem (stride 2) on the smallest input the contract allows.
    kwargs = {"stem": "imagenet"} if name != "c3d" else {}
    model = build_backbone(name, width_multiplier=0.125, **kwargs)
    endpoints = model(np.zeros((1, 1, 16, 16, 3), np.float32), training=False)
    for key, value in endpoints.items():
        assert min(value.shape) >= 1, key
    assert endpoints["pool"].shape == (1, 64)


@pytest.mark.parametrize("case", sorted(CASES))
def test_config_round_trips(case):
    model, _, _ = _trained_once(case)
    config = model.get_config()
    rebuilt = type(model).from_config(config)
    assert rebuilt.get_config() == config
    assert isinstance(rebuilt, C3D if case.startswith("c3d") else VideoResNet)


@pytest.mark.parametrize(("name", "kwargs", "names_valid"), [
    ("r3d_18", {"mid_channels": "paper"}, "block, conv"),
    ("r3d_18", {"stem": "tiny"}, "auto, imagenet, small"),
    ("mc3_18", {"stage_convs": ("3d", "2d", "2d", "1d")}, "3d, 2d, 2plus1d"),
    ("c3d", {"dropout": 1.0}, "[0, 1)"),
])
def test_invalid_options_are_refused_naming_the_valid_ones(name, kwargs, names_valid):
    with pytest.raises(ValueError, match=re.escape(names_valid)):
        build_backbone(name, **kwargs)


def test_stem_auto_picks_the_small_stem_up_to_64_px_only():
    assert build_backbone("r3d_18", input_size=64).get_config()["stem"] == "small"
    assert build_backbone("r3d_18", input_size=112).get_config()["stem"] == "imagenet"


@pytest.mark.parametrize("case", ["r3d_18", "mc3_18", "r2plus1d_18", "c3d_bn_fc"])
def test_synchronized_bn_matches_plain_bn_on_one_replica(case):
    plain, endpoints, _ = _trained_once(case)  # plain BatchNorm, training-mode outputs
    name, kwargs = CASES[case]
    synced = build_backbone(name, **{**kwargs, "synchronized_bn": True})
    synced.build(CLIPS_SHAPE)
    synced.set_weights(plain.get_weights())
    # In training mode every BatchNorm uses the batch's statistics, which are the same whether
    # or not they are all-reduced over one replica. (c3d's fc6/fc7 dropout is off: compare
    # "conv5" there.)
    key = "conv5" if name == "c3d" else "pool"
    np.testing.assert_allclose(synced(_clips(), training=True)[key], endpoints[key],
                               rtol=1e-4, atol=1e-5)


def test_2plus1d_mid_channels_match_the_formula_worked_by_hand():
    # Tran et al. 2018 §3.5 for the first block of res3 (64 → 128, t = d = 3):
    # t·d²·N_in·N_out = 3·9·64·128 = 221,184 and d²·N_in + t·N_out = 9·64 + 3·128 = 960, so
    # M = ⌊221,184 / 960⌋ = ⌊230.4⌋ = 230: 230·960 = 220,800 ≤ 221,184 < 231·960 = 221,760.
    assert mid_channels_2plus1d(64, 128) == 230
    # Same widths in and out (128 → 128): 3·9·128·128 / (9·128 + 3·128) = 27·128 / 12 = 288.
    assert mid_channels_2plus1d(128, 128) == 288
    weights = variable_map(_full_width("r2plus1d_18"))
    assert tuple(weights["res3_block1/conv1/spatial_conv/kernel"].shape) == (1, 3, 3, 64, 230)
    assert tuple(weights["res3_block1/conv1/temporal_conv/kernel"].shape) == (3, 1, 1, 230, 128)
    # torchvision's rule: the block's second conv reuses the block's M (230, not 288).
    assert tuple(weights["res3_block1/conv2/spatial_conv/kernel"].shape) == (1, 3, 3, 128, 230)
    assert tuple(weights["res3_block2/conv1/spatial_conv/kernel"].shape) == (1, 3, 3, 128, 288)


def _check_counts(model: keras.Model, trainable: int, batch_norm_channels: int) -> None:
    assert _trainable(model) == trainable
    assert model.count_params() == trainable + 2 * batch_norm_channels  # moving mean, variance


def test_r3d_18_has_torchvisions_33_4_million_parameters():
    # Each 3×3×3 conv: 27·C_in·C_out weights (no bias), then BN; projections 1·1·1·C_in·C_out.
    stem = 3 * 7 * 7 * 3 * 64 + bn(64)
    res2 = 4 * (27 * 64 * 64 + bn(64))
    res3 = (27 * 64 * 128 + bn(128) + 27 * 128 * 128 + bn(128) + 64 * 128 + bn(128)
            + 2 * (27 * 128 * 128 + bn(128)))
    res4 = (27 * 128 * 256 + bn(256) + 27 * 256 * 256 + bn(256) + 128 * 256 + bn(256)
            + 2 * (27 * 256 * 256 + bn(256)))
    res5 = (27 * 256 * 512 + bn(512) + 27 * 512 * 512 + bn(512) + 256 * 512 + bn(512)
            + 2 * (27 * 512 * 512 + bn(512)))
    expected = stem + res2 + res3 + res4 + res5
    bn_channels = 64 + 4 * 64 + 5 * 128 + 5 * 256 + 5 * 512
    _check_counts(_full_width("r3d_18"), expected, bn_channels)
    assert expected + KINETICS_HEAD == 33_371_472  # torchvision r3d_18, exactly (≪ 1 %)


def test_mc3_18_has_torchvisions_11_7_million_parameters():
    # As r3d_18, but res3..res5 use 1×3×3 convs: 9·C_in·C_out weights each.
    stem = 3 * 7 * 7 * 3 * 64 + bn(64)
    res2 = 4 * (27 * 64 * 64 + bn(64))
    res3 = (9 * 64 * 128 + bn(128) + 9 * 128 * 128 + bn(128) + 64 * 128 + bn(128)
            + 2 * (9 * 128 * 128 + bn(128)))
    res4 = (9 * 128 * 256 + bn(256) + 9 * 256 * 256 + bn(256) + 128 * 256 + bn(256)
            + 2 * (9 * 256 * 256 + bn(256)))
    res5 = (9 * 256 * 512 + bn(512) + 9 * 512 * 512 + bn(512) + 256 * 512 + bn(512)
            + 2 * (9 * 512 * 512 + bn(512)))
    expected = stem + res2 + res3 + res4 + res5
    bn_channels = 64 + 4 * 64 + 5 * 128 + 5 * 256 + 5 * 512
    _check_counts(_full_width("mc3_18"), expected, bn_channels)
    assert expected + KINETICS_HEAD == 11_695_440  # torchvision mc3_18, exactly


def _conv_2plus1d(c_in: int, mid: int, c_out: int) -> int:
    """1×3×3 conv C_in → M, BN(M), 3×1×1 conv M → C_out (the BN after it is the block's)."""
    return 9 * c_in * mid + bn(mid) + 3 * mid * c_out


def test_r2plus1d_18_has_torchvisions_31_5_million_parameters():
    # Mid widths M = ⌊27·N_in·N_out / (9·N_in + 3·N_out)⌋ from each block's N_in → N_out:
    # 64→64: 110,592/768 = 144; 64→128: 230 (worked above); 128→128: 288;
    # 128→256: 884,736/1,920 = 460.8 → 460; 256→256: 576; 256→512: 3,538,944/3,840 = 921.6
    # → 921; 512→512: 1,152. Both convs of a block use the block's M.
    stem = 1 * 7 * 7 * 3 * 45 + bn(45) + 3 * 45 * 64 + bn(64)
    res2 = 4 * (_conv_2plus1d(64, 144, 64) + bn(64))
    res3 = (_conv_2plus1d(64, 230, 128) + bn(128) + _conv_2plus1d(128, 230, 128) + bn(128)
            + 64 * 128 + bn(128) + 2 * (_conv_2plus1d(128, 288, 128) + bn(128)))
    res4 = (_conv_2plus1d(128, 460, 256) + bn(256) + _conv_2plus1d(256, 460, 256) + bn(256)
            + 128 * 256 + bn(256) + 2 * (_conv_2plus1d(256, 576, 256) + bn(256)))
    res5 = (_conv_2plus1d(256, 921, 512) + bn(512) + _conv_2plus1d(512, 921, 512) + bn(512)
            + 256 * 512 + bn(512) + 2 * (_conv_2plus1d(512, 1152, 512) + bn(512)))
    expected = stem + res2 + res3 + res4 + res5
    bn_channels = (45 + 64 + 4 * (144 + 64) + 2 * (230 + 128) + 128 + 2 * (288 + 128)
                   + 2 * (460 + 256) + 256 + 2 * (576 + 256)
                   + 2 * (921 + 512) + 512 + 2 * (1152 + 512))
    _check_counts(_full_width("r2plus1d_18"), expected, bn_channels)
    assert expected + KINETICS_HEAD == 31_505_325  # torchvision r2plus1d_18, exactly


def test_r2plus1d_18_with_per_conv_mid_widths_matches_r3d_18_within_0_01_percent():
    # The paper's rule (§3.5) for every conv: the first blocks' second convs get 288/576/1152.
    model = _full_width("r2plus1d_18", mid_channels="conv")
    r3d = _trainable(_full_width("r3d_18"))
    stem_difference = (3 * 7 * 7 * 3 * 64 + bn(64)) - (7 * 7 * 3 * 45 + bn(45) + 3 * 45 * 64
                                                        + bn(64))
    blocks_difference = sum(
        27 * c_in * c_out - (9 * c_in * m + bn(m) + 3 * m * c_out)
        for c_in, c_out, m in [(64, 64, 144)] * 4 + [(64, 128, 230)] + [(128, 128, 288)] * 3
        + [(128, 256, 460)] + [(256, 256, 576)] * 3 + [(256, 512, 921)] + [(512, 512, 1152)] * 3)
    assert _trainable(model) == r3d - stem_difference - blocks_difference
    assert _trainable(model) + KINETICS_HEAD == 33_370_839
    assert abs(_trainable(model) - r3d) / r3d < 1e-4


def test_c3d_has_the_papers_parameter_counts():
    # Tran et al. 2015: 3×3×3 convs with biases, 27·C_in·C_out + C_out each.
    widths = [(3, 64), (64, 128), (128, 256), (256, 256), (256, 512), (512, 512), (512, 512),
              (512, 512)]
    convs = sum(27 * c_in * c_out + c_out for c_in, c_out in widths)
    assert convs == 27_655_936
    _check_counts(_full_width("c3d"), convs, 0)
    fcs = 4 * 4 * 512 * 4096 + 4096 + 4096 * 4096 + 4096  # fc6 on pool5's 1×4×4×512, fc7
    _check_counts(_full_width("c3d", include_fc=True), convs + fcs, 0)
    assert convs + fcs == 77_995_776


def test_c3d_with_batch_norm_trades_conv_biases_for_batch_norms():
    widths = [(3, 64), (64, 128), (128, 256), (256, 256), (256, 512), (512, 512), (512, 512),
              (512, 512)]
    expected = sum(27 * c_in * c_out + bn(c_out) for c_in, c_out in widths)
    _check_counts(_full_width("c3d", batch_norm=True), expected,
                  sum(c_out for _, c_out in widths))
