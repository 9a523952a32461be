"""Exported encoders load and agree with Keras everywhere they are used: hub.load, TF Serving
signatures, saved_model_cli, tf-keras hub.KerasLayer, the Keras 3 HubEncoderLayer, and a Hub
download of a tar.gz over http; exports are versioned and atomic."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import tarfile
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub

from selfsup.export.export_main import default_model_name, export_trained_encoder
from selfsup.export.keras_layer import HubEncoderLayer
from selfsup.export.layout import TEMP_PREFIX, VersionExistsError, check_model_name, next_version
from selfsup.export.saved_model import export_encoder, read_signature_defs
from selfsup.export.warmup import read_warmup_requests
from selfsup.models import FEATURE_ENDPOINT, ConfigError, build_backbone

BIN = pathlib.Path(sys.executable).parent
RUN_CONFIG = {
    "task": "rotnet", "backbone": "resnet_small", "dataset": "fashion_mnist", "image_size": 28,
    "metrics": {"linear_top1": 0.872},
}
ATOL = 1e-5


def _images(n: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, size, size, 3), dtype=np.float32)


def _uint8_images(n: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _features(backbone: keras.Model, images) -> np.ndarray:
    return backbone(images, training=False)[FEATURE_ENDPOINT].numpy()


def _bn_moving_means(variables) -> list[np.ndarray]:
    return [v.numpy() for v in variables if "moving_mean" in v.name]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A resnet_small with non-trivial BatchNorm statistics, exported once."""
    keras.utils.set_random_seed(0)
    backbone = build_backbone("resnet_small", input_size=28)
    for seed in range(2):  # Moves BN statistics away from their (0, 1) initial values.
        backbone(_images(16, 28, seed) * 0.5 + 0.3, training=True)
    export_dir = tmp_path_factory.mktemp("exports")
    path = export_trained_encoder(backbone, RUN_CONFIG, export_dir)
    return backbone, path


def test_layout_and_model_card(exported):
    backbone, path = exported
    assert path == path.parent.parent / "rotnet_resnet_small" / "1"
    assert sorted(p.name for p in path.parent.iterdir()) == ["1"]  # No temp dir left over.
    assert (path / "saved_model.pb").is_file()
    card = json.loads((path / "assets.extra" / "model_card.json").read_text())
    assert card["pretext_task"] == "rotnet"
    assert card["backbone"] == "resnet_small"
    assert card["dataset"] == "fashion_mnist"
    assert card["metrics"] == {"linear_top1": 0.872}
    assert card["input"]["image_size"] == [28, 28]
    assert card["input"]["value_range"] == [0.0, 1.0]
    assert card["output"]["shape"] == [None, backbone.num_features]
    markdown = (path / "assets.extra" / "model_card.md").read_text()
    assert "<!-- task: image-feature-vector -->" in markdown
    assert "| linear_top1 | 0.872 |" in markdown


def test_hub_call_matches_keras_on_two_sizes(exported):
    backbone, path = exported
    module = hub.load(str(path))
    for size, seed in ((28, 10), (36, 11)):
        x = _images(3, size, seed)
        expected = _features(backbone, x)
        assert expected.shape == (3, 64)
        np.testing.assert_allclose(module(x).numpy(), expected, atol=ATOL)
        np.testing.assert_allclose(module(x, training=False).numpy(), expected, atol=ATOL)
    # The training trace exists and uses batch statistics.
    x = _images(4, 28, 12)
    assert np.abs(module(x, training=True).numpy() - _features(backbone, x)).max() > 1e-3


def test_hub_attributes(exported):
    backbone, path = exported
    module = hub.load(str(path))
    assert len(module.variables) == len(backbone.weights)
    assert len(module.trainable_variables) == len(backbone.trainable_weights)
    assert all(v.trainable for v in module.trainable_variables)
    assert list(module.regularization_losses) == []


