"""selfsup-eval's protocols end to end: a run and its export give the same numbers; the driver
pairs features with labels (planted classes); the CLI evaluates SavedModels and draws pictures."""

import json
import math

import pytest
import tensorflow as tf

from helpers import ONE_STAGE, fashion_mnist_folder, run_cli, train_in_process
from selfsup.models.registry import ConfigError
from selfsup.tasks import TaskConfig, task_class
from selfsup.tasks.frozen_eval import (
    FrozenEvalSettings,
    evaluate_frozen,
    evaluate_run,
    evaluate_saved_model,
    format_frozen_table,
)

SMALL = dict(train_examples=300, test_examples=150)


@pytest.fixture(scope="module")
def run_and_export(tmp_path_factory):
    """A one-stage resnet_small after 2 RotNet steps on a 400/200-image Fashion-MNIST folder,
    and its selfsup-export."""
    from selfsup.export.saved_model import export_encoder
    from selfsup.tasks.eval_subjects import run_encoders

    folder = fashion_mnist_folder(tmp_path_factory.mktemp("fashion_mnist"), 400, 200)
    model_dir = tmp_path_factory.mktemp("rotnet")
    task = task_class("rotnet")(TaskConfig(
        backbone_kwargs=ONE_STAGE, dataset=f"image_folder:{folder}", image_size=28,
        global_batch_size=8, synchronized_bn=False))
    train_in_process(task, "rotnet", model_dir, train_steps=2, log_every=1, checkpoint_every=2,
                     learning_rate=0.05, weight_decay=0.0)
    encoders, info = run_encoders(model_dir, with_random_init=False)
    export = export_encoder(encoders["trained"], tmp_path_factory.mktemp("export"), "rotnet", 1,
                            image_size=info.image_size, metadata=dict(info.run_config))
    return model_dir, export, folder


@pytest.fixture(scope="module")
def supervised_run(run_and_export, tmp_path_factory):
    """2 steps of the supervised baseline on the same folder and architecture."""
    from selfsup.tasks.supervised import SupervisedConfig, SupervisedTask

    folder = run_and_export[2]
    model_dir = tmp_path_factory.mktemp("supervised")
    task = SupervisedTask(SupervisedConfig(
        backbone_kwargs=ONE_STAGE, dataset=f"image_folder:{folder}", image_size=28,
        global_batch_size=8, synchronized_bn=False))
    train_in_process(task, "supervised", model_dir, train_steps=2, log_every=1,
                     checkpoint_every=2, learning_rate=0.05, weight_decay=0.0)
    return model_dir


@pytest.mark.parametrize("protocol, extra", [
    ("linear", {}),
    ("knn", {"knn_ks": (5, 50)}),
    ("svm", {"svm_costs": (0.1, 1.0)}),
])
def test_an_export_gives_the_same_numbers_as_its_checkpoint(run_and_export, tmp_path,
                                                           protocol, extra):
    model_dir, export, _ = run_and_export
    settings = FrozenEvalSettings(protocol=protocol, **SMALL, **extra)
    from_run = evaluate_run(model_dir, settings, with_random_init=False, log=lambda m: None)
    from_export = evaluate_saved_model(str(export), settings, output_dir=tmp_path,
                                       log=lambda m: None)
    assert from_run["endpoints"] == from_export["endpoints"] == ["stem", "res2", "pool"]
    assert from_run["trained"] == from_export["saved_model"]
    assert (model_dir / "eval" / f"{'linear_probe' if protocol == 'linear' else protocol}.json"
            ).is_file()
    assert from_export["saved_model_path"] == str(export)


def gray_class_folder(root, per_class: dict[str, int], mislabelled: int = 0):
    """Images whose gray level is 20 × class + 10 (10 classes); the first ``mislabelled`` test
    images of classes 0.. are filed under the next class instead."""
    for split, count in per_class.items():
        for label in range(10):
            for i in range(count):
                filed = (label + 1) % 10 if split == "test" and label < mislabelled and i == 0 \
                    else label
                folder = root / split / f"{filed:02d}"
                folder.mkdir(parents=True, exist_ok=True)
                image = tf.fill([8, 8, 3], tf.constant(20 * label + 10, tf.uint8))
                (folder / f"{label}_{i}.png").write_bytes(tf.io.encode_png(image).numpy())
    return f"image_folder:{root}"


