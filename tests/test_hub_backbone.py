"""``--backbone=hub:<path or URL>``: an exported encoder served over http gives the original
encoder's features as a backbone, trains with a pretext task, restores from the run's checkpoint
and exports again; bad handles are one-line ConfigErrors; the registry resolves the prefix."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import (
    ONE_STAGE,
    SUBSET,
    losses_on_one_batch,
    saved_model_tar,
    serving_directory,
    train_in_process,
)
from selfsup.export.saved_model import export_encoder
from selfsup.models import BACKBONES, FEATURE_ENDPOINT, build_backbone
from selfsup.models.backbone import variable_map
from selfsup.models.hub_backbone import HubBackbone
from selfsup.models.registry import ConfigError, Registry
from selfsup.tasks import TaskConfig, task_class
from selfsup.tasks.checkpoints import read_run_config, restore_encoder

ENDPOINTS = ("stem", "res2", "pool")  # ONE_STAGE resnet_small, in encoder order.


def _images(n: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, size, size, 3), dtype=np.float32)


def _pool(encoder, images) -> np.ndarray:
    return encoder(images, training=False)[FEATURE_ENDPOINT].numpy()


def _rotnet(backbone: str, **kwargs):
    return task_class("rotnet")(TaskConfig(backbone=backbone, train_split=SUBSET,
                                           global_batch_size=16, synchronized_bn=False,
                                           **kwargs))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny RotNet encoder after two training steps, restored and exported once."""
    model_dir = tmp_path_factory.mktemp("run")
    train_in_process(_rotnet("resnet_small", backbone_kwargs=ONE_STAGE), "rotnet", model_dir,
                     train_steps=2, log_every=1, checkpoint_every=2, learning_rate=0.1)
    encoder, run_config = restore_encoder(model_dir)
    path = export_encoder(encoder, tmp_path_factory.mktemp("export"), "rotnet", 1,
                          image_size=28, metadata=run_config)
    return encoder, path


@pytest.fixture
def served(exported, tmp_path, monkeypatch):
    """The export as ``encoder.tar.gz`` (root = the SavedModel dir) on a local http server;
    yields the server's base URL. The Hub cache is a temp dir."""
    _, path = exported
    saved_model_tar(path, tmp_path / "served" / "encoder.tar.gz")
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "hub_cache"))
    with serving_directory(tmp_path / "served") as base_url:
        yield base_url


def test_hub_url_backbone_gives_the_original_encoders_pool(exported, served, tmp_path):
    encoder, _ = exported
    backbone = build_backbone(f"hub:{served}/encoder.tar.gz", input_size=28, name="backbone")
    assert isinstance(backbone, HubBackbone)
    assert any((tmp_path / "hub_cache").iterdir())  # Downloaded into the temp Hub cache.
    assert backbone.num_features == 8
    assert backbone.output_specs((None, 28, 28, 3)) == {FEATURE_ENDPOINT: (None, 8)}
    for size, seed in ((28, 0), (36, 1)):  # Any image size, like the export's __call__.
        x = _images(3, size, seed)
        got = backbone(x, training=False)
        assert list(got) == [FEATURE_ENDPOINT]
        np.testing.assert_allclose(got[FEATURE_ENDPOINT].numpy(), _pool(encoder, x), atol=1e-5)
    # Training mode reaches the module: BatchNorm uses batch statistics.
    x = _images(4, 28, 2)
    assert np.abs(_pool(backbone, x) - backbone(x, training=True)["pool"].numpy()).max() > 1e-3
    # Every variable of the encoder is wrapped, trainable ones trainable, under "backbone/hub/".
    assert len(backbone.variables) == len(encoder.variables)
    assert len(backbone.trainable_variables) == len(encoder.trainable_variables)
    assert all(v.path.startswith("backbone/hub/") for v in backbone.variables)


