"""Exports a backbone as a TF Hub image feature vector that TF Serving can also serve.

The Keras 3 backbone is wrapped in a plain ``tf.Module`` that holds the backbone's underlying
``tf.Variable`` objects and tf.functions calling it; the Keras model itself is not part of the
saved object graph (saving a Keras 3 model directly gives a SavedModel whose variables do not
restore under the TF1 loader used by ``saved_model_cli`` and TF Serving). The SavedModel has:

* the reusable-SavedModel API of TF Hub: ``__call__(images, training=False)`` traced for both
  training modes, on float32 RGB ``[batch, height, width, 3]`` in [0, 1] → ``[batch, features]``,
  plus ``variables``, ``trainable_variables`` and ``regularization_losses``;
* ``serving_default``: uint8 ``images`` ``[batch, height, width, 3]`` → ``{"features"}``;
* ``serving_bytes``: encoded images ``image_bytes`` ``[batch]`` → ``{"features"}``;
* ``representation``: uint8 ``images`` as ``serving_default`` → every backbone endpoint
  global-average-pooled to ``[batch, channels]``, one output per endpoint name;

the serving signatures resize to the training image size when the input size differs.

Each endpoint is also a named sub-object: ``pooled.<endpoint>(images)`` (e.g.
``loaded.pooled.res3(images)``) takes float32 RGB in [0, 1] of any size, like ``__call__``, and
returns that endpoint global-average-pooled to ``[batch, channels]`` (inference mode), the
TF2 counterpart of the per-layer outputs of Kolesnikov et al. 2019's TF-Hub modules.

For evaluation (``selfsup-eval --saved_model``) the module also has ``endpoints(images,
training=False)``: float32 images in [0, 1] of any size (not resized, like ``__call__``) → the
backbone's raw endpoint dict (``[batch, h, w, c]`` maps and the ``[batch, features]`` ``pool``,
float32, unpooled), traced for inference only. A loaded ``endpoints`` returns its dict with keys
sorted (SavedModel stores dicts that way); the encoder order is in the metadata asset
``assets/selfsup_encoder.json`` (object attribute ``encoder_info``, a ``tf.saved_model.Asset``):
``{"format": "selfsup_encoder", "version": 1, "task", "backbone", "backbone_kwargs", "dataset",
"image_size": [h, w], "video": bool, "clip_length", "endpoints": [names in encoder order],
"endpoint_shapes": {name: [null, ...] at image_size}}`` (batch and, for video, time as
null). The same names and shapes are in the model card.

Video encoders (backbones taking ``[batch, time, height, width, 3]`` clips) export as a video
feature vector (:class:`HubVideoEncoderModule`): ``__call__`` on float32 clips in [0, 1] of any
length and size → ``[batch, features]``, and ``serving_default`` on uint8 ``frames``
``[batch, time, height, width, 3]`` → ``{"features"}``, frames resized to the training size;
its ``endpoints`` take float32 clips and its ``representation`` uint8 ``frames`` (video endpoints
are averaged over time and space).

Point-cloud encoders (backbones taking ``[batch, points, 3]``, e.g. PointNet) export as a
point-cloud feature vector (:class:`HubPointEncoderModule`): ``__call__`` on float32 xyz
``[batch, points, 3]`` (any number of points: PointNet max-pools over them) → ``[batch,
features]``; ``serving_default`` on float32 ``points`` ``[batch, points, 3]`` → ``{"features"}``
(nothing is resized or rescaled: the caller prepares the clouds as the model card says);
``representation`` and ``pooled.<endpoint>`` max-pool the per-point endpoints over the points
(the encoder's own symmetric function, as :mod:`selfsup.tasks.point_probe` does). Their
``selfsup_encoder.json`` has ``"modality": "points"`` and ``"num_points"`` (the training cloud
size) and ``image_size`` null; every export records its ``modality`` (image, video, points).

TF Serving conventions (checked by the tests on the saved ``saved_model.pb``): every signature
has method name ``tensorflow/serving/predict`` (:data:`PREDICT_METHOD`) under the ``serve`` tag,
with explicit input/output keys — ``serving_default``: input ``images`` (uint8 ``[-1, -1, -1,
3]``, tensor ``serving_default_images:0``; ``frames`` ``[-1, -1, -1, -1, 3]`` for video) →
output ``features`` (float32 ``[-1, num_features]``); ``serving_bytes``: ``image_bytes`` →
``features``; ``representation``: ``images`` → one output per endpoint name. The version
directory also holds ``assets.extra/tf_serving_warmup_requests`` (three ``serving_default``
PredictRequests addressed to the model name, :mod:`selfsup.export.warmup`), written inside the
atomic version directory like everything else.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from selfsup.export.layout import atomic_version_dir
from selfsup.export.model_card import build_model_card, jsonable, write_model_card
from selfsup.export.warmup import warmup_inputs, write_warmup_requests
from selfsup.models.backbone import FEATURE_ENDPOINT, variable_map

SERVING_DEFAULT = "serving_default"
SERVING_BYTES = "serving_bytes"
IMAGES_INPUT = "images"
BYTES_INPUT = "image_bytes"
FRAMES_INPUT = "frames"
POINTS_INPUT = "points"
FEATURES_OUTPUT = "features"
REPRESENTATION = "representation"
# The evaluator's metadata: an asset of the SavedModel, reachable as ``<object>.encoder_info``.
ENCODER_INFO_FILE = "selfsup_encoder.json"
ENCODER_INFO_ATTRIBUTE = "encoder_info"
ENCODER_INFO_FORMAT = "selfsup_encoder"
ENCODER_INFO_VERSION = 1
# Frames per warm-up clip of a video export whose metadata gives no clip_length.
WARMUP_CLIP_LENGTH = 2
# Points per cloud of a point export whose metadata gives no num_points (pointcloud_ae's
# default, selfsup.tasks.pointcloud_ae.NUM_POINTS).
DEFAULT_NUM_POINTS = 1024
MODALITY_IMAGE, MODALITY_VIDEO, MODALITY_POINTS = "image", "video", "points"
PREDICT_METHOD = "tensorflow/serving/predict"

# The named sub-object holding one pooled-endpoint function per endpoint name.
POOLED_ENDPOINTS = "pooled"

_HUB_IMAGES = tf.TensorSpec([None, None, None, 3], tf.float32, name=IMAGES_INPUT)
_HUB_CLIPS = tf.TensorSpec([None, None, None, None, 3], tf.float32, name=FRAMES_INPUT)
_HUB_POINTS = tf.TensorSpec([None, None, 3], tf.float32, name=POINTS_INPUT)


def normalize_image_size(image_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """``image_size`` as ``(height, width)`` of positive ints (an int means a square)."""
    size = (image_size, image_size) if isinstance(image_size, int | np.integer) else image_size
    size = tuple(size)
    if len(size) != 2 or not all(isinstance(s, int | np.integer) and s > 0 for s in size):
        raise ValueError(f"image_size must be a positive int or (height, width), got {image_size}")
    return int(size[0]), int(size[1])


def _resize_if_needed(images: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """Resizes float ``[..., h, w, c]`` images to ``size`` unless they already have that size."""
    shape = tf.shape(images)
    same = tf.logical_and(tf.equal(shape[-3], size[0]), tf.equal(shape[-2], size[1]))

    def resize() -> tf.Tensor:
        # tf.image.resize takes one leading batch axis: fold any others (e.g. time) into it.
        flat = tf.reshape(images, tf.concat([[-1], shape[-3:]], 0))
        flat = tf.image.resize(flat, size, antialias=True)
        return tf.reshape(flat, tf.concat([shape[:-3], [size[0], size[1], 3]], 0))

    resized = tf.cond(same, lambda: images, resize)
    return tf.ensure_shape(resized, images.shape[:-3].concatenate([size[0], size[1], 3]))


class _Forward:
    """Runs the backbone on the export's own copies of its variables (in a ``StatelessScope``).

    The copies are named by their Keras paths below the model (the Keras variables' tf.Variables
    are all named ``<model>/kernel`` etc.; tf-keras and h5 files want unique names) and belong
    to the export only, so tracing and training the export never touches the Keras model.
    A plain (non-trackable) holder, so the Keras model does not enter the saved object graph.
    """

    def __init__(self, backbone: keras.Model) -> None:
        self.backbone = backbone
        with tf.init_scope():
            self.copies = {
                id(variable): tf.Variable(variable.numpy(), name=path,
                                          trainable=variable.trainable)
                for path, variable in variable_map(backbone).items()}

    def __call__(self, images: tf.Tensor, training: bool) -> dict[str, tf.Tensor]:
        """Every endpoint of the backbone (float32), in the backbone's order."""
        variables = self.backbone.variables
        mapping = [(v, self.copies[id(v)]) for v in variables]
        with keras.StatelessScope(state_mapping=mapping) as scope:
            before = [scope.get_current_value(v) for v in variables]
            outputs = self.backbone(images, training=training)
        # BatchNorm moving statistics (and any RNG state) that the call updated.
        updates = [
            self.copies[id(v)].assign(scope.get_current_value(v))
            for v, old in zip(variables, before, strict=True)
            if scope.get_current_value(v) is not old
        ]
        with tf.control_dependencies(updates):
            return {name: tf.cast(value, tf.float32) for name, value in outputs.items()}


