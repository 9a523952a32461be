"""LRCN and the two-stream network: their maths against numpy, endpoints, gradients, configs."""

import numpy as np
import pytest
import tensorflow as tf

from helpers import ONE_STAGE
from selfsup.models import video_resnet  # noqa: F401  (registers r3d_18)
from selfsup.models.backbone import BACKBONES, build_backbone, variable_map
from selfsup.models.lrcn import LRCN, accepts_keyword
from selfsup.models.registry import ConfigError
from selfsup.models.two_stream import TwoStream, frame_differences
from selfsup.models.video_backbone import is_video_backbone

FRAMES, SIZE = 8, 32
LSTM_UNITS = 6
STREAM_KWARGS = {"width_multiplier": 0.125}  # R3D-18 at 8/16/32/64 channels


def random_clips(batch: int = 2, frames: int = FRAMES, size: int = SIZE, seed: int = 0):
    return np.random.default_rng(seed).random((batch, frames, size, size, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def lrcn() -> LRCN:
    model = build_backbone("lrcn", frame_backbone_kwargs=ONE_STAGE, lstm_units=LSTM_UNITS,
                           input_size=SIZE, name="backbone")
    model(random_clips(1, 2), training=False)
    return model


@pytest.fixture(scope="module")
def two_stream() -> TwoStream:
    model = build_backbone("two_stream", stream_backbone="r3d_18", input_size=SIZE,
                           name="backbone", **STREAM_KWARGS)
    model(random_clips(1, 2), training=False)
    return model


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def numpy_lstm(inputs: np.ndarray, kernel: np.ndarray, recurrent: np.ndarray,
               bias: np.ndarray) -> np.ndarray:
    """Hochreiter & Schmidhuber's LSTM (with forget gate), one step at a time; weights in
    Keras' layout: the 4·units columns are the input, forget, cell and output gates."""
    batch, time, _ = inputs.shape
    units = recurrent.shape[0]
    h = np.zeros((batch, units))
    c = np.zeros((batch, units))
    outputs = np.zeros((batch, time, units))
    for t in range(time):
        z = inputs[:, t] @ kernel + h @ recurrent + bias
        i = sigmoid(z[:, :units])
        f = sigmoid(z[:, units:2 * units])
        g = np.tanh(z[:, 2 * units:3 * units])
        o = sigmoid(z[:, 3 * units:])
        c = f * c + i * g
        h = o * np.tanh(c)
        outputs[:, t] = h
    return outputs


def test_composites_are_registered_as_video_backbones():
    assert is_video_backbone("lrcn") and is_video_backbone("two_stream")


def test_frame_differences_match_a_numpy_loop():
    clips = random_clips(2, 5, 4)
    expected = np.empty((2, 4, 4, 4, 3), np.float32)
    for b in range(2):
        for t in range(4):
            expected[b, t] = (clips[b, t + 1] - clips[b, t] + 1.0) / 2.0
    np.testing.assert_allclose(frame_differences(tf.constant(clips)), expected, atol=1e-7)
    # The same with the clip length unknown when tracing (exported encoders take any length).
    traced = tf.function(frame_differences, input_signature=[
        tf.TensorSpec([None, None, None, None, 3], tf.float32)])
    np.testing.assert_allclose(traced(clips), expected, atol=1e-7)
    assert float(tf.reduce_min(expected)) >= 0.0 and float(tf.reduce_max(expected)) <= 1.0


def test_a_one_frame_clip_has_one_frame_of_zero_motion():
    clip = random_clips(2, 1, 4)
    traced = tf.function(frame_differences, input_signature=[
        tf.TensorSpec([None, None, None, None, 3], tf.float32)])
    for result in (frame_differences(tf.constant(clip)), traced(clip)):
        np.testing.assert_array_equal(result, np.full((2, 1, 4, 4, 3), 0.5, np.float32))


def test_lrcn_endpoint_names_and_shapes(lrcn):
    outputs = lrcn(random_clips(), training=False)
    assert {name: tuple(value.shape) for name, value in outputs.items()} == {
        "frame_stem": (2, FRAMES, SIZE, SIZE, 8),
        "frame_res2": (2, FRAMES, SIZE, SIZE, 8),
        "frame_pool": (2, FRAMES, 8),
        "lstm": (2, FRAMES, LSTM_UNITS),
        "pool": (2, LSTM_UNITS),
    }
    assert list(outputs)[-1] == "pool"
    # Any clip length, including one frame, with the length unknown when tracing.
    traced = tf.function(lambda clips: lrcn(clips, training=False)["pool"], input_signature=[
        tf.TensorSpec([None, None, SIZE, SIZE, 3], tf.float32)])
    for frames in (1, 3):
        assert tuple(traced(random_clips(2, frames)).shape) == (2, LSTM_UNITS)


def test_lrcn_per_frame_features_equal_the_image_backbone_on_each_frame(lrcn):
    clips = random_clips(seed=1)
    outputs = lrcn(clips, training=False)
    for b in range(clips.shape[0]):
        for t in range(FRAMES):
            alone = lrcn.frame_encoder(clips[b:b + 1, t], training=False)
            for name in ("stem", "res2", "pool"):
                np.testing.assert_allclose(outputs[f"frame_{name}"][b, t], alone[name][0],
                                           rtol=1e-5, atol=1e-5)


def test_lrcn_lstm_matches_a_numpy_recurrence_and_pool_is_its_time_mean(lrcn):
    cell = lrcn.lstm.cell
    # A random bias, so every gate's bias matters (Keras initialises most of it to zero).
    cell.bias.assign(np.random.default_rng(3).normal(size=cell.bias.shape).astype(np.float32))
    outputs = lrcn(random_clips(2, 4, seed=2), training=False)
    expected = numpy_lstm(outputs["frame_pool"].numpy().astype(np.float64),
                          cell.kernel.numpy(), cell.recurrent_kernel.numpy(), cell.bias.numpy())
    np.testing.assert_allclose(outputs["lstm"], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(outputs["pool"], expected.mean(axis=1), rtol=1e-4, atol=1e-5)


def test_lrcn_gradients_reach_the_lstm_and_the_frame_encoder(lrcn):
    projection = tf.constant(np.random.default_rng(4).normal(size=(LSTM_UNITS,)), tf.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(lrcn(random_clips(), training=True)["pool"] * projection)
    variables = lrcn.trainable_variables
    gradients = tape.gradient(loss, variables)
    names = [v.path for v in variables]
    assert any("frame_encoder" in n for n in names) and any("lstm" in n for n in names)
    for name, gradient in zip(names, gradients, strict=True):
        assert gradient is not None, name
        assert np.all(np.isfinite(gradient)), name
        assert float(tf.reduce_max(tf.abs(gradient))) > 0.0, name


def test_lrcn_checkpoint_keys_do_not_depend_on_how_many_models_were_built(lrcn):
    again = LRCN(frame_backbone_kwargs=ONE_STAGE, lstm_units=LSTM_UNITS, input_size=SIZE,
                 name="backbone")
    again(random_clips(1, 2), training=False)
    keys = list(variable_map(again))
    assert keys == list(variable_map(lrcn))
    assert all(k.startswith(("frame_encoder/", "lstm/")) for k in keys), keys


def test_lrcn_width_multiplier_scales_the_lstm_and_the_frame_backbone():
    model = LRCN(lstm_units=16, width_multiplier=0.5, input_size=SIZE,
                 frame_backbone_kwargs={"stage_blocks": (1,), "stage_widths": (8,)})
    outputs = model(random_clips(1, 2), training=False)
    assert outputs["frame_res2"].shape[-1] == 4 and outputs["pool"].shape[-1] == 8
    # Backbones without the option (AlexNet) get none; the LSTM is still scaled.
    assert accepts_keyword(BACKBONES.get("resnet_small"), "width_multiplier")
    assert not accepts_keyword(BACKBONES.get("alexnet"), "width_multiplier")


def test_two_stream_endpoint_names_and_shapes(two_stream):
    clips = random_clips()
    outputs = two_stream(clips, training=False)
    rgb = two_stream.rgb_stream(clips, training=False)
    motion = two_stream.motion_stream(frame_differences(clips), training=False)
    expected = {f"rgb_{name}": tuple(value.shape) for name, value in rgb.items()}
    expected.update({f"motion_{name}": tuple(value.shape) for name, value in motion.items()})
    expected["pool"] = (2, 128)
    assert {name: tuple(value.shape) for name, value in outputs.items()} == expected
    assert list(outputs) == list(expected)
    assert [n for n in outputs if n.startswith("rgb_")] == [
        "rgb_stem", "rgb_res2", "rgb_res3", "rgb_res4", "rgb_res5", "rgb_pool"]
    # The motion stream sees t - 1 difference frames.
    assert outputs["rgb_stem"].shape[1] == FRAMES and outputs["motion_stem"].shape[1] == FRAMES - 1
    assert outputs["rgb_pool"].shape == outputs["motion_pool"].shape == (2, 64)
    assert two_stream.num_features == 128
    assert not any("/" in name for name in outputs)


def test_two_stream_fuses_rgb_features_with_features_of_frame_differences(two_stream):
    clips = random_clips(seed=5)
    outputs = two_stream(clips, training=False)
    differences = (clips[:, 1:] - clips[:, :-1] + 1.0) / 2.0
    rgb = two_stream.rgb_stream(clips, training=False)["pool"]
    motion = two_stream.motion_stream(differences, training=False)["pool"]
    np.testing.assert_allclose(outputs["rgb_pool"], rgb, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outputs["motion_pool"], motion, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outputs["pool"], np.concatenate([rgb, motion], axis=1),
                               rtol=1e-5, atol=1e-6)
    # The two streams have their own weights.
    assert not np.allclose(two_stream.rgb_stream(differences, training=False)["pool"], motion)
    assert tuple(two_stream(random_clips(2, 1), training=False)["pool"].shape) == (2, 128)


def test_two_stream_gradients_reach_both_streams(two_stream):
    projection = tf.constant(np.random.default_rng(6).normal(size=(128,)), tf.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(two_stream(random_clips(), training=True)["pool"] * projection)
    variables = two_stream.trainable_variables
    gradients = tape.gradient(loss, variables)
    paths = [v.path for v in variables]
    for stream in ("rgb_stream", "motion_stream"):
        assert any(f"/{stream}/" in p or p.startswith(f"{stream}/") for p in paths), stream
    for path, gradient in zip(paths, gradients, strict=True):
        assert gradient is not None, path
        assert np.all(np.isfinite(gradient)), path
        assert float(tf.reduce_max(tf.abs(gradient))) > 0.0, path


def test_two_stream_variables_are_keyed_by_stream(two_stream):
    keys = list(variable_map(two_stream))
    assert keys and all(k.startswith(("rgb_stream/", "motion_stream/")) for k in keys)
    rgb = sorted(k.removeprefix("rgb_stream/") for k in keys if k.startswith("rgb_stream/"))
    motion = sorted(k.removeprefix("motion_stream/") for k in keys
                    if k.startswith("motion_stream/"))
    assert rgb == motion


def test_configs_round_trip(lrcn, two_stream):
    for model in (lrcn, two_stream):
        config = model.get_config()
        assert type(model).from_config(config).get_config() == config
    assert lrcn.get_config()["frame_backbone_kwargs"] == ONE_STAGE
    assert two_stream.get_config()["motion"] == "difference"


def test_wrong_modalities_and_motions_are_config_errors():
    with pytest.raises(ConfigError, match="takes images"):
        LRCN(frame_backbone="r3d_18")
    with pytest.raises(ConfigError, match="takes point clouds; image backbones: ") as error:
        LRCN(frame_backbone="pointnet")
    assert "resnet_small" in str(error.value) and "pointnet" not in str(error.value).split(": ")[-1]
    with pytest.raises(ConfigError, match="takes clips"):
        TwoStream(stream_backbone="resnet_small")
    with pytest.raises(ConfigError, match="difference"):
        TwoStream(motion="flow")
