"""The development REST server answers like TF Serving: version status and signature metadata
in TF Serving's JSON shapes, row and columnar predictions equal to the Keras encoder of the
requested version (newest by default), base64 images through ``serving_bytes``, JSON errors with
the right 4xx status after which the server keeps serving, and the ``selfsup-serve`` program
taking 100 concurrent requests from another process."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import textwrap
import threading
import urllib.error
import urllib.request

import keras
import numpy as np
import pytest
import tensorflow as tf
from werkzeug.serving import make_server

from helpers import ONE_STAGE
from selfsup.export.rest_server import ModelRepository, create_app, servable_versions
from selfsup.export.saved_model import export_encoder
from selfsup.models import FEATURE_ENDPOINT, ConfigError, build_backbone

SIZE = 16
NAME = "enc"
MAX_REQUEST_BYTES = 100_000
ATOL = 1e-5
METADATA = {"task": "rotnet", "backbone": "resnet_small", "dataset": "fashion_mnist"}


def _uint8_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def _keras_endpoints(backbone: keras.Model, images: np.ndarray) -> dict[str, np.ndarray]:
    outputs = backbone(images.astype(np.float32) / 255.0, training=False)
    return {name: np.asarray(value) for name, value in outputs.items()}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Two versions of a tiny encoder (different seeds) and leftovers a server must ignore."""
    export_dir = tmp_path_factory.mktemp("exports")
    backbones = {}
    for version, seed in ((1, 1), (2, 2)):
        keras.utils.set_random_seed(seed)
        backbone = build_backbone("resnet_small", input_size=SIZE, **ONE_STAGE)
        backbone(_uint8_images(8, seed) / 255.0, training=True)  # Non-trivial BN statistics.
        export_encoder(backbone, export_dir, NAME, version, image_size=SIZE, metadata=METADATA)
        backbones[version] = backbone
    base = export_dir / NAME
    # An export in progress (hidden, not an integer), a half-written version, a stray folder.
    shutil.copytree(base / "2", base / ".tmp-export-abc")
    (base / "3" / "variables").mkdir(parents=True)
    (base / "notes").mkdir()
    shutil.copytree(base / "1", base / "007")  # Not a canonical integer: skipped.
    repository = ModelRepository({NAME: base})
    app = create_app(repository, max_request_bytes=MAX_REQUEST_BYTES)
    return base, backbones, app.test_client(), app


def _predict(client, body, version: int | None = None):
    path = f"/v1/models/{NAME}" + (f"/versions/{version}" if version else "") + ":predict"
    return client.post(path, data=json.dumps(body), content_type="application/json")


def test_only_complete_integer_versions_are_servable(served):
    base, _, client, _ = served
    assert servable_versions(base) == [1, 2]
    for hidden in (3, 7):
        assert client.get(f"/v1/models/{NAME}/versions/{hidden}").status_code == 404


def test_status_lists_versions_newest_first_as_available(served):
    _, _, client, _ = served
    ok = {"error_code": "OK", "error_message": ""}
    response = client.get(f"/v1/models/{NAME}")
    assert response.status_code == 200
    assert response.get_json() == {"model_version_status": [
        {"version": "2", "state": "AVAILABLE", "status": ok},
        {"version": "1", "state": "AVAILABLE", "status": ok}]}
    response = client.get(f"/v1/models/{NAME}/versions/1")
    assert response.get_json() == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": ok}]}