def test_all_endpoints_of_our_export_in_encoder_order_frozen(exported):
    encoder, path = exported
    backbone = build_backbone(f"hub:{path}", input_size=28, name="backbone", all_endpoints=True)
    x = _images(2, 28, 3)
    expected = encoder(x, training=False)
    got = backbone(x, training=False)
    assert list(got) == list(ENDPOINTS)
    for name in ENDPOINTS:
        np.testing.assert_allclose(got[name].numpy(), expected[name].numpy(), atol=1e-5)
    assert backbone.output_specs((None, 28, 28, 3)) == {
        "stem": (None, 28, 28, 8), "res2": (None, 28, 28, 8), "pool": (None, 8)}
    # Only pool carries gradients to the wrapped variables.
    with tf.GradientTape(persistent=True) as tape:
        outputs = backbone(x, training=True)
        stem_sum = tf.reduce_sum(outputs["stem"])
        pool_sum = tf.reduce_sum(outputs["pool"])
    assert all(g is None for g in tape.gradient(stem_sum, backbone.trainable_variables))
    assert any(g is not None for g in tape.gradient(pool_sum, backbone.trainable_variables))


def test_hub_backbone_trains_restores_and_exports_again(exported, tmp_path):
    _, path = exported
    handle = f"hub:{path}"
    # Gradients reach the wrapped module: on one batch the RotNet loss falls.
    losses = losses_on_one_batch(_rotnet(handle), steps=6, learning_rate=0.1)
    assert losses[-1] < losses[0] - 0.02, losses

    model_dir = tmp_path / "run"
    model_dir.mkdir()
    losses, trainer = train_in_process(_rotnet(handle), "rotnet", model_dir, train_steps=3,
                                       log_every=1, checkpoint_every=3, learning_rate=0.1)
    assert all(np.isfinite(losses))
    assert read_run_config(model_dir)["backbone"] == handle
    trained = variable_map(trainer.model.backbone)
    loaded = tf.saved_model.load(str(path))  # A fresh copy of the exported weights.
    # Keys: "hub/" + the module's variable name with "/" → "_".
    before = {"hub/" + v.name.split(":")[0].replace("/", "_"): v.numpy()
              for v in loaded.variables}
    assert trained.keys() == before.keys()
    changed = [k for k, v in trained.items() if np.abs(v.numpy() - before[k]).max() > 1e-6]
    assert {k for k, v in trained.items() if v.trainable} <= set(changed)
    assert any("moving_mean" in k for k in changed)  # BatchNorm ran in training mode.

    # restore_encoder rebuilds hub:<path> and restores the trained weights by checkpoint key.
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(model_dir)))
    # tf.train escapes "/" in dict keys as ".S".
    keys = {name.split("/.ATTRIBUTES")[0].replace(".S", "/")
            for name in reader.get_variable_to_shape_map()}
    assert {f"model/backbone/{key}" for key in trained} <= keys
    restored, _ = restore_encoder(model_dir)
    assert isinstance(restored, HubBackbone)
    restored_map = variable_map(restored)
    assert restored_map.keys() == trained.keys()
    for key, variable in restored_map.items():
        np.testing.assert_array_equal(variable.numpy(), trained[key].numpy(), err_msg=key)

    # Re-exported, it computes the restored backbone's features, not the original export's.
    path2 = export_encoder(restored, tmp_path / "export", "rotnet_hub", 1, image_size=28,
                           metadata=read_run_config(model_dir))
    x = _images(3, 28, 4)
    again = tf.saved_model.load(str(path2))(x, training=False).numpy()
    np.testing.assert_allclose(again, _pool(restored, x), atol=1e-5)
    assert np.abs(again - loaded(x, training=False).numpy()).max() > 1e-4
    # The re-export reads (and lists) its own variables, not the restored backbone's.
    reexported = tf.saved_model.load(str(path2))
    assert len(reexported.variables) == len(restored.variables)
    for variable in reexported.trainable_variables:
        variable.assign(tf.zeros_like(variable))
    assert np.abs(reexported(x, training=False).numpy() - again).max() > 1e-4
    np.testing.assert_allclose(_pool(restored, x), again, atol=1e-5)
    # A StatelessScope mapping to plain tensors cannot reach the module's graph.
    mapping = [(v, tf.zeros(v.shape, v.dtype)) for v in restored.variables]
    with pytest.raises(NotImplementedError, match="only to other tf.Variables"):
        with keras.StatelessScope(state_mapping=mapping):
            restored(x, training=False)


class _NotCallable(tf.Module):
    def __init__(self) -> None:
        super().__init__()
        self.kernel = tf.Variable(1.0)


