"""A development server speaking TensorFlow Serving's REST API, for SavedModels in its layout.

Production serving is TensorFlow Serving itself, e.g. with docker::

    docker run -p 8501:8501 -v <base>:/models/<name> -e MODEL_NAME=<name> tensorflow/serving

This module is for development and tests: it answers the same requests the same way, so a
client written against it works unchanged against TF Serving. Built on Flask/werkzeug.

Model layout (TF Serving's): ``<model_base_path>/<integer version>/saved_model.pb``, the
SavedModel loaded with ``tf.saved_model.load`` and called through ``.signatures[name]``.
Directories whose names are not integers (e.g. the hidden temporary directories of an export in
progress) and version directories without ``saved_model.pb`` are ignored. Version policy: the
directory is scanned on every request, so a newly exported version is served without a restart;
every version on disk can be requested; the newest is loaded at start-up and any other version
on its first request, then kept in memory (like TF Serving's ``all`` policy, loaded lazily).
Requests without a version go to the newest one.

Endpoints (``<name>`` is a served model name):

* ``GET /v1/models/<name>[/versions/<n>]`` → ``{"model_version_status": [{"version": "2",
  "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}, ...]}``, newest
  first (``GetModelStatusResponse`` as JSON);
* ``GET /v1/models/<name>[/versions/<n>]/metadata`` → ``{"model_spec": {"name", "version",
  "signature_name": ""}, "metadata": {"signature_def": {"signature_def": {<signature>:
  {"inputs": {<key>: {"dtype": "DT_UINT8", "tensor_shape": {"dim": [{"size": "-1", "name":
  ""}, ...], "unknown_rank": false}, "name": "..."}}, "outputs": {...}, "method_name":
  "tensorflow/serving/predict"}}}}}`` (the SavedModel's ``SignatureDef`` protos as JSON, the
  callable signatures only);
* ``POST /v1/models/<name>[/versions/<n>]:predict`` with ``{"signature_name"?: ...,
  "instances": [...]}`` (row format: each instance a value, or for any signature an object of
  named inputs; all inputs of an instance share the batch index) → ``{"predictions": [...]}``
  (one output: a list of values; several: a list of objects), or ``{"inputs": value or
  object}`` (columnar) → ``{"outputs": value or object}``. String inputs take ``{"b64":
  "..."}`` (or plain text); numbers are cast to the signature's dtype (integers must be whole
  and in range) and checked against its shape.

Errors are ``{"error": "..."}``: 400 for bad JSON, unknown signatures or wrong input names,
shapes or dtypes (and inputs the model rejects), 404 for unknown models, versions or paths, 405
for a wrong method, 413 for a body over the size limit.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import pathlib
import re
import threading
from collections.abc import Mapping
from typing import Any

import flask
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2
from werkzeug.exceptions import HTTPException

from selfsup.export.layout import check_model_name
from selfsup.models.registry import ConfigError

DEFAULT_SIGNATURE = "serving_default"
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
SAVED_MODEL_FILE = "saved_model.pb"
SERVING_TAG = "serve"
_B64 = "b64"
# Canonical integers only, so a version number names exactly one directory ("007" is skipped).
_VERSION_DIR = re.compile(r"0|[1-9][0-9]*")


class RequestError(Exception):
    """A request the server cannot answer: becomes ``{"error": message}`` with ``status``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def servable_versions(base_path: str | os.PathLike) -> list[int]:
    """Integer version directories of ``base_path`` holding a ``saved_model.pb``, ascending.

    Non-integer names (hidden temporary export directories included), integers with leading
    zeros and version directories without the SavedModel file (still being written by hand)
    are skipped.
    """
    base_path = pathlib.Path(base_path)
    if not base_path.is_dir():
        return []
    return sorted(
        int(entry.name) for entry in base_path.iterdir()
        if _VERSION_DIR.fullmatch(entry.name) and (entry / SAVED_MODEL_FILE).is_file()
    )


