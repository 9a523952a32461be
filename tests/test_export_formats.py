"""Other export formats: TF Hub's compressed tar.gz with its model doc (root-owned SavedModel
content at the archive root, loads over http through the Hub cache, never overwritten), and the
full pretext model (backbone + head) whose served predictions equal the Keras model's."""

from __future__ import annotations

import json
import re
import tarfile

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub

from helpers import ONE_STAGE, VIDEO_TINY, run_cli, serving_directory
from selfsup.datasets import color_bins
from selfsup.export.hub_tar import STAGING_PREFIX, ArchiveExistsError, export_hub_tar
from selfsup.export.pretext import export_pretext_model, restore_pretext_model
from selfsup.export.saved_model import read_signature_defs
from selfsup.export.warmup import read_warmup_requests
from selfsup.models import FEATURE_ENDPOINT, ConfigError, build_backbone
from selfsup.tasks import TaskConfig, task_class
from selfsup.tasks.checkpoints import model_checkpoint, write_run_config

RUN_CONFIG = {"task": "rotnet", "backbone": "resnet_small", "dataset": "fashion_mnist",
              "image_size": 28, "backbone_kwargs": ONE_STAGE, "metrics": {"linear_top1": 0.8}}
ATOL = 1e-5


def _images(n: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, size, size, 3), dtype=np.float32)


@pytest.fixture(scope="module")
def hub_tar(tmp_path_factory):
    keras.utils.set_random_seed(1)
    backbone = build_backbone("resnet_small", input_size=28, **ONE_STAGE)
    backbone(_images(8, 28, 0), training=True)  # Moves BatchNorm statistics.
    export_dir = tmp_path_factory.mktemp("hub")
    tar_path, doc_path = export_hub_tar(backbone, export_dir, "rotnet_tiny", image_size=28,
                                        metadata=RUN_CONFIG)
    return backbone, tar_path, doc_path


def test_hub_tar_holds_the_saved_model_at_its_root_owned_by_root(hub_tar):
    _, tar_path, doc_path = hub_tar
    assert tar_path.name == "rotnet_tiny.tar.gz" and doc_path.name == "rotnet_tiny.md"
    # Only the two files: no staging directory or version directory left beside them.
    assert sorted(p.name for p in tar_path.parent.iterdir()) == [doc_path.name, tar_path.name]
    with tarfile.open(tar_path, "r:gz") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    roots = {name.split("/")[0] for name in names}
    assert {"saved_model.pb", "variables", "assets", "assets.extra"} <= roots
    assert "variables/variables.index" in names
    assert "assets.extra/tf_serving_warmup_requests" in names
    assert all(re.match(r"\w", name) for name in names)
    assert all(m.uid == 0 and m.gid == 0 and m.uname == "" and m.gname == "" for m in members)


def test_hub_model_doc_has_the_tfhub_metadata_lines(hub_tar):
    _, _, doc_path = hub_tar
    lines = doc_path.read_text().splitlines()
    assert lines[0] == "# Module selfsup/rotnet_tiny/1"
    assert lines[1] == "" and lines[2].startswith("Image feature vector from a `resnet_small`")
    for line in ("<!-- asset-path: rotnet_tiny.tar.gz -->",
                 "<!-- task: image-feature-vector -->",
                 "<!-- network-architecture: resnet-small -->",
                 "<!-- dataset: fashion-mnist -->",
                 "<!-- format: saved_model_2 -->",
                 "<!-- fine-tunable: true -->"):
        assert line in lines
    text = "\n".join(lines)
    assert "values in [0, 1]; input size 28×28" in text
    assert "float32 `[batch, 8]`" in text
    assert "| linear_top1 | 0.8 |" in text


def test_hub_load_of_the_served_tar_gives_the_keras_features(hub_tar, tmp_path, monkeypatch):
    backbone, tar_path, _ = hub_tar
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "hub_cache"))
    with serving_directory(tar_path.parent) as base_url:
        module = hub.load(f"{base_url}/{tar_path.name}")
    assert any((tmp_path / "hub_cache").iterdir())
    x = _images(3, 28, 5)
    np.testing.assert_allclose(module(x).numpy(),
                               backbone(x, training=False)[FEATURE_ENDPOINT].numpy(), atol=ATOL)


