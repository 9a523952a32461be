"""Point-cloud encoders through selfsup-export and selfsup-eval: the SavedModel's signatures
compute the Keras encoder's features on clouds of any size, its card and warm-up requests speak
of points, and the survey's Table 9 SVM gives the same numbers from the checkpoint and from the
export (issue 12)."""

import json

import numpy as np
import pytest
import tensorflow as tf
from sklearn.preprocessing import normalize
from sklearn.svm import LinearSVC

from helpers import run_cli, train_in_process
from selfsup.datasets.point_clouds import open_point_source
from selfsup.export.export_main import _export
from selfsup.export.saved_model import PREDICT_METHOD, read_signature_defs
from selfsup.export.warmup import read_warmup_requests
from selfsup.models.registry import ConfigError
from selfsup.tasks.checkpoints import restore_encoder
from selfsup.tasks.frozen_eval import FrozenEvalSettings
from selfsup.tasks.point_probe import (
    check_point_protocol,
    evaluate_point_run,
    evaluate_point_saved_model,
    format_point_table,
)
from selfsup.tasks.pointcloud_ae import PointCloudAEConfig, PointCloudAETask

NUM_POINTS = 64
WIDTHS = (16, 32)  # a two-layer PointNet: endpoints mlp1 [b, n, 16], mlp2 [b, n, 32], pool [b, 32]
SVM = dict(train_examples=150, test_examples=100, svm_costs=(0.1, 10.0))


@pytest.fixture(scope="module")
def run_and_export(tmp_path_factory):
    """A two-layer PointNet after 10 autoencoder steps on generated shapes, and its export
    through selfsup-export's own code path."""
    model_dir = tmp_path_factory.mktemp("pointcloud_ae")
    task = PointCloudAETask(PointCloudAEConfig(
        num_points=NUM_POINTS, global_batch_size=16, synchronized_bn=False,
        backbone_kwargs={"widths": WIDTHS}))
    train_in_process(task, "pointcloud_ae", model_dir, train_steps=10, log_every=10,
                     checkpoint_every=10, optimizer="adam", learning_rate=1e-3, weight_decay=0.0)
    export_dir = tmp_path_factory.mktemp("exports")
    export = _export(str(model_dir), str(export_dir), None, None)
    return model_dir, export, export_dir


def _clouds(count: int, points: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, points, 3)).astype(np.float32) * 0.5