def global_average(endpoint: tf.Tensor) -> tf.Tensor:
    """``[batch, ..., channels]`` → ``[batch, channels]``: the mean over every axis between
    (space, and time for video endpoints); a ``[batch, features]`` vector is returned as is."""
    rank = endpoint.shape.rank
    if rank is None or rank < 2:
        raise ValueError(f"cannot pool an endpoint of shape {endpoint.shape}")
    return endpoint if rank == 2 else tf.reduce_mean(endpoint, axis=list(range(1, rank - 1)))


class _HubModule(tf.Module):
    """The Hub reusable-SavedModel part shared by image and video exports: ``__call__``
    traced for both training modes, ``variables``, ``trainable_variables``,
    ``regularization_losses``, and ``endpoints`` (inference only). Subclasses add their serving
    functions (every tf.function with an input signature on the module is saved, so each export
    holds only its own).

    The backbone is traced twice: for training (``__call__(training=True)``) and for inference
    (``endpoints``); every inference function calls that one inference trace.
    """

    # tf.Module computes these as properties; the Hub convention needs saved attributes.
    variables = None
    trainable_variables = None
    hub_input_spec = _HUB_IMAGES

    def __init__(self, backbone: keras.Model, image_size: int | tuple[int, int] | None) -> None:
        super().__init__(name="selfsup_encoder")
        # None for point clouds (they have no image size).
        self._image_size = None if image_size is None else normalize_image_size(image_size)
        probe = backbone(self._example_input(), training=False)
        if not isinstance(probe, dict) or FEATURE_ENDPOINT not in probe:
            raise ValueError(
                f"backbone must return a dict of endpoints with {FEATURE_ENDPOINT!r}, "
                f"got {type(probe).__name__}"
            )
        if len(probe[FEATURE_ENDPOINT].shape) != 2:
            raise ValueError(f"endpoint {FEATURE_ENDPOINT!r} must be [batch, num_features]")
        self.num_features = int(probe[FEATURE_ENDPOINT].shape[-1])
        self._forward = _Forward(backbone)
        # Endpoint name → shape at the export image size, in encoder order (batch, and time
        # for clips, as None); kept on the plain holder so it stays out of the saved graph.
        self._forward.endpoint_shapes = {name: self._documented_shape(value.shape)
                                         for name, value in probe.items()}
        self.variables = list(self._forward.copies.values())
        self.trainable_variables = [v for v in self.variables if v.trainable]
        self.regularization_losses = []
        self.endpoints.get_concrete_function(self.hub_input_spec, training=False)
        for training in (False, True):
            self.__call__.get_concrete_function(self.hub_input_spec, training=training)
        self.pooled = tf.Module(name=POOLED_ENDPOINTS)
        for name in self.endpoint_shapes:
            if not name.isidentifier() or hasattr(self.pooled, name):
                raise ValueError(f"endpoint name {name!r} cannot name a sub-object of the "
                                 f"export's {POOLED_ENDPOINTS!r}")
            setattr(self.pooled, name, self._pooled_endpoint(name))

    @property
    def endpoint_shapes(self) -> dict[str, list[int | None]]:
        """Endpoint name → ``[None, ...]`` shape at the export image size, encoder order."""
        return self._forward.endpoint_shapes

    def _example_input(self) -> np.ndarray:
        return np.zeros((1, *self._image_size, 3), np.float32)

    def _documented_shape(self, shape: tf.TensorShape) -> list[int | None]:
        return [None, *(int(d) for d in shape[1:])]

    def _pool(self, endpoint: tf.Tensor) -> tf.Tensor:
        """One endpoint → ``[batch, channels]`` for ``pooled`` and ``representation``."""
        return global_average(endpoint)

    def _pooled_endpoint(self, name: str) -> tf.types.experimental.PolymorphicFunction:
        """``inputs → _pool(endpoints(inputs)[name])``, traced for inference."""

        def pooled(images: tf.Tensor) -> tf.Tensor:
            return self._pool(self._infer(images)[name])

        function = tf.function(pooled, input_signature=[self.hub_input_spec])
        function.get_concrete_function()
        return function

    def _infer(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """The inference trace of ``endpoints`` (called, not traced again, inside other
        functions)."""
        inference = self.endpoints.get_concrete_function(self.hub_input_spec, training=False)
        return inference(images)

    @tf.function
    def endpoints(self, images: tf.Tensor, training: bool = False) -> dict[str, tf.Tensor]:
        """float32 RGB in [0, 1], any size → every backbone endpoint (float32, unpooled)."""
        return self._forward(images, training=training)

    @tf.function
    def __call__(self, images: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Hub API: float32 RGB in [0, 1], any size → ``[batch, num_features]``."""
        if training:
            return self._forward(images, training=True)[FEATURE_ENDPOINT]
        return self._infer(images)[FEATURE_ENDPOINT]

    def _representation(self, uint8_images: tf.Tensor) -> dict[str, tf.Tensor]:
        """uint8 images (or clips) → every endpoint global-average-pooled, resized to the
        export image size first."""
        floats = tf.cast(uint8_images, tf.float32) / 255.0
        endpoints = self._infer(_resize_if_needed(floats, self._image_size))
        return {name: self._pool(value) for name, value in endpoints.items()}


class HubEncoderModule(_HubModule):
    """The exported object of an image encoder: Hub ``__call__`` API, ``endpoints``, and the
    TF Serving signatures ``serving_default``, ``serving_bytes`` and ``representation``."""

    @tf.function(
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name=IMAGES_INPUT)])
    def serve_images(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """uint8 RGB images → features, resized to the export image size."""
        floats = tf.cast(images, tf.float32) / 255.0
        return {FEATURES_OUTPUT: self._infer(
            _resize_if_needed(floats, self._image_size))[FEATURE_ENDPOINT]}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT)])
    def serve_bytes(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        """Encoded images (PNG/JPEG/GIF/BMP; grayscale becomes RGB) → features."""
        height, width = self._image_size

        def decode(encoded: tf.Tensor) -> tf.Tensor:
            image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
            return _resize_if_needed(tf.cast(image, tf.float32) / 255.0, self._image_size)

        images = tf.map_fn(
            decode, image_bytes, fn_output_signature=tf.TensorSpec([height, width, 3], tf.float32)
        )
        return {FEATURES_OUTPUT: self._infer(images)[FEATURE_ENDPOINT]}

    @tf.function(
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name=IMAGES_INPUT)])
    def serve_representation(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """uint8 RGB images → ``{endpoint: [batch, channels]}`` global averages."""
        return self._representation(images)

    def serving_signatures(self) -> dict[str, tf.types.experimental.ConcreteFunction]:
        """The signatures to save, with input names ``images`` and ``image_bytes``."""
        return {
            SERVING_DEFAULT: self.serve_images.get_concrete_function(),
            SERVING_BYTES: self.serve_bytes.get_concrete_function(),
            REPRESENTATION: self.serve_representation.get_concrete_function(),
        }


class HubVideoEncoderModule(_HubModule):
    """The exported object of a video encoder: Hub ``__call__`` on float32 clips ``[batch,
    time, height, width, 3]`` in [0, 1] (any length and size) and ``serving_default`` on uint8
    ``frames``; both give ``[batch, num_features]``. ``endpoints`` takes float clips and
    ``representation`` uint8 ``frames``."""

    hub_input_spec = _HUB_CLIPS
    # Frames of the example clip that builds and checks the backbone (any length works).
    EXAMPLE_FRAMES = 2

    def _example_input(self) -> np.ndarray:
        return np.zeros((1, self.EXAMPLE_FRAMES, *self._image_size, 3), np.float32)

    def _documented_shape(self, shape: tf.TensorShape) -> list[int | None]:
        # Endpoints [b, t, ...] have as many steps as the clip (or a fixed fraction of it).
        if len(shape) == 2:
            return [None, int(shape[1])]
        return [None, None, *(int(d) for d in shape[2:])]

    @tf.function(input_signature=[
        tf.TensorSpec([None, None, None, None, 3], tf.uint8, name=FRAMES_INPUT)])
    def serve_frames(self, frames: tf.Tensor) -> dict[str, tf.Tensor]:
        """uint8 RGB clips → features, frames resized to the export image size."""
        floats = tf.cast(frames, tf.float32) / 255.0
        return {FEATURES_OUTPUT: self._infer(
            _resize_if_needed(floats, self._image_size))[FEATURE_ENDPOINT]}

    @tf.function(input_signature=[
        tf.TensorSpec([None, None, None, None, 3], tf.uint8, name=FRAMES_INPUT)])
    def serve_representation(self, frames: tf.Tensor) -> dict[str, tf.Tensor]:
        """uint8 RGB clips → ``{endpoint: [batch, channels]}`` averages over time and space."""
        return self._representation(frames)

    def serving_signatures(self) -> dict[str, tf.types.experimental.ConcreteFunction]:
        """``serving_default`` and ``representation``, with input name ``frames``."""
        return {SERVING_DEFAULT: self.serve_frames.get_concrete_function(),
                REPRESENTATION: self.serve_representation.get_concrete_function()}


class HubPointEncoderModule(_HubModule):
    """The exported object of a point-cloud encoder (PointNet, Qi et al. 2017): Hub
    ``__call__`` on float32 xyz ``[batch, points, 3]`` (any number of points) and
    ``serving_default`` on float32 ``points``, both → ``[batch, num_features]``;
    ``representation`` and ``pooled.<endpoint>`` max-pool per-point endpoints over the points."""

    hub_input_spec = _HUB_POINTS

    def __init__(self, backbone: keras.Model, num_points: int = DEFAULT_NUM_POINTS) -> None:
        if int(num_points) < 1:
            raise ValueError(f"num_points must be positive, got {num_points}")
        # Read by _example_input during the base __init__ (a plain int: not tracked).
        self._num_points = int(num_points)
        super().__init__(backbone, image_size=None)

    @property
    def num_points(self) -> int:
        """The cloud size the export was built at (the training run's ``num_points``)."""
        return self._num_points

    def _example_input(self) -> np.ndarray:
        return np.zeros((1, self._num_points, 3), np.float32)

    def _documented_shape(self, shape: tf.TensorShape) -> list[int | None]:
        # Per-point endpoints [b, n, c] have as many rows as the cloud has points.
        if len(shape) == 2:
            return [None, int(shape[1])]
        return [None, None, *(int(d) for d in shape[2:])]

    def _pool(self, endpoint: tf.Tensor) -> tf.Tensor:
        # PointNet's symmetric function: the max over the points (as the SVM probe reads them).
        return endpoint if endpoint.shape.rank == 2 else tf.reduce_max(endpoint, axis=1)

    @tf.function(input_signature=[_HUB_POINTS])
    def serve_points(self, points: tf.Tensor) -> dict[str, tf.Tensor]:
        """float32 xyz clouds → features (used as given: no centring or scaling)."""
        return {FEATURES_OUTPUT: self._infer(points)[FEATURE_ENDPOINT]}

    @tf.function(input_signature=[_HUB_POINTS])
    def serve_representation(self, points: tf.Tensor) -> dict[str, tf.Tensor]:
        """float32 xyz clouds → ``{endpoint: [batch, channels]}``, max over the points."""
        return {name: self._pool(value) for name, value in self._infer(points).items()}

    def serving_signatures(self) -> dict[str, tf.types.experimental.ConcreteFunction]:
        """``serving_default`` and ``representation``, with input name ``points``."""
        return {SERVING_DEFAULT: self.serve_points.get_concrete_function(),
                REPRESENTATION: self.serve_representation.get_concrete_function()}


def signature_input_specs(
    function: tf.types.experimental.ConcreteFunction,
) -> dict[str, tf.TensorSpec]:
    """Input name → TensorSpec of a serving function (positional inputs named by their spec,
    as in the saved SignatureDef)."""
    args, kwargs = function.structured_input_signature
    return {**{spec.name: spec for spec in args}, **kwargs}


def read_signature_defs(version_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``SignatureDef`` protos of a SavedModel's ``serve`` MetaGraph, read from its
    ``saved_model.pb`` (what TF Serving sees: method name, input/output keys, tensor names)."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel.FromString(
        (pathlib.Path(version_dir) / "saved_model.pb").read_bytes())
    for meta_graph in proto.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return dict(meta_graph.signature_def)
    raise ValueError(f"{version_dir} has no MetaGraph tagged 'serve'")


def is_video_encoder(backbone: keras.Model) -> bool:
    """Whether ``backbone`` takes clips (a :class:`~selfsup.models.video_backbone.VideoBackbone`
    or anything declaring ``input_rank = 5``)."""
    return getattr(backbone, "input_rank", 4) == 5


def is_point_encoder(backbone: keras.Model) -> bool:
    """Whether ``backbone`` takes point clouds ``[batch, points, 3]`` (``input_rank = 3``, as
    :class:`~selfsup.models.pointnet.PointNet` declares)."""
    return getattr(backbone, "input_rank", 4) == 3


def _backbone_config(backbone: keras.Model) -> dict[str, Any]:
    try:
        return dict(backbone.get_config())
    except NotImplementedError:
        return {}


def build_encoder_info(*, image_size: tuple[int, int] | None,
                       endpoint_shapes: dict[str, list], video: bool, metadata: dict[str, Any],
                       num_points: int | None = None) -> dict[str, Any]:
    """``selfsup_encoder.json`` as a dict: format tag, training setup from ``metadata`` (None
    where absent) and the endpoints in encoder order with their shapes at ``image_size``
    (a point encoder: ``num_points`` given, ``image_size`` None, ``modality`` points)."""
    modality = (MODALITY_POINTS if num_points is not None
                else MODALITY_VIDEO if video else MODALITY_IMAGE)
    return {
        "format": ENCODER_INFO_FORMAT, "version": ENCODER_INFO_VERSION,
        "task": metadata.get("task"), "backbone": metadata.get("backbone"),
        "backbone_kwargs": metadata.get("backbone_kwargs") or {},
        "dataset": metadata.get("dataset"),
        "image_size": None if image_size is None else list(image_size), "video": video,
        "clip_length": metadata.get("clip_length") if video else None,
        "modality": modality, "num_points": num_points,
        "endpoints": list(endpoint_shapes), "endpoint_shapes": endpoint_shapes,
    }


def export_encoder(
    backbone: keras.Model,
    export_dir: str | os.PathLike,
    model_name: str,
    version: int | None = None,
    *,
    image_size: int | tuple[int, int] | None,
    metadata: dict[str, Any],
    num_points: int | None = None,
) -> pathlib.Path:
    """Exports ``backbone`` to ``<export_dir>/<model_name>/<version>/`` and returns that path.

    ``version=None`` picks the next integer after the existing versions (1 for the first);
    an existing version raises :class:`~selfsup.export.layout.VersionExistsError` (a
    ValueError). The directory appears atomically and a failed export leaves nothing behind.
    ``metadata`` (task, backbone, dataset, metrics, ...) goes into the model card in
    ``assets.extra/``; task, backbone, backbone_kwargs, dataset and clip_length also go into
    the metadata asset ``assets/selfsup_encoder.json``. TF Serving's warm-up file
    ``assets.extra/tf_serving_warmup_requests`` holds three ``serving_default`` requests
    addressed to ``model_name`` (:mod:`selfsup.export.warmup`).

    A point-cloud encoder (:func:`is_point_encoder`) ignores ``image_size`` and is built at
    ``num_points`` points (default: ``metadata["num_points"]``, else
    :data:`DEFAULT_NUM_POINTS`); its warm-up requests carry point clouds of that size.
    """
    points = is_point_encoder(backbone)
    if points:
        size = None
        num_points = int(num_points or metadata.get("num_points") or DEFAULT_NUM_POINTS)
    else:
        if image_size is None:
            raise ValueError("an image or video encoder needs image_size")
        size = normalize_image_size(image_size)
        num_points = None
    with (atomic_version_dir(export_dir, model_name, version) as (temp_dir, version),
          tempfile.TemporaryDirectory() as staging):
        video = is_video_encoder(backbone)
        if points:
            module = HubPointEncoderModule(backbone, num_points)
        else:
            module = (HubVideoEncoderModule if video else HubEncoderModule)(backbone, size)
        info = build_encoder_info(image_size=size, endpoint_shapes=module.endpoint_shapes,
                                  video=video, metadata=metadata, num_points=num_points)
        info_path = pathlib.Path(staging) / ENCODER_INFO_FILE
        info_path.write_text(json.dumps(jsonable(info), indent=2) + "\n")
        # An asset is copied into <export>/assets/ and found again through the loaded object.
        setattr(module, ENCODER_INFO_ATTRIBUTE, tf.saved_model.Asset(str(info_path)))
        signatures = module.serving_signatures()
        tf.saved_model.save(module, str(temp_dir), signatures=signatures)
        write_warmup_requests(temp_dir, model_name, warmup_inputs(
            signature_input_specs(signatures[SERVING_DEFAULT]), size,
            time_steps=int(metadata.get("clip_length") or WARMUP_CLIP_LENGTH),
            num_points=num_points))
        card = build_model_card(
            model_name, version, size, module.num_features, dict(metadata),
            backbone_config=_backbone_config(backbone), video=video,
            endpoint_shapes=module.endpoint_shapes, num_points=num_points,
        )
        write_model_card(temp_dir, card)
    return pathlib.Path(export_dir) / model_name / str(version)