def _save_third_party(path, maps: bool = False) -> None:
    """A third-party-style reusable SavedModel (the TF Hub API: ``variables``,
    ``trainable_variables``, ``__call__(images)`` without ``training``) → ``[batch, 4]``
    features (``maps``: → ``[batch, h, w, 4]`` maps, not a feature vector)."""
    root = tf.train.Checkpoint()
    root.kernel = tf.Variable(np.arange(12, dtype=np.float32).reshape(3, 4) / 10.0)
    root.variables = [root.kernel]
    root.trainable_variables = [root.kernel]
    root.__call__ = tf.function(
        (lambda images: images @ root.kernel) if maps
        else (lambda images: tf.reduce_mean(images, axis=[1, 2]) @ root.kernel),
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    tf.saved_model.save(root, str(path))


def _one_line_error(handle: str, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        build_backbone(f"hub:{handle}", input_size=8, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_handles_are_one_line_config_errors(served, tmp_path):
    assert "does not exist" in _one_line_error(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    assert "not a SavedModel directory" in _one_line_error(str(tmp_path / "empty"))
    assert "cannot download SavedModel" in _one_line_error(f"{served}/missing.tar.gz")
    _save_third_party(tmp_path / "maps", maps=True)
    assert "not an image feature vector" in _one_line_error(str(tmp_path / "maps"))
    tf.saved_model.save(_NotCallable(), str(tmp_path / "plain"))
    assert "cannot load" in _one_line_error(str(tmp_path / "plain"))
    _save_third_party(tmp_path / "third_party")
    # all_endpoints needs our export's endpoints function.
    assert "not an image encoder exported by selfsup-export" in _one_line_error(
        str(tmp_path / "third_party"), all_endpoints=True)
    with pytest.raises(ConfigError, match="empty hub handle"):
        BACKBONES.get("hub:")


def test_third_party_feature_vector_without_training_argument_trains(tmp_path):
    _save_third_party(tmp_path / "third_party")
    backbone = build_backbone(f"hub:{tmp_path / 'third_party'}", input_size=8)
    x = _images(2, 5, 5)
    kernel = np.arange(12, dtype=np.float64).reshape(3, 4) / 10.0
    expected = np.array([[sum(x[b, :, :, c].mean() * kernel[c, k] for c in range(3))
                          for k in range(4)] for b in range(2)])
    np.testing.assert_allclose(backbone(x, training=True)["pool"].numpy(), expected, atol=1e-6)
    [variable] = backbone.trainable_variables
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(backbone(x, training=True)["pool"])
    # d(sum of features)/d kernel[c, k] = sum over the batch of the channel-c means.
    expected_gradient = np.repeat(x.mean(axis=(1, 2)).sum(0)[:, None], 4, axis=1)
    np.testing.assert_allclose(tape.gradient(total, variable).numpy(), expected_gradient,
                               rtol=1e-5)


def test_registry_resolves_the_hub_prefix_and_lists_it_in_errors():
    with pytest.raises(ConfigError) as info:
        BACKBONES.get("resnet_smal")
    message = str(info.value)
    assert message.startswith("unknown backbone 'resnet_smal'; valid names: ")
    assert "resnet_small" in message and "alexnet" in message
    assert message.endswith("; or hub:<path or URL> (a TF2 image feature-vector SavedModel)")
    assert "hub:/some/dir" in BACKBONES and "resnet_smal" not in BACKBONES
    assert not any(name.startswith("hub:") for name in BACKBONES.names())
    builder = BACKBONES.get("hub:/some/dir")  # Nothing is loaded until it is called.
    assert builder.func is HubBackbone and builder.args == ("/some/dir",)

    registry = Registry("widget")
    registry.register("plain", lambda: "plain")
    registry.register_prefix("x:", lambda rest: lambda: f"built {rest}", "x:<anything>")
    assert registry.build("x:a:b") == "built a:b" and registry.build("plain") == "plain"
    assert registry.names() == ["plain"]
    with pytest.raises(ConfigError, match=r"^unknown widget 'y'; valid names: plain; or "
                                          r"x:<anything>$"):
        registry.get("y")
    with pytest.raises(ValueError, match="clashes"):
        registry.register_prefix("pl", lambda rest: None, "pl<x>")


def test_hub_backbone_builds_in_a_mirrored_strategy_scope(exported):
    """The trainer builds models by a cross-replica call inside the strategy's scope, where a
    loaded module's functions cannot run directly."""
    encoder, path = exported
    x = _images(2, 28, 6)
    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        backbone = build_backbone(f"hub:{path}", input_size=28, name="backbone")
        got = _pool(backbone, x)
    np.testing.assert_allclose(got, _pool(encoder, x), atol=1e-5)
