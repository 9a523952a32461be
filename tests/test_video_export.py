"""Video encoders export as video feature vectors: float clips through the Hub ``__call__``,
uint8 frames through ``serving_default``, any clip length, model card says video; every
endpoint through ``endpoints`` and, averaged over time and space, ``representation``."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub

import selfsup.models.video_resnet  # noqa: F401  (registers r3d_18)
from selfsup.export.saved_model import export_encoder
from selfsup.export.warmup import read_warmup_requests
from selfsup.models import build_backbone

SIZE = 32


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    keras.utils.set_random_seed(3)
    encoder = build_backbone("r3d_18", width_multiplier=0.125, input_size=SIZE, name="backbone")
    encoder(np.zeros((1, 4, SIZE, SIZE, 3), np.float32), training=False)
    path = export_encoder(encoder, tmp_path_factory.mktemp("export"), "clips", 1,
                          image_size=SIZE, metadata={"task": "vcop", "backbone": "r3d_18",
                                                     "dataset": "sample_videos"})
    return encoder, path


def _clips(frames: int, size: int = SIZE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(size=(2, frames, size, size, 3)).astype(
        np.float32)


@pytest.mark.parametrize("frames", [4, 8])
def test_hub_call_takes_clips_of_any_length(exported, frames):
    encoder, path = exported
    clips = _clips(frames)
    loaded = hub.load(str(path))
    np.testing.assert_allclose(loaded(tf.constant(clips)).numpy(),
                               encoder(clips, training=False)["pool"].numpy(), atol=1e-5)


def test_serving_default_resizes_uint8_frames(exported):
    encoder, path = exported
    frames = np.round(_clips(4, size=48, seed=1) * 255).astype(np.uint8)
    served = tf.saved_model.load(str(path)).signatures["serving_default"](
        frames=tf.constant(frames))["features"].numpy()
    # Independent of the export's code path: resize each frame here, then run the encoder.
    resized = tf.image.resize(frames.reshape(-1, 48, 48, 3).astype(np.float32) / 255,
                              (SIZE, SIZE), antialias=True).numpy().reshape(2, 4, SIZE, SIZE, 3)
    np.testing.assert_allclose(served, encoder(resized, training=False)["pool"].numpy(),
                               atol=1e-5)
    assert served.shape == (2, 64)


def test_model_card_says_video_feature_vector(exported):
    _, path = exported
    card = json.loads((path / "assets.extra" / "model_card.json").read_text())
    assert card["hub_task"] == "video-feature-vector"
    assert "[batch, time, height, width, 3]" in card["input"]["hub_call"]
    assert "serving_bytes" not in card["input"]
    markdown = (path / "assets.extra" / "model_card.md").read_text()
    assert "<!-- task: video-feature-vector -->" in markdown
    assert markdown.count("serving_bytes") == 0


def test_endpoints_and_representation_of_clips(exported):
    encoder, path = exported
    loaded = tf.saved_model.load(str(path))
    clips = _clips(4, seed=2)
    expected = encoder(clips, training=False)
    got = loaded.endpoints(tf.constant(clips))
    assert sorted(got) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name].numpy(), value.numpy(), atol=1e-5)
    frames = np.round(clips * 255).astype(np.uint8)
    pooled = loaded.signatures["representation"](frames=tf.constant(frames))
    for name, value in encoder(frames / np.float32(255), training=False).items():
        value = value.numpy().astype(np.float64)
        # Independent reference: the mean over every frame and position, channel by channel.
        reference = value if value.ndim == 2 else value.reshape(2, -1, value.shape[-1]).mean(1)
        np.testing.assert_allclose(pooled[name].numpy(), reference, atol=1e-5)
        # The named sub-object of the endpoint: the same average, from float clips.
        np.testing.assert_allclose(getattr(loaded.pooled, name)(frames / np.float32(255)),
                                   reference, atol=1e-5)
    info = json.loads((path / "assets" / "selfsup_encoder.json").read_text())
    assert info["video"] is True and info["endpoints"] == list(expected)
    # Batch and time depend on the input: documented as unknown; the rest at 32 px.
    shapes = info["endpoint_shapes"]
    assert shapes["pool"] == [None, 64]
    maps = {name: value for name, value in expected.items() if value.ndim > 2}
    assert maps and all(shapes[name] == [None, None, *value.shape[2:]]
                        for name, value in maps.items())


def test_warmup_requests_are_uint8_clips_the_served_model_accepts(exported):
    encoder, path = exported
    logs = read_warmup_requests(path / "assets.extra" / "tf_serving_warmup_requests")
    assert len(logs) == 3
    requests = [log.predict_log.request for log in logs]
    for batch, request in enumerate(requests, start=1):
        assert (request.model_spec.name, request.model_spec.signature_name) == (
            "clips", "serving_default")
        frames = tf.make_ndarray(request.inputs["frames"])
        # No clip_length in the metadata: two frames per warm-up clip.
        assert frames.dtype == np.uint8 and frames.shape == (batch, 2, SIZE, SIZE, 3)
    # All requests in one call (same dtype and trailing shape): the model accepts them.
    frames = np.concatenate([tf.make_ndarray(r.inputs["frames"]) for r in requests])
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    got = serve(frames=tf.constant(frames))["features"].numpy()
    np.testing.assert_allclose(
        got, encoder(frames / np.float32(255), training=False)["pool"].numpy(), atol=1e-5)