def test_metadata_gives_each_signature_with_dtypes_shapes_and_method(served):
    _, backbones, client, _ = served
    body = client.get(f"/v1/models/{NAME}/metadata").get_json()
    assert body["model_spec"] == {"name": NAME, "signature_name": "", "version": "2"}
    signatures = body["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "serving_bytes", "representation"} <= set(signatures)

    def dims(tensor_info):
        assert tensor_info["tensor_shape"]["unknown_rank"] is False
        return [d["size"] for d in tensor_info["tensor_shape"]["dim"]]

    default = signatures["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    assert default["inputs"]["images"]["dtype"] == "DT_UINT8"
    assert dims(default["inputs"]["images"]) == ["-1", "-1", "-1", "3"]
    assert default["outputs"]["features"]["dtype"] == "DT_FLOAT"
    assert dims(default["outputs"]["features"]) == ["-1", str(backbones[2].num_features)]
    image_bytes = signatures["serving_bytes"]["inputs"]["image_bytes"]
    assert (image_bytes["dtype"], dims(image_bytes)) == ("DT_STRING", ["-1"])
    endpoints = _keras_endpoints(backbones[2], _uint8_images(1, seed=0))
    assert set(signatures["representation"]["outputs"]) == set(endpoints)
    old = client.get(f"/v1/models/{NAME}/versions/1/metadata").get_json()
    assert old["model_spec"]["version"] == "1"


def test_row_and_columnar_predictions_equal_the_keras_encoder_of_the_requested_version(served):
    _, backbones, client, _ = served
    images = _uint8_images(3, seed=5)
    expected = {v: _keras_endpoints(b, images)[FEATURE_ENDPOINT] for v, b in backbones.items()}
    # The two versions differ, so a right answer identifies the version served.
    assert np.abs(expected[1] - expected[2]).max() > 100 * ATOL
    for version, want in ((None, expected[2]), (2, expected[2]), (1, expected[1])):
        row = _predict(client, {"instances": images.tolist()}, version)
        assert row.status_code == 200
        np.testing.assert_allclose(np.array(row.get_json()["predictions"]), want, atol=ATOL)
        columnar = _predict(client, {"signature_name": "serving_default",
                                     "inputs": {"images": images.tolist()}}, version)
        np.testing.assert_allclose(np.array(columnar.get_json()["outputs"]), want, atol=ATOL)
    # Named instances and JSON floats that are whole numbers are accepted too.
    named = _predict(client, {"instances": [{"images": i} for i in images.astype(float).tolist()]})
    np.testing.assert_allclose(np.array(named.get_json()["predictions"]), expected[2], atol=ATOL)


def test_representation_predictions_are_one_object_of_pooled_endpoints_per_instance(served):
    _, backbones, client, _ = served
    images = _uint8_images(2, seed=6)
    endpoints = _keras_endpoints(backbones[2], images)
    predictions = _predict(client, {"signature_name": "representation",
                                    "instances": images.tolist()}).get_json()["predictions"]
    assert len(predictions) == 2 and set(predictions[0]) == set(endpoints)
    for name, value in endpoints.items():
        pooled = value if value.ndim == 2 else value.mean(axis=(1, 2))
        np.testing.assert_allclose([p[name] for p in predictions], pooled, atol=ATOL)
    outputs = _predict(client, {"signature_name": "representation",
                                "inputs": images.tolist()}).get_json()["outputs"]
    np.testing.assert_allclose(outputs[FEATURE_ENDPOINT], endpoints[FEATURE_ENDPOINT], atol=ATOL)


def test_base64_png_and_jpeg_through_serving_bytes_equal_the_uint8_path(served):
    _, _, client, _ = served
    images = _uint8_images(2, seed=7)
    png = [base64.b64encode(tf.io.encode_png(i).numpy()).decode() for i in images]
    by_png = _predict(client, {"signature_name": "serving_bytes",
                               "instances": [{"b64": b} for b in png]})
    assert by_png.status_code == 200
    as_uint8 = _predict(client, {"instances": images.tolist()}).get_json()["predictions"]
    np.testing.assert_allclose(by_png.get_json()["predictions"], as_uint8, atol=1e-6)
    # JPEG is lossy: compare with the uint8 path on the image the JPEG decodes to.
    jpeg = tf.io.encode_jpeg(images[0], quality=90).numpy()
    decoded = tf.io.decode_jpeg(jpeg, channels=3).numpy()[None]
    by_jpeg = _predict(client, {"signature_name": "serving_bytes", "inputs": {
        "image_bytes": [{"b64": base64.b64encode(jpeg).decode()}]}})
    on_decoded = _predict(client, {"instances": decoded.tolist()}).get_json()["predictions"]
    np.testing.assert_allclose(by_jpeg.get_json()["outputs"], on_decoded, atol=1e-6)


_IMAGE = _uint8_images(1, seed=8).tolist()
_BAD_REQUESTS = {
    "malformed_json": ("POST", f"/v1/models/{NAME}:predict", '{"instances": [', 400, "JSON"),
    "body_not_object": ("POST", f"/v1/models/{NAME}:predict", "[1, 2]", 400, "object"),
    "both_formats": ("POST", f"/v1/models/{NAME}:predict",
                     {"instances": _IMAGE, "inputs": _IMAGE}, 400, "exactly one"),
    "empty_instances": ("POST", f"/v1/models/{NAME}:predict", {"instances": []}, 400,
                        "non-empty"),
    "unknown_signature": ("POST", f"/v1/models/{NAME}:predict",
                          {"signature_name": "classify", "instances": _IMAGE}, 400,
                          "serving_bytes"),
    "wrong_input_name": ("POST", f"/v1/models/{NAME}:predict", {"inputs": {"pixels": _IMAGE}},
                         400, "images"),
    "wrong_rank": ("POST", f"/v1/models/{NAME}:predict", {"instances": _IMAGE[0]}, 400,
                   "shape"),
    "three_channels_expected": ("POST", f"/v1/models/{NAME}:predict",
                                {"instances": [[[[1, 2]]]]}, 400, "shape"),
    "fractions_for_uint8": ("POST", f"/v1/models/{NAME}:predict",
                            {"instances": [[[[0.5, 0, 0]]]]}, 400, "whole"),
    "out_of_uint8_range": ("POST", f"/v1/models/{NAME}:predict",
                           {"instances": [[[[300, 0, 0]]]]}, 400, "[0, 255]"),
    "text_for_uint8": ("POST", f"/v1/models/{NAME}:predict",
                       {"instances": [[[["a", "b", "c"]]]]}, 400, "numbers"),
    "ragged": ("POST", f"/v1/models/{NAME}:predict",
               {"instances": [[[[1, 2, 3]]], [[[1, 2, 3], [4, 5, 6]]]]}, 400, "rectangular"),
    "bad_base64": ("POST", f"/v1/models/{NAME}:predict",
                   {"signature_name": "serving_bytes", "instances": [{"b64": "no!"}]}, 400,
                   "base64"),
    "bytes_not_an_image": ("POST", f"/v1/models/{NAME}:predict",
                           {"signature_name": "serving_bytes",
                            "instances": [{"b64": base64.b64encode(b"hello").decode()}]}, 400,
                           "rejected"),
    "oversized_body": ("POST", f"/v1/models/{NAME}:predict",
                       {"instances": [[[[0, 0, 0]] * 30_000]]}, 413, "limit"),
    "unknown_model": ("POST", "/v1/models/other:predict", {"instances": _IMAGE}, 404, "other"),
    "unknown_version": ("POST", f"/v1/models/{NAME}/versions/7:predict", {"instances": _IMAGE},
                        404, "7"),
    "unknown_model_status": ("GET", "/v1/models/other", None, 404, "other"),
    "unknown_version_metadata": ("GET", f"/v1/models/{NAME}/versions/9/metadata", None, 404,
                                 "9"),
    "unknown_path": ("GET", "/v2/anything", None, 404, "/v1/models/"),
    "wrong_method": ("PUT", f"/v1/models/{NAME}:predict", None, 405, "method"),
}


@pytest.mark.parametrize("case", list(_BAD_REQUESTS))
def test_bad_request_gets_a_json_error_and_the_server_keeps_serving(served, case):
    _, _, client, _ = served
    method, path, body, status, fragment = _BAD_REQUESTS[case]
    data = body if body is None or isinstance(body, str) else json.dumps(body)
    response = client.open(path, method=method, data=data, content_type="application/json")
    assert response.status_code == status
    assert response.is_json
    error = response.get_json()
    assert list(error) == ["error"] and fragment.lower() in error["error"].lower()
    assert _predict(client, {"instances": _IMAGE}).status_code == 200


def test_real_socket_with_urllib(served):
    _, backbones, _, app = served
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/v1/models/{NAME}"
    try:
        images = _uint8_images(2, seed=9)
        request = urllib.request.Request(url + ":predict",
                                         data=json.dumps({"instances": images.tolist()}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            predictions = json.load(response)["predictions"]
        want = _keras_endpoints(backbones[2], images)[FEATURE_ENDPOINT]
        np.testing.assert_allclose(predictions, want, atol=ATOL)
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(url + "/versions/5", timeout=30)
        assert raised.value.code == 404 and "error" in json.load(raised.value)
    finally:
        server.shutdown()
        server.server_close()


def _serve(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "selfsup.export.serve_main", *flags],
                          capture_output=True, text=True, timeout=120)


def test_repository_refuses_base_paths_without_servable_versions_and_bad_names(served, tmp_path):
    base = served[0]
    (tmp_path / "1").mkdir()  # A version directory without saved_model.pb.
    with pytest.raises(ConfigError, match="no servable version"):
        ModelRepository({"empty": tmp_path})
    with pytest.raises(ConfigError, match="not a directory"):
        ModelRepository({"gone": tmp_path / "gone"})
    with pytest.raises(ConfigError, match="invalid model name"):
        ModelRepository({"a/b": base})


def test_serve_program_help_names_tf_serving_and_flag_mistakes_are_one_line(tmp_path):
    help_text = _serve("--help").stdout
    assert "tensorflow/serving" in help_text and "development" in help_text
    assert "--model_base_path" in help_text and "--max_request_mb" in help_text
    for flags, fragment in [((f"--model_base_path={tmp_path / 'missing'}",), "not a directory"),
                            (("--model_config=noequals",), "name=base_path"),
                            ((), "--model_base_path"),
                            (("--model_name=x",), "--model_base_path"),
                            (("--port=70000",), "port")]:
        result = _serve(*flags)
        assert result.returncode == 2, result.stderr
        lines = [line for line in result.stderr.splitlines() if "selfsup-serve" in line]
        assert len(lines) == 1 and fragment in lines[0], result.stderr
        assert "Traceback" not in result.stderr


_CONCURRENT_CLIENT = textwrap.dedent("""
    import json, sys, urllib.request
    from concurrent.futures import ThreadPoolExecutor
    url, body = sys.argv[1], sys.stdin.read().encode()
    def ask(_):
        request = urllib.request.Request(url, data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.load(response)["predictions"]
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(ask, range(100)))
    print(json.dumps(answers))
""")


def _ask_concurrently(url: str, body: dict) -> list:
    client = subprocess.run([sys.executable, "-c", _CONCURRENT_CLIENT, url],
                            input=json.dumps(body), capture_output=True, text=True, timeout=300)
    assert client.returncode == 0, client.stderr
    return json.loads(client.stdout)


def test_100_concurrent_requests_from_another_process_all_succeed(served):
    _, backbones, _, app = served
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        images = _uint8_images(1, seed=10)
        answers = _ask_concurrently(
            f"http://127.0.0.1:{server.server_port}/v1/models/{NAME}:predict",
            {"instances": images.tolist()})
    finally:
        server.shutdown()
        server.server_close()
    assert len(answers) == 100 and all(status == 200 for status, _ in answers)
    want = _keras_endpoints(backbones[2], images)[FEATURE_ENDPOINT]
    np.testing.assert_allclose(np.array([p for _, p in answers]),
                               np.broadcast_to(want, (100, *want.shape)), atol=ATOL)


@pytest.mark.slow
def test_serve_program_serves_the_newest_version_to_another_process(served):
    base, backbones, _, _ = served
    server = subprocess.Popen(
        [sys.executable, "-m", "selfsup.export.serve_main", f"--model_base_path={base}",
         "--port=0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        banner = server.stdout.readline()
        assert f"serving {NAME} versions [1, 2] at http://127.0.0.1:" in banner
        url = banner.split(" at ")[1].split()[0] + ":predict"
        images = _uint8_images(1, seed=11)
        answers = _ask_concurrently(url, {"instances": images.tolist()})
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert len(answers) == 100 and all(status == 200 for status, _ in answers)
    want = _keras_endpoints(backbones[2], images)[FEATURE_ENDPOINT]
    np.testing.assert_allclose(np.array([p for _, p in answers]),
                               np.broadcast_to(want, (100, *want.shape)), atol=ATOL)