def test_serving_signatures_match_keras(exported):
    backbone, path = exported
    loaded = tf.saved_model.load(str(path))
    assert set(loaded.signatures) == {"serving_default", "serving_bytes", "representation"}
    by_images = loaded.signatures["serving_default"]
    by_bytes = loaded.signatures["serving_bytes"]
    assert list(by_images.structured_input_signature[1]) == ["images"]
    assert by_images.structured_input_signature[1]["images"].dtype == tf.uint8
    assert list(by_bytes.structured_input_signature[1]) == ["image_bytes"]
    assert by_bytes.structured_input_signature[1]["image_bytes"].dtype == tf.string
    assert list(by_images.structured_outputs) == ["features"]
    assert list(by_bytes.structured_outputs) == ["features"]

    images = _uint8_images(3, 28, 20)
    expected = _features(backbone, images.astype(np.float32) / 255.0)
    got = by_images(images=tf.constant(images))["features"].numpy()
    np.testing.assert_allclose(got, expected, atol=ATOL)
    pngs = tf.stack([tf.io.encode_png(image) for image in images])
    np.testing.assert_allclose(by_bytes(image_bytes=pngs)["features"].numpy(), expected, atol=ATOL)

    # Grayscale PNGs become RGB; other sizes are resized to the export size.
    gray = images[:2, :, :, :1]
    gray_pngs = tf.stack([tf.io.encode_png(image) for image in gray])
    expected_gray = _features(backbone, np.repeat(gray, 3, axis=-1).astype(np.float32) / 255.0)
    got_gray = by_bytes(image_bytes=gray_pngs)["features"].numpy()
    np.testing.assert_allclose(got_gray, expected_gray, atol=ATOL)
    large = _uint8_images(2, 40, 21)
    resized = tf.image.resize(large.astype(np.float32) / 255.0, (28, 28), antialias=True)
    got_large = by_images(images=tf.constant(large))["features"].numpy()
    np.testing.assert_allclose(got_large, _features(backbone, resized), atol=ATOL)


def test_warmup_file_holds_valid_predict_requests_for_serving_default(exported):
    backbone, path = exported
    logs = read_warmup_requests(path / "assets.extra" / "tf_serving_warmup_requests")
    assert len(logs) == 3
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    for batch, log in enumerate(logs, start=1):
        assert log.WhichOneof("log_type") == "predict_log"
        request = log.predict_log.request
        assert request.model_spec.name == "rotnet_resnet_small"
        assert request.model_spec.signature_name == "serving_default"
        assert list(request.inputs) == ["images"]
        images = tf.make_ndarray(request.inputs["images"])
        assert images.dtype == np.uint8 and images.shape == (batch, 28, 28, 3)
        # The request is valid for the model: it runs and gives the Keras encoder's features.
        got = serve(images=tf.constant(images))["features"].numpy()
        np.testing.assert_allclose(
            got, _features(backbone, images.astype(np.float32) / 255.0), atol=ATOL)


def test_serving_default_is_a_predict_signature_with_named_tensors(exported):
    _, path = exported
    signatures = read_signature_defs(path)
    # Besides the served signatures, TF's own "__saved_model_init_op" (no method).
    served = {name for name in signatures if not name.startswith("__")}
    assert served == {"serving_default", "serving_bytes", "representation"}
    for name in served:
        assert signatures[name].method_name == "tensorflow/serving/predict"
    default = signatures["serving_default"]
    assert list(default.inputs) == ["images"] and list(default.outputs) == ["features"]
    assert default.inputs["images"].dtype == tf.uint8.as_datatype_enum
    assert [d.size for d in default.inputs["images"].tensor_shape.dim] == [-1, -1, -1, 3]
    assert default.outputs["features"].dtype == tf.float32.as_datatype_enum
    assert [d.size for d in default.outputs["features"].tensor_shape.dim] == [-1, 64]
    assert default.inputs["images"].name == "serving_default_images:0"