class LoadedVersion:
    """One loaded SavedModel version: its callable signatures and their ``SignatureDef``s."""

    def __init__(self, path: pathlib.Path) -> None:
        self.loaded = tf.saved_model.load(str(path), tags=[SERVING_TAG])
        self.signatures = dict(self.loaded.signatures)
        proto = saved_model_pb2.SavedModel.FromString((path / SAVED_MODEL_FILE).read_bytes())
        graph = next((g for g in proto.meta_graphs if SERVING_TAG in g.meta_info_def.tags),
                     proto.meta_graphs[0])
        self.signature_defs = {name: graph.signature_def[name] for name in self.signatures
                               if name in graph.signature_def}


class ModelRepository:
    """The served models: name → TF Serving base path, versions loaded on first use.

    The newest version of each model is loaded on construction, so a broken export fails at
    start-up rather than on the first request. Thread-safe.
    """

    def __init__(self, base_paths: Mapping[str, str | os.PathLike]) -> None:
        if not base_paths:
            raise ConfigError("no model to serve: give a model name and base path")
        self.base_paths = {check_model_name(name): pathlib.Path(path)
                           for name, path in base_paths.items()}
        self._loaded: dict[tuple[str, int], LoadedVersion] = {}
        self._lock = threading.Lock()
        for name, path in self.base_paths.items():
            if not path.is_dir():
                raise ConfigError(f"model base path {path} of {name!r} is not a directory")
            versions = servable_versions(path)
            if not versions:
                raise ConfigError(
                    f"no servable version in {path}: expected <integer version>/"
                    f"{SAVED_MODEL_FILE} below it")
            self.load(name, versions[-1])

    def versions(self, name: str) -> list[int]:
        """The servable versions of model ``name`` (ascending); 404 for an unknown model."""
        if name not in self.base_paths:
            known = ", ".join(sorted(self.base_paths))
            raise RequestError(f"Servable not found for request: Latest({name}); "
                               f"served models: {known}", 404)
        return servable_versions(self.base_paths[name])

    def resolve(self, name: str, version: int | None) -> int:
        """``version``, or the newest when None; 404 when it is not servable."""
        versions = self.versions(name)
        if version is None:
            if not versions:
                raise RequestError(f"Servable not found for request: Latest({name})", 404)
            return versions[-1]
        if version not in versions:
            raise RequestError(
                f"Servable not found for request: Specific({name}, {version}); "
                f"versions: {', '.join(map(str, versions)) or 'none'}", 404)
        return version

    def load(self, name: str, version: int) -> LoadedVersion:
        """The loaded SavedModel of ``name`` at ``version`` (loading it on first use)."""
        key = (name, version)
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = LoadedVersion(self.base_paths[name] / str(version))
            return self._loaded[key]


# --- JSON ⇄ tensors -------------------------------------------------------------------------


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {_B64}


def _decode_string(value: Any) -> bytes:
    if _is_b64(value):
        try:
            return base64.b64decode(value[_B64], validate=True)
        except (binascii.Error, TypeError, ValueError) as error:
            raise RequestError(f"invalid base64 in {{\"b64\": ...}}: {error}") from None
    if isinstance(value, str):
        return value.encode("utf-8")
    raise RequestError(f"a string input takes text or {{\"b64\": ...}}, got {value!r:.40}")


def to_tensor(name: str, value: Any, spec: tf.TensorSpec) -> tf.Tensor:
    """JSON ``value`` → a tensor of ``spec``'s dtype, checked against its shape.

    ``{"b64": ...}`` leaves are decoded for string inputs; numbers are cast, integers only when
    whole and in the dtype's range. Raises :class:`RequestError` (400) otherwise.
    """
    dtype = spec.dtype
    try:
        if dtype == tf.string:
            raw = np.asarray(value, dtype=object)
            array = np.vectorize(_decode_string, otypes=[object])(raw) if raw.size else raw
        else:
            array = np.asarray(value)
    except ValueError as error:  # Ragged nesting.
        raise RequestError(f"input {name!r} is not a rectangular array: {error}") from None
    if dtype != tf.string:
        if array.dtype.kind not in "biuf":
            raise RequestError(f"input {name!r} must be numbers for {dtype.name}, got "
                               f"{array.dtype.name if array.dtype.kind != 'O' else 'objects'}")
        target = dtype.as_numpy_dtype
        if dtype.is_integer:
            info = np.iinfo(target)
            if array.dtype.kind == "f" and not np.all(np.isfinite(array) & (array % 1 == 0)):
                raise RequestError(f"input {name!r} of {dtype.name} must hold whole numbers")
            if array.size and (array.min() < info.min or array.max() > info.max):
                raise RequestError(f"input {name!r} of {dtype.name} must lie in "
                                   f"[{info.min}, {info.max}]")
        elif dtype.is_bool and array.dtype.kind != "b":
            raise RequestError(f"input {name!r} must be true/false")
        array = array.astype(target)
    if not spec.shape.is_compatible_with(array.shape):
        expected = [d if d is not None else -1 for d in spec.shape.as_list()]
        raise RequestError(f"input {name!r} has shape {list(array.shape)}, the signature "
                           f"expects {expected} (-1: any size)")
    return tf.constant(array, dtype=dtype)


