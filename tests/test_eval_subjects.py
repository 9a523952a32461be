"""What an evaluation probes: an exported SavedModel gives the same linear-probe numbers as its
checkpoint, its ``representation`` signature is the global mean of every endpoint, it loads over
http through the Hub cache, third-party feature-vector SavedModels give one endpoint, and bad
handles are one-line ConfigErrors."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import ONE_STAGE, SUBSET, saved_model_tar, serving_directory, train_in_process
from selfsup.datasets import open_source
from selfsup.export.model_card import build_model_card, write_model_card
from selfsup.export.saved_model import export_encoder
from selfsup.models.registry import ConfigError
from selfsup.tasks import TaskConfig, task_class
from selfsup.tasks.eval_subjects import (
    FEATURE_VECTOR,
    run_encoders,
    saved_model_encoder,
)
from selfsup.tasks.linear_probe import LinearClassifierConfig, linear_probe

ENDPOINTS = ("stem", "res2", "pool")  # ONE_STAGE resnet_small, in encoder order.


@pytest.fixture(scope="module")
def run_and_export(tmp_path_factory):
    """A tiny RotNet run trained for a few steps, and its encoder exported."""
    model_dir = tmp_path_factory.mktemp("run")
    task = task_class("rotnet")(TaskConfig(backbone_kwargs=ONE_STAGE, train_split=SUBSET,
                                           global_batch_size=16, synchronized_bn=False))
    train_in_process(task, "rotnet", model_dir, train_steps=4, log_every=2, checkpoint_every=4,
                     learning_rate=0.1)
    encoders, info = run_encoders(model_dir, seed=0)
    path = export_encoder(encoders["trained"], tmp_path_factory.mktemp("export"), "rotnet", 1,
                          image_size=info.image_size, metadata=dict(info.run_config))
    return encoders, info, path


def _images(n: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, size, size, 3), dtype=np.float32)


def test_run_encoders_give_trained_and_random_init_columns(run_and_export):
    encoders, info, _ = run_and_export
    assert list(encoders) == ["trained", "random_init"]
    assert info.source == "run" and info.endpoints == ENDPOINTS
    assert (info.dataset, info.image_size, info.task) == ("fashion_mnist", 28, "rotnet")
    assert info.checkpoint.endswith("ckpt-4")
    assert info.data_settings() == ("fashion_mnist", 28)
    recorded = json.loads(json.dumps(info.as_json()))
    assert recorded["endpoints"] == list(ENDPOINTS) and "run_config" not in recorded
    assert info.description() == {"model_dir": info.location, "checkpoint": info.checkpoint,
                                  "task": "rotnet", "backbone": "resnet_small"}
    x = _images(2, 28, 0)
    trained, random_init = (encoders[c](x, training=False)["pool"].numpy() for c in encoders)
    assert np.abs(trained - random_init).max() > 1e-3  # Two different networks.


def test_saved_model_gives_the_same_linear_probe_numbers_as_its_checkpoint(run_and_export):
    encoders, _, path = run_and_export
    encoder, info = saved_model_encoder(path)
    assert info.selfsup_export and info.endpoints == ENDPOINTS
    assert (info.dataset, info.image_size, info.backbone) == ("fashion_mnist", 28, "resnet_small")
    assert info.backbone_kwargs == {k: list(v) if isinstance(v, tuple) else v
                                    for k, v in ONE_STAGE.items()}

    x = _images(5, 28, 1)
    expected = encoders["trained"](x, training=False)
    got = encoder(x)
    assert list(got) == list(ENDPOINTS)  # Encoder order, not the SavedModel's sorted keys.
    for name in ENDPOINTS:
        np.testing.assert_allclose(got[name].numpy(), expected[name].numpy(), atol=1e-5)

    # One pass over the data feeds both (as the evaluation driver does); each endpoint of each
    # gets its own probe.
    subjects = {"checkpoint": encoders["trained"], "saved_model": encoder}

    def both(images, training=False):
        return {f"{column}/{name}": value for column, subject in subjects.items()
                for name, value in subject(images, training=training).items()}

    top1 = linear_probe(both, open_source("fashion_mnist"), train_examples=500,
                        test_examples=500, image_size=28, seed=0, log=lambda message: None,
                        classifier=LinearClassifierConfig(steps=100, weight_decays=(1e-3, 1e-1)))
    from_checkpoint = {name: top1[f"checkpoint/{name}"] for name in ENDPOINTS}
    from_saved_model = {name: top1[f"saved_model/{name}"] for name in ENDPOINTS}
    assert from_saved_model == from_checkpoint
    assert all(15.0 < value <= 100.0 for value in from_checkpoint.values()), from_checkpoint


def test_representation_signature_is_the_global_mean_of_every_endpoint(run_and_export):
    encoders, _, path = run_and_export
    signature = tf.saved_model.load(str(path)).signatures["representation"]
    assert list(signature.structured_input_signature[1]) == ["images"]
    assert signature.structured_input_signature[1]["images"].dtype == tf.uint8
    images = np.random.default_rng(2).integers(0, 256, (3, 28, 28, 3), dtype=np.uint8)
    got = signature(images=tf.constant(images))
    assert sorted(got) == sorted(ENDPOINTS)
    endpoints = encoders["trained"](images.astype(np.float32) / 255.0, training=False)
    for name, value in endpoints.items():
        value = value.numpy().astype(np.float64)
        # Independent reference: the mean over every position of each map, channel by channel.
        expected = value if value.ndim == 2 else value.reshape(3, -1, value.shape[-1]).mean(1)
        assert got[name].shape == (3, value.shape[-1])
        np.testing.assert_allclose(got[name].numpy(), expected, rtol=1e-5, atol=1e-5)


def test_every_endpoint_is_a_named_sub_object_giving_its_global_mean(run_and_export):
    encoders, _, path = run_and_export
    loaded = tf.saved_model.load(str(path))
    images = _images(3, 32, 3)  # Not the export size: sub-objects take any size, like __call__.
    for name, value in encoders["trained"](images, training=False).items():
        value = value.numpy().astype(np.float64)
        expected = value if value.ndim == 2 else value.reshape(3, -1, value.shape[-1]).mean(1)
        got = getattr(loaded.pooled, name)(tf.constant(images)).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert not hasattr(loaded.pooled, "res3")  # ONE_STAGE has no third stage.


def test_export_documents_endpoint_names_and_shapes(run_and_export):
    _, _, path = run_and_export
    info = json.loads((path / "assets" / "selfsup_encoder.json").read_text())
    assert info["endpoints"] == list(ENDPOINTS)
    # ONE_STAGE at 28 px: an 8-channel stem and stage at full resolution (small-image stem).
    assert info["endpoint_shapes"] == {"stem": [None, 28, 28, 8], "res2": [None, 28, 28, 8],
                                       "pool": [None, 8]}
    assert (info["dataset"], info["image_size"], info["task"]) == ("fashion_mnist", [28, 28],
                                                                   "rotnet")
    card = json.loads((path / "assets.extra" / "model_card.json").read_text())
    assert [e["name"] for e in card["endpoints"]] == list(ENDPOINTS)
    assert card["endpoints"][0]["representation"] == [None, 8]
    markdown = (path / "assets.extra" / "model_card.md").read_text()
    assert "| res2 | [batch, 28, 28, 8] | [batch, 8] |" in markdown
    assert "`pooled.<name>(images)`" in markdown


def test_saved_model_loads_over_http_through_the_hub_cache(run_and_export, tmp_path,
                                                           monkeypatch):
    _, _, path = run_and_export
    saved_model_tar(path, tmp_path / "served" / "encoder.tar.gz")
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "hub_cache"))
    with serving_directory(tmp_path / "served") as base_url:
        url = f"{base_url}/encoder.tar.gz"
        encoder, info = saved_model_encoder(url)
        with pytest.raises(ConfigError, match="cannot download SavedModel"):
            saved_model_encoder(url.replace("encoder", "missing"))
    assert info.location == url and info.local_path.startswith(str(tmp_path / "hub_cache"))
    assert info.description() == {"saved_model": url, "saved_model_path": info.local_path,
                                  "task": "rotnet", "backbone": "resnet_small"}
    assert info.endpoints == ENDPOINTS and info.dataset == "fashion_mnist"
    local, _ = saved_model_encoder(path)
    x = _images(2, 28, 3)
    for name, value in local(x).items():
        np.testing.assert_array_equal(encoder(x)[name].numpy(), value.numpy())


class _FeatureVector(tf.Module):
    """A third-party-style image feature vector: only ``__call__`` → ``[batch, 4]``."""

    def __init__(self) -> None:
        super().__init__()
        self.kernel = tf.Variable(np.arange(12, dtype=np.float32).reshape(3, 4) / 10.0)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def __call__(self, images):
        return tf.reduce_mean(images, axis=[1, 2]) @ self.kernel


def test_third_party_saved_model_gives_one_feature_vector_endpoint(tmp_path):
    tf.saved_model.save(_FeatureVector(), str(tmp_path / "plain"))
    encoder, info = saved_model_encoder(tmp_path / "plain")
    assert info.endpoints == (FEATURE_VECTOR,) and not info.selfsup_export
    assert info.dataset is None and info.image_size is None
    x = _images(2, 5, 4)
    got = encoder(x)
    assert list(got) == [FEATURE_VECTOR]
    kernel = np.arange(12, dtype=np.float64).reshape(3, 4) / 10.0
    expected = np.array([[sum(x[b, :, :, c].mean() * kernel[c, k] for c in range(3))
                          for k in range(4)] for b in range(2)])
    np.testing.assert_allclose(got[FEATURE_VECTOR].numpy(), expected, atol=1e-6)
    # Nothing recorded: the caller must say what to evaluate on.
    with pytest.raises(ConfigError, match="pass --dataset and --image_size"):
        info.data_settings()
    with pytest.raises(ConfigError, match="does not record its training image_size; pass "
                                          "--image_size$"):
        info.data_settings(dataset="fashion_mnist")
    assert info.data_settings("fashion_mnist", 32) == ("fashion_mnist", 32)


def test_feature_vector_export_with_a_model_card_records_its_training_setup(tmp_path):
    # An export older than `endpoints`: a feature-vector __call__ and a model card.
    tf.saved_model.save(_FeatureVector(), str(tmp_path / "old"))
    card = build_model_card("old", 1, (32, 32), 4, {"task": "rotnet", "dataset": "cifar10",
                                                     "backbone": "resnet18"})
    write_model_card(tmp_path / "old", card)
    _, info = saved_model_encoder(tmp_path / "old")
    assert info.endpoints == (FEATURE_VECTOR,) and not info.selfsup_export
    assert (info.dataset, info.image_size, info.task) == ("cifar10", 32, "rotnet")
    assert info.data_settings() == ("cifar10", 32)
    assert info.data_settings(image_size=28) == ("cifar10", 28)


def test_bad_saved_model_handles_are_one_line_config_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("not a model")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "saved_model.pb").write_bytes(b"garbage")
    cases = [(tmp_path / "missing", "does not exist"), (tmp_path / "file", "does not exist"),
             (tmp_path / "empty", "is not a SavedModel directory"),
             (tmp_path / "corrupt", "cannot load SavedModel .*corrupt")]
    for handle, message in cases:
        with pytest.raises(ConfigError, match=message) as error:
            saved_model_encoder(handle)
        assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="does not exist"):
        run_encoders(tmp_path / "missing")
    keras.backend.clear_session()