def test_saved_model_cli_runs_serving_default(exported, tmp_path):
    _, path = exported
    # saved_model_cli in TF 2.21 only accepts Python literals in --input_exprs, so feed a file.
    inputs = tmp_path / "zeros.npy"
    np.save(inputs, np.zeros((2, 28, 28, 3), dtype=np.uint8))
    result = subprocess.run(
        [str(BIN / "saved_model_cli"), "run", "--dir", str(path), "--tag_set", "serve",
         "--signature_def", "serving_default", "--inputs", f"images={inputs}"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Result for output key features" in result.stdout


TF_KERAS_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow_hub as hub
    import tf_keras

    layer = hub.KerasLayer(sys.argv[1], trainable=True)
    model = tf_keras.Sequential([
        tf_keras.Input((28, 28, 3)), layer, tf_keras.layers.Dense(10)])
    model.compile(tf_keras.optimizers.SGD(0.1),
                  tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).random((8, 28, 28, 3), dtype=np.float32)
    y = np.arange(8) % 10
    before = {w.name: w.numpy().copy() for w in layer.weights}
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    changed = {"trainable": 0, "moving": 0}
    for w in layer.weights:
        if not np.allclose(before[w.name], w.numpy()):
            changed["trainable" if w.trainable else "moving"] += 1
    print(json.dumps({"changed": changed, "trainable": len(layer.trainable_weights)}))
""")


def test_tf_keras_hub_keras_layer_fine_tunes(exported):
    _, path = exported
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "-c", TF_KERAS_SCRIPT, str(path)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["trainable"] == 45
    assert report["changed"]["trainable"] > 0
    assert report["changed"]["moving"] > 0  # hub.KerasLayer passes training=True.


def test_hub_encoder_layer_fine_tunes_under_keras3_fit(exported):
    backbone, path = exported
    layer = HubEncoderLayer(path, trainable=True)
    inputs = keras.Input((28, 28, 3))
    model = keras.Model(inputs, keras.layers.Dense(10)(layer(inputs)))
    x = _images(8, 28, 30)
    np.testing.assert_allclose(
        layer(x).numpy(), _features(backbone, x), atol=ATOL)
    assert len(layer.trainable_weights) == len(backbone.trainable_weights)

    model.compile(keras.optimizers.SGD(0.1),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    kernels = [w.numpy() for w in layer.trainable_weights]
    means = _bn_moving_means(layer.weights)
    model.fit(x, np.arange(8) % 10, batch_size=8, epochs=1, verbose=0)
    assert any(not np.allclose(b, w.numpy()) for b, w in zip(
        kernels, layer.trainable_weights, strict=True))
    # Moving statistics only change if training=True reached the SavedModel's BatchNorm.
    assert any(not np.allclose(b, a) for b, a in zip(
        means, _bn_moving_means(layer.weights), strict=True))
    # Fine-tuning the reloaded copy leaves the exported files alone.
    np.testing.assert_allclose(hub.load(str(path))(x).numpy(), _features(backbone, x), atol=ATOL)


def test_frozen_hub_encoder_layer_keeps_statistics(exported):
    _, path = exported
    layer = HubEncoderLayer(path)
    assert layer.trainable_weights == []
    means = _bn_moving_means(layer.weights)
    layer(_images(4, 28, 31), training=True)
    for before, after in zip(means, _bn_moving_means(layer.weights), strict=True):
        np.testing.assert_array_equal(before, after)


def test_hub_encoder_layer_config_round_trip(exported, tmp_path):
    _, path = exported
    inputs = keras.Input((28, 28, 3))
    layer = HubEncoderLayer(path, trainable=True)
    model = keras.Model(inputs, layer(inputs))
    model.layers[-1].weights[0].assign(model.layers[-1].weights[0] * 2.0)  # "Fine-tuned".
    saved = tmp_path / "model.keras"
    model.save(saved)
    with pytest.raises(ValueError, match="safe mode"):
        keras.models.load_model(saved)
    reloaded = keras.models.load_model(saved, safe_mode=False)
    assert reloaded.layers[-1].get_config()["handle"] == str(path)
    x = _images(2, 28, 32)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=ATOL)


def test_hub_load_of_tar_gz_over_http(exported, tmp_path, monkeypatch):
    backbone, path = exported
    served = tmp_path / "served"
    served.mkdir()
    with tarfile.open(served / "encoder.tar.gz", "w:gz") as tar:
        for entry in sorted(path.iterdir()):
            tar.add(entry, arcname=entry.name)
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "hub_cache"))
    server = subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
         "--directory", str(served)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        banner = server.stdout.readline()
        port = re.search(r"port (\d+)", banner)
        assert port, banner
        module = hub.load(f"http://127.0.0.1:{port.group(1)}/encoder.tar.gz")
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert any((tmp_path / "hub_cache").iterdir())
    x = _images(2, 28, 40)
    np.testing.assert_allclose(module(x).numpy(), _features(backbone, x), atol=ATOL)


def test_existing_version_is_never_overwritten(exported):
    backbone, path = exported
    stamp = (path / "saved_model.pb").stat().st_mtime_ns
    with pytest.raises(VersionExistsError) as error:
        export_encoder(backbone, path.parent.parent, path.parent.name, 1, image_size=28,
                       metadata=RUN_CONFIG)
    assert isinstance(error.value, ValueError)
    assert (path / "saved_model.pb").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in path.parent.iterdir()) == ["1"]


class _BreaksWhenTraining(keras.Model):
    """A backbone whose training-mode trace fails, i.e. after the export has started."""

    def __init__(self) -> None:
        super().__init__(name="breaks_when_training")
        self.dense = keras.layers.Dense(4)

    def call(self, images, training=None):
        if training:
            raise RuntimeError("trace failed")
        return {FEATURE_ENDPOINT: self.dense(keras.ops.mean(images, axis=(1, 2)))}


def test_failed_export_leaves_nothing_behind(tmp_path, exported):
    export_dir = tmp_path / "new" / "exports"
    with pytest.raises(RuntimeError, match="trace failed"):
        export_encoder(_BreaksWhenTraining(), export_dir, "broken", image_size=8, metadata={})
    assert not (tmp_path / "new").exists()
    # In an existing model dir, existing versions stay and no hidden temp dir remains.
    _, path = exported
    with pytest.raises(RuntimeError, match="trace failed"):
        export_encoder(_BreaksWhenTraining(), path.parent.parent, path.parent.name,
                       image_size=8, metadata={})
    assert sorted(p.name for p in path.parent.iterdir()) == ["1"]


def test_versions_and_names(tmp_path):
    assert next_version(tmp_path / "missing") == 1
    for name in ("1", "3", "10", "foo", f"{TEMP_PREFIX}x"):
        (tmp_path / name).mkdir()
    (tmp_path / "12").write_text("not a version dir")
    assert next_version(tmp_path) == 11
    assert default_model_name({"task": "SimCLR v2", "backbone": "resnet18"}) == "simclr_v2_resnet18"
    assert default_model_name({"task": "rotnet",
                               "backbone": "hub:https://host/models/enc.tar.gz"}) == \
        "rotnet_hub_enc"
    for bad in ("", ".hidden", "a/b", "..", "x y"):
        with pytest.raises(ConfigError):
            check_model_name(bad)


@pytest.mark.parametrize("args, message", [
    ([], "--model_dir is required"),
    (["--model_dir=/nonexistent/run", "--export_dir=/tmp/x"], "is not a directory"),
    (["--model_dir=.", "--export_dir=/tmp/x", "--version=0"], "positive integer"),
    (["--no_such_flag"], "no_such_flag"),
    (["--model_dir=.", "--export_dir=/tmp/x", "--format=zip"], "<saved_model|hub_tar>"),
    (["--model_dir=.", "--export_dir=/tmp/x", "--format=hub_tar", "--what=pretext"],
     "--format=hub_tar exports the encoder without a version"),
])
def test_cli_usage_errors_are_one_line(args, message):
    result = subprocess.run([str(BIN / "selfsup-export"), *args], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