def test_hub_tar_is_never_overwritten(hub_tar):
    backbone, tar_path, doc_path = hub_tar
    stamps = [p.stat().st_mtime_ns for p in (tar_path, doc_path)]
    with pytest.raises(ArchiveExistsError, match="already exists"):
        export_hub_tar(backbone, tar_path.parent, "rotnet_tiny", image_size=28,
                       metadata=RUN_CONFIG)
    assert [p.stat().st_mtime_ns for p in (tar_path, doc_path)] == stamps
    assert not any(p.name.startswith(STAGING_PREFIX) for p in tar_path.parent.iterdir())


def _save_run(task_name: str, config: TaskConfig, model_dir) -> keras.Model:
    """A run dir as training leaves it (run_config.json, a checkpoint) for a seeded model with
    moved BatchNorm statistics; returns that model."""
    keras.utils.set_random_seed(2)
    task = task_class(task_name)(config)
    model = task.build_model()
    model(_images(8, config.image_size, 1), training=True)
    write_run_config(model_dir, task_name, config, {})
    model_checkpoint(model).save(str(model_dir / "ckpt"))
    return model


@pytest.fixture(scope="module")
def rotnet_pretext(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("rotnet_run")
    config = TaskConfig(backbone_kwargs=ONE_STAGE, synchronized_bn=False)
    keras_model = _save_run("rotnet", config, model_dir)
    model, task, run_config = restore_pretext_model(model_dir)
    path = export_pretext_model(model, task, run_config, tmp_path_factory.mktemp("exports"),
                                "rotnet_pretext")
    return keras_model, path


def test_pretext_rotnet_serves_the_keras_rotation_logits(rotnet_pretext):
    keras_model, path = rotnet_pretext
    assert path.name == "1" and path.parent.name == "rotnet_pretext"
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    images = np.random.default_rng(3).integers(0, 256, (2, 28, 28, 3), dtype=np.uint8)
    # The four rotations of each image, k × 90° counter-clockwise, made here with numpy.
    rotated = np.concatenate([np.rot90(images, k, axes=(1, 2)) for k in range(4)])
    got = serve(images=tf.constant(rotated))
    assert list(got) == ["logits"] and got["logits"].shape == (8, 4)
    expected = keras_model(rotated.astype(np.float32) / 255.0, training=False)["logits"].numpy()
    np.testing.assert_allclose(got["logits"].numpy(), expected, atol=ATOL)
    np.testing.assert_array_equal(got["logits"].numpy().argmax(1), expected.argmax(1))


def test_pretext_export_is_a_predict_signature_with_card_and_warmup(rotnet_pretext):
    _, path = rotnet_pretext
    default = read_signature_defs(path)["serving_default"]
    assert default.method_name == "tensorflow/serving/predict"
    assert list(default.inputs) == ["images"] and list(default.outputs) == ["logits"]
    card = json.loads((path / "assets.extra" / "model_card.json").read_text())
    assert card["kind"] == "pretext_model" and card["pretext_task"] == "rotnet"
    assert card["outputs"]["logits"]["shape"] == [None, 4]
    assert "counter-clockwise" in card["outputs"]["logits"]["meaning"]
    logs = read_warmup_requests(path / "assets.extra" / "tf_serving_warmup_requests")
    assert [log.predict_log.request.model_spec.name for log in logs] == ["rotnet_pretext"] * 3
    assert tf.make_ndarray(logs[0].predict_log.request.inputs["images"]).dtype == np.uint8


def test_pretext_export_refuses_multi_input_tasks(tmp_path):
    config = task_class("jigsaw").config_class(backbone_kwargs=ONE_STAGE, synchronized_bn=False)
    write_run_config(tmp_path, "jigsaw", config, {})
    with pytest.raises(ConfigError, match="supports tasks whose model maps one image") as error:
        restore_pretext_model(tmp_path)
    assert "rotnet, colorization" in str(error.value)


def test_pretext_colorization_serves_logits_and_the_annealed_mean_ab(tmp_path):
    config = task_class("colorization").config_class(backbone_kwargs=ONE_STAGE,
                                                     synchronized_bn=False)
    (tmp_path / "run").mkdir()
    keras_model = _save_run("colorization", config, tmp_path / "run")
    model, task, run_config = restore_pretext_model(tmp_path / "run")
    path = export_pretext_model(model, task, run_config, tmp_path / "exports", "color")
    images = np.random.default_rng(4).integers(0, 256, (2, 28, 28, 3), dtype=np.uint8)
    got = tf.saved_model.load(str(path)).signatures["serving_default"](
        images=tf.constant(images))
    assert sorted(got) == ["ab", "logits"]
    logits = keras_model(images.astype(np.float32) / 255.0, training=False)["logits"].numpy()
    np.testing.assert_allclose(got["logits"].numpy(), logits, atol=1e-4)
    # Zhang et al. 2016's annealed mean, by hand: softmax(logits / T) · bin centres.
    scaled = logits.astype(np.float64) / config.annealing_temperature
    weights = np.exp(scaled - scaled.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    np.testing.assert_allclose(got["ab"].numpy(), weights @ color_bins.ab_bin_centres(),
                               atol=1e-3)
    card = json.loads((path / "assets.extra" / "model_card.json").read_text())
    assert card["outputs"]["ab"]["shape"] == [None, *logits.shape[1:3], 2]
    assert "annealed mean" in card["outputs"]["ab"]["meaning"]


@pytest.mark.slow
def test_cli_exports_hub_tar_and_pretext_from_a_run_dir(tmp_path):
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    keras_model = _save_run("rotnet", TaskConfig(backbone_kwargs=ONE_STAGE,
                                                 synchronized_bn=False), model_dir)
    export_dir = tmp_path / "exports"
    result = run_cli("selfsup-export", f"--model_dir={model_dir}", f"--export_dir={export_dir}",
                     "--format=hub_tar", "--asset_path=https://example.org/m.tar.gz")
    assert result.returncode == 0, result.stderr[-2000:]
    tar_path = export_dir / "rotnet_resnet_small.tar.gz"
    assert result.stdout.split() == [str(tar_path), str(export_dir / "rotnet_resnet_small.md")]
    doc = (export_dir / "rotnet_resnet_small.md").read_text()
    assert "<!-- asset-path: https://example.org/m.tar.gz -->" in doc
    again = run_cli("selfsup-export", f"--model_dir={model_dir}", f"--export_dir={export_dir}",
                    "--format=hub_tar", "--model_name=rotnet_resnet_small")
    assert again.returncode == 2 and "already exists" in again.stderr

    result = run_cli("selfsup-export", f"--model_dir={model_dir}", f"--export_dir={export_dir}",
                     "--what=pretext")
    assert result.returncode == 0, result.stderr[-2000:]
    path = export_dir / "rotnet_resnet_small_pretext" / "1"
    assert result.stdout.strip() == str(path)
    images = np.random.default_rng(6).integers(0, 256, (4, 28, 28, 3), dtype=np.uint8)
    got = tf.saved_model.load(str(path)).signatures["serving_default"](
        images=tf.constant(images))["logits"].numpy()
    expected = keras_model(images.astype(np.float32) / 255.0, training=False)["logits"].numpy()
    np.testing.assert_allclose(got, expected, atol=ATOL)


@pytest.mark.slow
def test_pretext_video_rotnet3d_serves_float_clips(tmp_path):
    config = task_class("rotnet3d").config_class(**{**VIDEO_TINY, "synchronized_bn": False})
    keras_model = _save_run_video("rotnet3d", config, tmp_path)
    model, task, run_config = restore_pretext_model(tmp_path)
    path = export_pretext_model(model, task, run_config, tmp_path / "exports", "clips")
    clip = (2, config.clip_length, config.image_size, config.image_size, 3)
    clips = np.random.default_rng(7).random(clip, dtype=np.float32)
    got = tf.saved_model.load(str(path)).signatures["serving_default"](
        frames=tf.constant(clips))["logits"].numpy()
    np.testing.assert_allclose(got, keras_model(clips, training=False)["logits"].numpy(),
                               atol=ATOL)
    logs = read_warmup_requests(path / "assets.extra" / "tf_serving_warmup_requests")
    frames = tf.make_ndarray(logs[0].predict_log.request.inputs["frames"])
    assert frames.dtype == np.float32 and frames.shape == (1, *clip[1:])
    assert 0.0 <= frames.min() and frames.max() < 1.0


def _save_run_video(task_name: str, config, model_dir) -> keras.Model:
    """As :func:`_save_run` for a video task (BatchNorm statistics moved on random clips)."""
    keras.utils.set_random_seed(2)
    task = task_class(task_name)(config)
    model = task.build_model()
    clips = np.random.default_rng(1).random(
        (2, config.clip_length, config.image_size, config.image_size, 3), dtype=np.float32)
    model(clips, training=True)
    write_run_config(model_dir, task_name, config, {})
    model_checkpoint(model).save(str(model_dir / "ckpt"))
    return model