def angle_encoder(images, training=False):
    """A fixed 'encoder': the mean gray level g ∈ [0, 1] as the unit vector at angle g·π/2, so
    classes differ in cosine similarity; plus a constant endpoint that carries no class."""
    angle = tf.reduce_mean(images, axis=[1, 2, 3])[:, None] * math.pi / 2
    return {"angle": tf.concat([tf.cos(angle), tf.sin(angle)], axis=1),
            "constant": tf.ones_like(angle)}


def test_driver_pairs_features_and_labels_planted_accuracy(tmp_path):
    """3 of 20 test images filed under the wrong class: every protocol scores exactly 85 % on
    the class-carrying endpoint; the constant endpoint scores chance for the majority vote."""
    dataset = gray_class_folder(tmp_path / "data", {"train": 6, "test": 2}, mislabelled=3)
    for protocol, extra, key in (("knn", {"knn_ks": (1, 3)}, "top1_k1"),
                                 ("linear", {}, "top1"),
                                 ("lowshot", {"lowshot_shots": (1, 2), "lowshot_seeds": (0, 1),
                                              "lowshot_classifier": "knn"}, "k2")):
        settings = FrozenEvalSettings(protocol=protocol, **extra)
        results = evaluate_frozen({"fixed": angle_encoder}, settings, dataset=dataset,
                                  image_size=8, data_dir=None, out_dir=tmp_path / protocol,
                                  log=lambda m: None)
        value = results["fixed"]["angle"][key]
        value = value["mean"] if isinstance(value, dict) else value
        assert value == pytest.approx(85.0), (protocol, results["fixed"])
        assert results["best"] == {"fixed": "angle"}
        assert results["fixed"]["angle"]["num_features"] == 2
        saved = json.loads((tmp_path / protocol / next(
            p.name for p in (tmp_path / protocol).iterdir())).read_text())
        assert saved == results
        table = format_frozen_table(results)
        assert "angle" in table and "constant" in table and "*" in table


def test_frozen_settings_are_checked():
    with pytest.raises(ConfigError, match="unknown frozen-feature protocol 'nope'"):
        FrozenEvalSettings(protocol="nope")
    with pytest.raises(ConfigError, match="svm folds must be at least 2"):
        FrozenEvalSettings(protocol="svm", svm_folds=1)
    with pytest.raises(ConfigError, match="unknown low-shot classifier"):
        FrozenEvalSettings(protocol="lowshot", lowshot_classifier="tree")


def test_cli_evaluates_an_export_and_draws_pictures_of_a_run(run_and_export, supervised_run,
                                                            tmp_path):
    model_dir, export, _ = run_and_export
    result = run_cli("selfsup-eval", f"--saved_model={export}", "--protocol=knn",
                     "--knn_k=3", "--train_examples=200", "--test_examples=100",
                     f"--output_dir={tmp_path / 'knn'}")
    assert result.returncode == 0, result.stderr
    assert "weighted kNN top-1 (%)" in result.stdout and "saved model" in result.stdout
    saved = json.loads((tmp_path / "knn" / "knn.json").read_text())
    assert saved["columns"] == ["saved_model"] and saved["protocol"]["ks"] == [3]

    result = run_cli("selfsup-eval", f"--model_dir={model_dir}", "--protocol=pictures",
                     "--train_examples=200", "--test_examples=100", "--picture_queries=3",
                     "--picture_neighbours=3", "--picture_bank_examples=100",
                     "--picture_embedding_examples=60", "--picture_embedding=pca",
                     f"--supervised_dir={supervised_run}")
    assert result.returncode == 0, result.stderr
    pictures = model_dir / "eval" / "pictures"
    names = {"kernels", "feature_maps", "nearest_neighbours", "embedding"}
    for column in ("trained", "random_init"):
        assert {p.stem for p in (pictures / column).glob("*.png")} == names
    curve = tf.io.decode_png((pictures / "probe_curve.png").read_bytes(), channels=3).numpy()
    # Three lines (pretrained, random init, supervised) in matplotlib's first three colours.
    for colour in ((0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E), (0x2C, 0xA0, 0x2C)):
        assert (curve == colour).all(axis=-1).sum() > 100, colour
    # The curves' probe results were made first, for the run and for the supervised run.
    assert (model_dir / "eval" / "linear_probe.json").is_file()
    assert (supervised_run / "eval" / "linear_probe.json").is_file()