def to_json(name: str, tensor: tf.Tensor) -> Any:
    """A tensor → nested lists; strings as text, or ``{"b64": ...}`` when the output name
    ends in ``_bytes`` or the bytes are not UTF-8 (TF Serving's rule)."""
    array = tensor.numpy()
    if tensor.dtype != tf.string:
        return array.tolist()

    def encode(raw: bytes) -> Any:
        if not name.endswith("_bytes"):
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                pass
        return {_B64: base64.b64encode(raw).decode("ascii")}

    return np.vectorize(encode, otypes=[object])(array).tolist() if array.size else []


def _input_specs(signature: Any) -> dict[str, tf.TensorSpec]:
    return dict(signature.structured_input_signature[1])


def _row_inputs(instances: Any, specs: dict[str, tf.TensorSpec]) -> dict[str, tf.Tensor]:
    if not isinstance(instances, list) or not instances:
        raise RequestError("'instances' must be a non-empty list")
    named = [isinstance(i, dict) and not _is_b64(i) for i in instances]
    if any(named) and not all(named):
        raise RequestError("'instances' mixes objects of named inputs with bare values")
    if not all(named):
        if len(specs) != 1:
            raise RequestError(f"the signature has inputs {sorted(specs)}: each instance must "
                               "be an object naming them")
        (name, spec), = specs.items()
        return {name: to_tensor(name, instances, spec)}
    for instance in instances:
        if set(instance) != set(specs):
            raise RequestError(f"instance inputs {sorted(instance)} differ from the signature's "
                               f"{sorted(specs)}")
    return {name: to_tensor(name, [i[name] for i in instances], spec)
            for name, spec in specs.items()}


def _columnar_inputs(inputs: Any, specs: dict[str, tf.TensorSpec]) -> dict[str, tf.Tensor]:
    if isinstance(inputs, dict) and not _is_b64(inputs):
        if set(inputs) != set(specs):
            raise RequestError(f"inputs {sorted(inputs)} differ from the signature's "
                               f"{sorted(specs)}")
        return {name: to_tensor(name, inputs[name], spec) for name, spec in specs.items()}
    if len(specs) != 1:
        raise RequestError(f"the signature has inputs {sorted(specs)}: 'inputs' must be an "
                           "object naming them")
    (name, spec), = specs.items()
    return {name: to_tensor(name, inputs, spec)}


