"""TF Serving warm-up requests: ``assets.extra/tf_serving_warmup_requests`` in a version dir.

TF Serving replays the records of that file (a TFRecord of ``tensorflow.serving.PredictionLog``
protos, at most 1000) through the model when it loads a version, before marking it available,
so the first client request does not pay for graph optimisation and memory allocation. Each
record here is a ``predict_log`` whose ``PredictRequest`` names the model and the
``serving_default`` signature and carries small valid inputs (batch sizes 1, 2, 3 by default) of
the signature's dtypes and shapes at the export image size (a point-cloud export: float32
clouds ``[batch, num_points, 3]`` inside the unit ball, its training cloud size).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
WARMUP_BATCH_SIZES = (1, 2, 3)
# TF Serving reads at most this many warm-up records.
MAX_WARMUP_RECORDS = 1000


def warmup_inputs(
    input_specs: Mapping[str, tf.TensorSpec],
    image_size: tuple[int, int] | None,
    time_steps: int = 2,
    batch_sizes: Sequence[int] = WARMUP_BATCH_SIZES,
    seed: int = 0,
    num_points: int | None = None,
) -> list[dict[str, np.ndarray]]:
    """One input dict per batch size for a signature taking images, clips or point clouds.

    Each spec must be ``[batch, height, width, channels]`` or ``[batch, time, height, width,
    channels]`` (unknown dimensions become the batch size, ``time_steps`` and ``image_size``);
    uint8 inputs get random values in [0, 255], float inputs uniform values in [0, 1). With
    ``num_points`` each spec must be a float cloud batch ``[batch, points, 3]``: Gaussian points
    scaled so each cloud's farthest point is at radius 1 (the unit ball of the training data).
    """
    if not input_specs:
        raise ValueError("the signature has no named inputs")
    rng = np.random.default_rng(seed)
    requests = []
    for batch in batch_sizes:
        request = {}
        for name, spec in input_specs.items():
            dims = spec.shape.as_list()
            if num_points is not None:
                request[name] = _warmup_points(rng, name, spec, batch, num_points)
                continue
            if len(dims) not in (4, 5):
                raise ValueError(f"warm-up input {name!r} must be an image or clip batch, "
                                 f"got shape {spec.shape}")
            known = [batch, *([time_steps] if len(dims) == 5 else []), *image_size, dims[-1]]
            shape = [k if d is None else d for d, k in zip(dims, known, strict=True)]
            if spec.dtype == tf.uint8:
                request[name] = rng.integers(0, 256, shape, dtype=np.uint8)
            elif spec.dtype.is_floating:
                request[name] = rng.random(shape).astype(spec.dtype.as_numpy_dtype)
            else:
                raise ValueError(f"no warm-up values for {name!r} of dtype {spec.dtype.name}")
        requests.append(request)
    return requests


def _warmup_points(rng: np.random.Generator, name: str, spec: tf.TensorSpec, batch: int,
                   num_points: int) -> np.ndarray:
    """A ``[batch, num_points, 3]`` cloud batch for a point signature input."""
    dims = spec.shape.as_list()
    if len(dims) != 3 or dims[-1] != 3 or not spec.dtype.is_floating:
        raise ValueError(f"warm-up input {name!r} must be a float point-cloud batch "
                         f"[batch, points, 3], got {spec.dtype.name} {spec.shape}")
    points = rng.normal(size=(batch, num_points, 3))
    points /= np.linalg.norm(points, axis=-1).max(axis=1)[:, None, None]
    return points.astype(spec.dtype.as_numpy_dtype)


def prediction_logs(
    model_name: str, requests: Sequence[Mapping[str, np.ndarray]], signature_name: str
) -> list[prediction_log_pb2.PredictionLog]:
    """``PredictionLog`` protos, one ``predict_log`` per input dict, addressed to
    ``model_name`` / ``signature_name``."""
    if not 0 < len(requests) <= MAX_WARMUP_RECORDS:
        raise ValueError(f"need 1 to {MAX_WARMUP_RECORDS} warm-up requests, got {len(requests)}")
    logs = []
    for inputs in requests:
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature_name))
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        logs.append(prediction_log_pb2.PredictionLog(
            predict_log=prediction_log_pb2.PredictLog(request=request)))
    return logs


def write_warmup_requests(
    version_dir: str | os.PathLike,
    model_name: str,
    requests: Sequence[Mapping[str, np.ndarray]],
    signature_name: str = "serving_default",
) -> pathlib.Path:
    """Writes ``<version_dir>/assets.extra/tf_serving_warmup_requests`` and returns its path."""
    path = pathlib.Path(version_dir) / WARMUP_DIR / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for log in prediction_logs(model_name, requests, signature_name):
            writer.write(log.SerializeToString())
    return path


def read_warmup_requests(path: str | os.PathLike) -> list[prediction_log_pb2.PredictionLog]:
    """The PredictionLog records of a warm-up file, in order."""
    return [prediction_log_pb2.PredictionLog.FromString(record.numpy())
            for record in tf.data.TFRecordDataset(str(path))]
