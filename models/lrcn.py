"""LRCN: a 2D ConvNet on every frame and an LSTM over the frames' features (Donahue et al.).

Donahue, Hendricks, Guadarrama, Rohrbach, Venugopalan, Saenko & Darrell, "Long-term Recurrent
Convolutional Networks for Visual Recognition and Description", CVPR 2015, §4 (activity
recognition): every frame of a clip goes through the same image ConvNet, its feature vector
(fc6 in the paper) is fed to an LSTM, the network predicts the activity at every time step and
the per-step predictions are averaged into the clip's prediction.

Here the image ConvNet is any registered 2D backbone (``frame_backbone``, default
``resnet_small``) and its ``pool`` vector is the LSTM's input; frames are folded into the batch
(``[b·t, h, w, 3]``), so the backbone runs once per clip batch, not once per frame. ``pool`` is
the LSTM output averaged over time: a linear classifier on it gives exactly the average of the
per-step linear predictions (logits), the paper's averaging done before the softmax.

Constants: ``lstm_units = 256``, the LSTM of the activity-recognition LRCN-fc6 (§4 compares an
LSTM on fc6 with one on fc7; the authors' released activity-recognition model definition has a
256-unit LSTM on fc6). BatchNorm statistics of the frame backbone in training
are therefore taken over all b·t frames of a batch.
"""

from __future__ import annotations

import inspect

import keras
import tensorflow as tf

from selfsup.models.backbone import BACKBONES, FEATURE_ENDPOINT, build_backbone
from selfsup.models.pointnet import is_point_backbone, point_backbone_names
from selfsup.models.registry import ConfigError
from selfsup.models.video_backbone import (
    VideoBackbone,
    is_video_backbone,
    register_video_backbone,
    video_backbone_names,
)

LSTM_UNITS = 256  # Donahue et al. 2015, activity recognition: LSTM with 256 hidden units on fc6
FRAME_PREFIX = "frame_"
LSTM_ENDPOINT = "lstm"


def accepts_keyword(builder, keyword: str) -> bool:
    """Whether registered ``builder`` names ``keyword`` among its parameters (not via **kwargs)."""
    try:
        return keyword in inspect.signature(builder).parameters
    except (TypeError, ValueError):
        return False


def static_or_dynamic_shape(x: tf.Tensor) -> list:
    """``x``'s shape: Python ints where they are known when tracing, scalar tensors elsewhere."""
    dynamic = tf.shape(x)
    return [size if size is not None else dynamic[axis] for axis, size in enumerate(x.shape)]


def fold_time(clips: tf.Tensor) -> tf.Tensor:
    """``[b, t, ...]`` → ``[b·t, ...]`` (frames of one clip stay consecutive)."""
    shape = static_or_dynamic_shape(clips)
    return tf.reshape(clips, [-1, *shape[2:]])


def unfold_time(frames: tf.Tensor, batch, time) -> tf.Tensor:
    """``[b·t, ...]`` → ``[b, t, ...]``, the inverse of :func:`fold_time`."""
    return tf.reshape(frames, [batch, time, *static_or_dynamic_shape(frames)[1:]])


def untracked_seed_lstm(units: int, name: str) -> keras.layers.LSTM:
    """``keras.layers.LSTM(units, return_sequences=True)`` without its unused RNG state.

    Keras gives every LSTM cell a SeedGenerator for dropout, whose state variable is named per
    process (``seed_generator_<n>``, outside the model's path). With no dropout it is never read,
    but it would enter ``model.variables`` and so the checkpoint keys, which must not depend on
    how many models a process built. It is removed from the cell's tracked state.
    """
    lstm = keras.layers.LSTM(units, return_sequences=True, name=name)
    lstm.cell._seed_generators.clear()  # see the docstring
    return lstm


class LRCN(VideoBackbone):
    """Long-term Recurrent Convolutional Network (Donahue et al. 2015; module docstring).

    Endpoints: ``frame_<name>`` for every endpoint of the frame backbone, with time restored
    (``[b, t, h', w', c]`` maps, ``[b, t, c]`` vectors; ``frame_pool`` is the LSTM's input),
    ``lstm`` ``[b, t, units]`` (every time step), ``pool`` ``[b, units]`` (mean over time).

    ``width_multiplier`` scales the LSTM units and is passed to the frame backbone when its
    builder takes one (``frame_backbone_kwargs`` can override it); ``input_size`` and
    ``synchronized_bn`` go to the frame backbone, which is named ``frame_encoder``.
    """

    def __init__(
        self,
        frame_backbone: str = "resnet_small",
        frame_backbone_kwargs: dict | None = None,
        lstm_units: int = LSTM_UNITS,
        input_size: int | None = None,
        width_multiplier: float = 1.0,
        synchronized_bn: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if is_video_backbone(frame_backbone) or is_point_backbone(frame_backbone):
            other = {*video_backbone_names(), *point_backbone_names()}
            image_names = [n for n in BACKBONES.names() if n not in other]
            takes = "clips" if is_video_backbone(frame_backbone) else "point clouds"
            raise ConfigError(f"lrcn's frame_backbone takes images, {frame_backbone!r} takes "
                              f"{takes}; image backbones: {', '.join(image_names)}")
        if lstm_units < 1:
            raise ConfigError(f"lstm_units must be a positive integer, got {lstm_units}")
        if width_multiplier <= 0:
            raise ConfigError(f"width_multiplier must be positive, got {width_multiplier}")
        frame_backbone_kwargs = dict(frame_backbone_kwargs or {})
        self._config = dict(
            frame_backbone=frame_backbone, frame_backbone_kwargs=frame_backbone_kwargs,
            lstm_units=lstm_units, input_size=input_size, width_multiplier=width_multiplier,
            synchronized_bn=synchronized_bn,
        )
        frame_kwargs = dict(input_size=input_size, synchronized_bn=synchronized_bn)
        if accepts_keyword(BACKBONES.get(frame_backbone), "width_multiplier"):
            frame_kwargs["width_multiplier"] = width_multiplier
        frame_kwargs.update(frame_backbone_kwargs)
        frame_kwargs["name"] = "frame_encoder"
        self.frame_encoder = build_backbone(frame_backbone, **frame_kwargs)
        self.units = max(1, round(lstm_units * width_multiplier))
        self.lstm = untracked_seed_lstm(self.units, name=LSTM_ENDPOINT)
        self.num_features = self.units

    def call(self, clips, training=None):
        batch, time = static_or_dynamic_shape(clips)[:2]
        frame_endpoints = self.frame_encoder(fold_time(clips), training=training)
        endpoints = {f"{FRAME_PREFIX}{name}": unfold_time(value, batch, time)
                     for name, value in frame_endpoints.items()}
        sequence = self.lstm(endpoints[f"{FRAME_PREFIX}{FEATURE_ENDPOINT}"], training=training)
        endpoints[LSTM_ENDPOINT] = sequence
        endpoints[FEATURE_ENDPOINT] = tf.reduce_mean(sequence, axis=1)
        return endpoints


register_video_backbone("lrcn", LRCN)
