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

both serving signatures resize to the training image size when the input size differs.

Video encoders (backbones taking ``[batch, time, height, width, 3]`` clips) export as a video
feature vector (:class:`HubVideoEncoderModule`): ``__call__`` on float32 clips in [0, 1] of any
length and size → ``[batch, features]``, and ``serving_default`` on uint8 ``frames``
``[batch, time, height, width, 3]`` → ``{"features"}``, frames resized to the training size.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from selfsup.export.layout import atomic_version_dir
from selfsup.export.model_card import build_model_card, write_model_card
from selfsup.models.backbone import FEATURE_ENDPOINT, variable_map

SERVING_DEFAULT = "serving_default"
SERVING_BYTES = "serving_bytes"
IMAGES_INPUT = "images"
BYTES_INPUT = "image_bytes"
FRAMES_INPUT = "frames"
FEATURES_OUTPUT = "features"

_HUB_IMAGES = tf.TensorSpec([None, None, None, 3], tf.float32, name=IMAGES_INPUT)
_HUB_CLIPS = tf.TensorSpec([None, None, None, None, 3], tf.float32, name=FRAMES_INPUT)


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

    def __call__(self, images: tf.Tensor, training: bool) -> tf.Tensor:
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
            return tf.cast(outputs[FEATURE_ENDPOINT], tf.float32)


class _HubModule(tf.Module):
    """The Hub reusable-SavedModel part shared by image and video exports: ``__call__``
    traced for both training modes, ``variables``, ``trainable_variables``,
    ``regularization_losses``. Subclasses add their serving functions (every tf.function with
    an input signature on the module is saved, so each export holds only its own)."""

    # tf.Module computes these as properties; the Hub convention needs saved attributes.
    variables = None
    trainable_variables = None
    hub_input_spec = _HUB_IMAGES

    def __init__(self, backbone: keras.Model, image_size: int | tuple[int, int]) -> None:
        super().__init__(name="selfsup_encoder")
        self._image_size = normalize_image_size(image_size)
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
        self.variables = list(self._forward.copies.values())
        self.trainable_variables = [v for v in self.variables if v.trainable]
        self.regularization_losses = []
        for training in (False, True):
            self.__call__.get_concrete_function(self.hub_input_spec, training=training)

    def _example_input(self) -> np.ndarray:
        return np.zeros((1, *self._image_size, 3), np.float32)

    @tf.function
    def __call__(self, images: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Hub API: float32 RGB in [0, 1], any size → ``[batch, num_features]``."""
        return self._forward(images, training=training)


class HubEncoderModule(_HubModule):
    """The exported object of an image encoder: Hub ``__call__`` API plus the two TF Serving
    signatures."""

    @tf.function(
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name=IMAGES_INPUT)])
    def serve_images(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        """uint8 RGB images → features, resized to the export image size."""
        floats = tf.cast(images, tf.float32) / 255.0
        return {FEATURES_OUTPUT: self._forward(
            _resize_if_needed(floats, self._image_size), training=False)}

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
        return {FEATURES_OUTPUT: self._forward(images, training=False)}

    def serving_signatures(self) -> dict[str, tf.types.experimental.ConcreteFunction]:
        """The signatures to save, with input names ``images`` and ``image_bytes``."""
        return {
            SERVING_DEFAULT: self.serve_images.get_concrete_function(),
            SERVING_BYTES: self.serve_bytes.get_concrete_function(),
        }


class HubVideoEncoderModule(_HubModule):
    """The exported object of a video encoder: Hub ``__call__`` on float32 clips ``[batch,
    time, height, width, 3]`` in [0, 1] (any length and size) and ``serving_default`` on uint8
    ``frames``; both give ``[batch, num_features]``."""

    hub_input_spec = _HUB_CLIPS
    # Frames of the example clip that builds and checks the backbone (any length works).
    EXAMPLE_FRAMES = 2

    def _example_input(self) -> np.ndarray:
        return np.zeros((1, self.EXAMPLE_FRAMES, *self._image_size, 3), np.float32)

    @tf.function(input_signature=[
        tf.TensorSpec([None, None, None, None, 3], tf.uint8, name=FRAMES_INPUT)])
    def serve_frames(self, frames: tf.Tensor) -> dict[str, tf.Tensor]:
        """uint8 RGB clips → features, frames resized to the export image size."""
        floats = tf.cast(frames, tf.float32) / 255.0
        return {FEATURES_OUTPUT: self._forward(
            _resize_if_needed(floats, self._image_size), training=False)}

    def serving_signatures(self) -> dict[str, tf.types.experimental.ConcreteFunction]:
        """The one serving signature, with input name ``frames``."""
        return {SERVING_DEFAULT: self.serve_frames.get_concrete_function()}


def is_video_encoder(backbone: keras.Model) -> bool:
    """Whether ``backbone`` takes clips (a :class:`~selfsup.models.video_backbone.VideoBackbone`
    or anything declaring ``input_rank = 5``)."""
    return getattr(backbone, "input_rank", 4) == 5


def _backbone_config(backbone: keras.Model) -> dict[str, Any]:
    try:
        return dict(backbone.get_config())
    except NotImplementedError:
        return {}


def export_encoder(
    backbone: keras.Model,
    export_dir: str | os.PathLike,
    model_name: str,
    version: int | None = None,
    *,
    image_size: int | tuple[int, int],
    metadata: dict[str, Any],
) -> pathlib.Path:
    """Exports ``backbone`` to ``<export_dir>/<model_name>/<version>/`` and returns that path.

    ``version=None`` picks the next integer after the existing versions (1 for the first);
    an existing version raises :class:`~selfsup.export.layout.VersionExistsError` (a
    ValueError). The directory appears atomically and a failed export leaves nothing behind.
    ``metadata`` (task, backbone, dataset, metrics, ...) goes into the model card in
    ``assets.extra/``.
    """
    size = normalize_image_size(image_size)
    with atomic_version_dir(export_dir, model_name, version) as (temp_dir, version):
        video = is_video_encoder(backbone)
        module = (HubVideoEncoderModule if video else HubEncoderModule)(backbone, size)
        tf.saved_model.save(module, str(temp_dir), signatures=module.serving_signatures())
        card = build_model_card(
            model_name, version, size, module.num_features, dict(metadata),
            backbone_config=_backbone_config(backbone), video=video,
        )
        write_model_card(temp_dir, card)
    return pathlib.Path(export_dir) / model_name / str(version)