def predict(version: LoadedVersion, body: Any) -> dict[str, Any]:
    """Answers a ``:predict`` request body (parsed JSON) with ``predictions`` or ``outputs``."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    if ("instances" in body) == ("inputs" in body):
        raise RequestError("the request needs exactly one of 'instances' (row format) or "
                           "'inputs' (columnar format)")
    unknown = set(body) - {"signature_name", "instances", "inputs"}
    if unknown:
        raise RequestError(f"unknown request fields {sorted(unknown)}; valid: signature_name, "
                           "instances, inputs")
    signature_name = body.get("signature_name") or DEFAULT_SIGNATURE
    if not isinstance(signature_name, str) or signature_name not in version.signatures:
        raise RequestError(f"unknown signature_name {signature_name!r}; valid: "
                           f"{', '.join(sorted(version.signatures))}")
    signature = version.signatures[signature_name]
    specs = _input_specs(signature)
    row = "instances" in body
    inputs = (_row_inputs(body["instances"], specs) if row
              else _columnar_inputs(body["inputs"], specs))
    try:
        outputs = signature(**inputs)
    except (tf.errors.InvalidArgumentError, ValueError, TypeError) as error:
        message = getattr(error, "message", None) or str(error)
        raise RequestError(f"the model rejected the input: {message.splitlines()[0]}") from None
    as_json = {name: to_json(name, value) for name, value in sorted(outputs.items())}
    if not row:
        return {"outputs": next(iter(as_json.values())) if len(as_json) == 1 else as_json}
    batch = len(body["instances"])
    if any(len(value) != batch for value in as_json.values()):
        raise RequestError("the signature's outputs do not have the instances' batch size; "
                           "use the columnar 'inputs' format")
    if len(as_json) == 1:
        return {"predictions": next(iter(as_json.values()))}
    return {"predictions": [{name: value[i] for name, value in as_json.items()}
                            for i in range(batch)]}


# --- status and metadata ---------------------------------------------------------------------


def model_status(versions: list[int]) -> dict[str, Any]:
    """``GetModelStatusResponse`` JSON listing ``versions`` (newest first) as AVAILABLE."""
    response = get_model_status_pb2.GetModelStatusResponse()
    for version in sorted(versions, reverse=True):
        status = response.model_version_status.add()
        status.version = version
        status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        status.status.SetInParent()  # error_code OK, error_message "" (printed explicitly).
    return json_format.MessageToDict(response, always_print_fields_with_no_presence=True,
                                     preserving_proto_field_name=True)


def model_metadata(name: str, version: int, loaded: LoadedVersion) -> dict[str, Any]:
    """``GetModelMetadataResponse`` JSON: the model spec and its ``SignatureDef`` map."""
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for key, signature_def in loaded.signature_defs.items():
        signature_map.signature_def[key].CopyFrom(signature_def)
    signature_json = json_format.MessageToDict(
        signature_map, always_print_fields_with_no_presence=True,
        preserving_proto_field_name=True)
    return {"model_spec": {"name": name, "signature_name": "", "version": str(version)},
            "metadata": {"signature_def": signature_json}}


# --- the Flask app ---------------------------------------------------------------------------


def create_app(repository: ModelRepository,
               max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> flask.Flask:
    """The Flask app serving ``repository`` with TF Serving's REST API (see module docstring);
    bodies over ``max_request_bytes`` get 413."""
    app = flask.Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = max_request_bytes
    app.json.sort_keys = False

    def error(message: str, status: int) -> flask.Response:
        response = flask.jsonify({"error": message})
        response.status_code = status
        return response

    @app.errorhandler(RequestError)
    def request_error(exc: RequestError) -> flask.Response:
        return error(str(exc), exc.status)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> flask.Response:
        if exc.code == 413:
            return error(f"request body larger than the limit of {max_request_bytes} bytes", 413)
        if exc.code == 404:
            return error(f"no such path {flask.request.path}: use /v1/models/<name>"
                         "[/versions/<n>][/metadata|:predict]", 404)
        return error(exc.description or exc.name, exc.code or 500)

    @app.errorhandler(Exception)
    def internal_error(exc: Exception) -> flask.Response:
        app.logger.exception("request failed")
        return error(f"internal error: {type(exc).__name__}: {exc}", 500)

    @app.get("/v1/models/<name>")
    @app.get("/v1/models/<name>/versions/<int:version>")
    def status(name: str, version: int | None = None) -> Any:
        versions = repository.versions(name)
        if version is not None:
            versions = [repository.resolve(name, version)]
        elif not versions:
            raise RequestError(f"Servable not found for request: Latest({name})", 404)
        return model_status(versions)

    @app.get("/v1/models/<name>/metadata")
    @app.get("/v1/models/<name>/versions/<int:version>/metadata")
    def metadata(name: str, version: int | None = None) -> Any:
        version = repository.resolve(name, version)
        return model_metadata(name, version, repository.load(name, version))

    @app.post("/v1/models/<name>:predict")
    @app.post("/v1/models/<name>/versions/<int:version>:predict")
    def predict_route(name: str, version: int | None = None) -> Any:
        loaded = repository.load(name, repository.resolve(name, version))
        try:
            body = json.loads(flask.request.get_data(cache=False))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RequestError(f"the request body is not valid JSON: {exc}") from None
        return predict(loaded, body)

    return app