def test_serving_signature_equals_the_keras_encoder_on_clouds_of_any_size(run_and_export):
    model_dir, export, _ = run_and_export
    assert export.endswith("pointcloud_ae_pointnet/1")
    encoder, _ = restore_encoder(model_dir)
    loaded = tf.saved_model.load(export)
    for size in (NUM_POINTS, 37):  # the training size and another (PointNet max-pools)
        clouds = _clouds(3, size, seed=size)
        reference = {name: value.numpy() for name, value in
                     encoder(clouds, training=False).items()}
        served = loaded.signatures["serving_default"](points=tf.constant(clouds))
        assert list(served) == ["features"]
        np.testing.assert_allclose(served["features"].numpy(), reference["pool"], rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(loaded(clouds).numpy(), reference["pool"], rtol=1e-5,
                                   atol=1e-6)
        # representation and pooled.<name>: per-point endpoints max-pooled by numpy here.
        representation = loaded.signatures["representation"](points=tf.constant(clouds))
        assert set(representation) == {"mlp1", "mlp2", "pool"}
        for name, value in reference.items():
            expected = value if value.ndim == 2 else value.max(axis=1)
            np.testing.assert_allclose(representation[name].numpy(), expected, rtol=1e-5,
                                       atol=1e-6)
            np.testing.assert_allclose(getattr(loaded.pooled, name)(clouds).numpy(), expected,
                                       rtol=1e-5, atol=1e-6)
    # TF Serving's view, from saved_model.pb: method name and the named input and output.
    signatures = read_signature_defs(export)
    assert set(signatures) >= {"serving_default", "representation"}
    default = signatures["serving_default"]
    assert default.method_name == PREDICT_METHOD == "tensorflow/serving/predict"
    assert list(default.inputs) == ["points"] and list(default.outputs) == ["features"]
    assert [d.size for d in default.inputs["points"].tensor_shape.dim] == [-1, -1, 3]
    assert default.inputs["points"].dtype == tf.float32.as_datatype_enum
    assert [d.size for d in default.outputs["features"].tensor_shape.dim] == [-1, WIDTHS[-1]]
    assert signatures["representation"].method_name == PREDICT_METHOD


def test_metadata_card_and_warmup_describe_point_clouds(run_and_export):
    _, export, _ = run_and_export
    info = json.loads(tf.io.gfile.GFile(f"{export}/assets/selfsup_encoder.json").read())
    assert (info["modality"], info["num_points"], info["image_size"]) == ("points", NUM_POINTS,
                                                                          None)
    assert info["endpoints"] == ["mlp1", "mlp2", "pool"]
    assert info["endpoint_shapes"] == {"mlp1": [None, None, 16], "mlp2": [None, None, 32],
                                       "pool": [None, 32]}
    card = json.loads(tf.io.gfile.GFile(f"{export}/assets.extra/model_card.json").read())
    assert card["hub_task"] == "point-cloud-feature-vector"
    assert card["input"]["num_points"] == NUM_POINTS and "unit ball" in card["input"][
        "preparation"]
    assert card["output"]["shape"] == [None, 32]
    markdown = tf.io.gfile.GFile(f"{export}/assets.extra/model_card.md").read()
    assert "| mlp1 | [batch, points, 16] | [batch, 16] |" in markdown
    assert "max-pooled over the points" in markdown and "signatures resize" not in markdown
    # Warm-up: point batches of the training size inside the unit ball, which the served
    # signature accepts.
    logs = read_warmup_requests(f"{export}/assets.extra/tf_serving_warmup_requests")
    loaded = tf.saved_model.load(export)
    for batch, log in enumerate(logs, start=1):
        request = log.predict_log.request
        assert request.model_spec.signature_name == "serving_default"
        assert request.model_spec.name == "pointcloud_ae_pointnet"
        clouds = tf.make_ndarray(request.inputs["points"])
        assert clouds.shape == (batch, NUM_POINTS, 3) and clouds.dtype == np.float32
        radii = np.linalg.norm(clouds, axis=-1).max(axis=1)
        np.testing.assert_allclose(radii, 1.0, rtol=1e-6)
        features = loaded.signatures["serving_default"](points=tf.constant(clouds))["features"]
        assert features.shape == (batch, 32)
    assert len(logs) == 3


def test_svm_numbers_equal_between_checkpoint_and_export(run_and_export, tmp_path):
    model_dir, export, _ = run_and_export
    settings = FrozenEvalSettings(protocol="svm", **SVM)
    messages = []
    from_run = evaluate_point_run(model_dir, settings, log=messages.append)
    from_export = evaluate_point_saved_model(export, settings, output_dir=tmp_path,
                                             log=lambda message: None)
    # mlp2 max-pooled over the points is pool itself: probed once.
    assert from_run["endpoints"] == from_export["endpoints"] == ["mlp1", "pool"]
    assert any(m.startswith("mlp2: max over the points equals pool") for m in messages)
    assert from_run["trained"] == from_export["saved_model"]
    assert from_run["columns"] == ["trained", "random_init"]
    assert from_run["random_init"] != from_run["trained"]
    assert from_export["protocol"]["num_points"] == NUM_POINTS
    assert json.loads((tmp_path / "svm.json").read_text())["saved_model"] == from_run["trained"]
    # An independent reference for the pool row: the Keras encoder's features of the same
    # clouds, L2-normalised, one scikit-learn LinearSVC at the chosen cost.
    encoder, _ = restore_encoder(model_dir)
    source = open_point_source("shapes")
    train_x, train_y = source.examples("train", 150, NUM_POINTS, 0)
    test_x, test_y = source.examples("test", 100, NUM_POINTS, 0)
    entry = from_run["trained"]["pool"]
    svm = LinearSVC(C=entry["cost"], tol=1e-4, max_iter=2000, random_state=0).fit(
        normalize(encoder(train_x, training=False)["pool"].numpy().astype(np.float64)), train_y)
    predicted = svm.predict(normalize(encoder(test_x, training=False)["pool"].numpy()
                                      .astype(np.float64)))
    assert entry["top1"] == pytest.approx(100.0 * np.mean(predicted == test_y), abs=1e-3)
    table = format_point_table(from_export)
    assert table.splitlines()[0].startswith("linear SVM top-1 (%), cost by 3-fold CV on shapes "
                                            "test (100 clouds): 150 train clouds of 64 points")
    with pytest.raises(ConfigError, match="'finetune' is not available for point-cloud "
                                          "encoders; valid: svm, linear, knn, lowshot$"):
        check_point_protocol("finetune")


def test_cli_prints_the_svm_table_of_a_point_run(run_and_export):
    # (Protocols point encoders lack are refused by check_point_protocol, tested above.)
    model_dir, _, _ = run_and_export
    result = run_cli("selfsup-eval", f"--model_dir={model_dir}", "--protocol=svm",
                     "--train_examples=150", "--test_examples=100", "--svm_costs=0.1,10")
    assert result.returncode == 0, result.stderr
    assert "linear SVM top-1 (%)" in result.stdout and "random init" in result.stdout
    saved = json.loads((model_dir / "eval" / "svm.json").read_text())
    rows = [line.split() for line in result.stdout.splitlines()
            if line.startswith(("mlp1 ", "pool "))]
    assert [row[0] for row in rows] == ["mlp1", "pool"]
    for row in rows:
        assert float(row[2].rstrip("*")) == pytest.approx(saved["trained"][row[0]]["top1"],
                                                          abs=0.005)


def test_rest_predict_rows_of_points_give_the_encoders_features(run_and_export):
    """selfsup-serve's TF Serving REST API on the point export: one instance = one cloud."""
    from selfsup.export.rest_server import ModelRepository, create_app

    model_dir, _, export_dir = run_and_export
    encoder, _ = restore_encoder(model_dir)
    client = create_app(ModelRepository(
        {"points": export_dir / "pointcloud_ae_pointnet"})).test_client()
    clouds = _clouds(2, 20, seed=3)
    response = client.post("/v1/models/points:predict",
                           data=json.dumps({"instances": clouds.tolist()}),
                           content_type="application/json")
    assert response.status_code == 200, response.get_json()
    np.testing.assert_allclose(np.array(response.get_json()["predictions"]),
                               encoder(clouds, training=False)["pool"].numpy(), rtol=1e-5,
                               atol=1e-6)


def test_hub_tar_of_a_point_run_holds_the_point_export_and_its_model_doc(run_and_export,
                                                                         tmp_path):
    import tarfile

    model_dir, _, _ = run_and_export
    tar_path, doc_path = _export(str(model_dir), str(tmp_path), None, None,
                                 "hub_tar").splitlines()
    doc = open(doc_path).read()
    assert doc.splitlines()[0] == "# Module selfsup/pointcloud_ae_pointnet/1"
    assert "<!-- asset-path: pointcloud_ae_pointnet.tar.gz -->" in doc
    assert "<!-- task: point-cloud-feature-vector -->" in doc
    with tarfile.open(tar_path) as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    loaded = tf.saved_model.load(str(tmp_path / "unpacked"))
    encoder, _ = restore_encoder(model_dir)
    clouds = _clouds(2, 30, seed=4)
    np.testing.assert_allclose(loaded(clouds).numpy(),
                               encoder(clouds, training=False)["pool"].numpy(), rtol=1e-5,
                               atol=1e-6)
