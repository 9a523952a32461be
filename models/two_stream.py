"""Two-stream network: an appearance stream and a motion stream, fused late (Simonyan et al.).

Simonyan & Zisserman, "Two-Stream Convolutional Networks for Action Recognition in Videos",
NeurIPS 2014: a spatial ConvNet sees the RGB frames, a temporal ConvNet sees motion (a stack
of optical-flow fields), the two have separate weights and their class scores are fused at the
end (averaged, or an SVM on them).

Here both streams are registered video backbones (``stream_backbone``, default ``r3d_18``)
with their own weights. The motion stream's input is computed in the graph from the clip:
frame differences ``x[t+1] − x[t]`` (``motion="difference"``), mapped from [−1, 1] to [0, 1]
as ``(d + 1) / 2`` so the stream gets the same input contract as any backbone (a still clip is
uniform grey 0.5). A clip of ``t`` frames gives ``t − 1`` difference frames; a clip of one
frame has no motion and gives one difference frame of zeros (0.5 after the mapping).
Optical flow cannot be computed in the graph: the ``rgb_flow`` task
(:mod:`selfsup.tasks.rgb_flow`) trains an RGB and a flow stream on OpenCV Farneback flow
cached per video (:mod:`selfsup.datasets.optical_flow`).

Late fusion: ``pool`` is the concatenation of the two streams' ``pool`` vectors, so a linear
classifier on it is the sum of one linear classifier per stream: the streams are fused at their
class scores, as in the paper, but by a learned weighted sum of logits (the paper averages the
two softmax outputs, or trains an SVM on them).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from selfsup.models.backbone import FEATURE_ENDPOINT, build_backbone
from selfsup.models.registry import ConfigError
from selfsup.models.video_backbone import (
    VideoBackbone,
    is_video_backbone,
    register_video_backbone,
    video_backbone_names,
)

MOTIONS = ("difference",)
RGB_PREFIX = "rgb_"
MOTION_PREFIX = "motion_"


def frame_differences(clips: tf.Tensor) -> tf.Tensor:
    """Clips ``[b, t, h, w, c]`` in [0, 1] → ``(x[t+1] − x[t] + 1) / 2`` ``[b, max(t−1, 1), …]``.

    Values stay in [0, 1] (0.5 = no change). A one-frame clip gives one frame of zero
    difference, i.e. 0.5 everywhere.
    """
    differences = clips[:, 1:] - clips[:, :-1]
    time = clips.shape[1] if clips.shape[1] is not None else tf.shape(clips)[1]
    # t − 1 ≥ 1 frames need no padding; a single frame gets one frame of zeros.
    missing = tf.maximum(2 - time, 0) if isinstance(time, tf.Tensor) else max(2 - time, 0)
    differences = tf.pad(differences, [[0, 0], [0, missing], [0, 0], [0, 0], [0, 0]])
    return (differences + 1.0) / 2.0


class TwoStream(VideoBackbone):
    """Two-stream network with late fusion (Simonyan & Zisserman 2014; module docstring).

    Endpoints: every endpoint of the RGB stream prefixed ``rgb_``, then every endpoint of the
    motion stream prefixed ``motion_``, then ``pool`` = ``[rgb_pool, motion_pool]``
    concatenated. ``input_size``, ``width_multiplier`` and ``synchronized_bn`` go to both
    streams (``stream_backbone_kwargs`` can override them); the streams are named
    ``rgb_stream`` and ``motion_stream``.
    """

    def __init__(
        self,
        stream_backbone: str = "r3d_18",
        stream_backbone_kwargs: dict | None = None,
        motion: str = "difference",
        input_size: int | None = None,
        width_multiplier: float = 1.0,
        synchronized_bn: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not is_video_backbone(stream_backbone):
            raise ConfigError(f"two_stream's stream_backbone takes clips, {stream_backbone!r} "
                              f"takes images; video backbones: {', '.join(video_backbone_names())}")
        if motion not in MOTIONS:
            raise ConfigError(f"motion must be one of {', '.join(MOTIONS)}, got {motion!r} "
                              "(optical flow comes as a precomputed input, not yet supported)")
        stream_backbone_kwargs = dict(stream_backbone_kwargs or {})
        self._config = dict(
            stream_backbone=stream_backbone, stream_backbone_kwargs=stream_backbone_kwargs,
            motion=motion, input_size=input_size, width_multiplier=width_multiplier,
            synchronized_bn=synchronized_bn,
        )
        stream_kwargs = dict(input_size=input_size, width_multiplier=width_multiplier,
                             synchronized_bn=synchronized_bn, **stream_backbone_kwargs)
        self.rgb_stream = build_backbone(stream_backbone, **{**stream_kwargs,
                                                             "name": "rgb_stream"})
        self.motion_stream = build_backbone(stream_backbone, **{**stream_kwargs,
                                                                "name": "motion_stream"})
        self.fuse = keras.layers.Concatenate(axis=-1, name="fuse")
        stream_features = [getattr(stream, "num_features", None)
                           for stream in (self.rgb_stream, self.motion_stream)]
        if None not in stream_features:
            self.num_features = sum(stream_features)

    def call(self, clips, training=None):
        rgb = self.rgb_stream(clips, training=training)
        motion = self.motion_stream(frame_differences(clips), training=training)
        endpoints = {f"{RGB_PREFIX}{name}": value for name, value in rgb.items()}
        endpoints.update({f"{MOTION_PREFIX}{name}": value for name, value in motion.items()})
        endpoints[FEATURE_ENDPOINT] = self.fuse([rgb[FEATURE_ENDPOINT], motion[FEATURE_ENDPOINT]])
        return endpoints


register_video_backbone("two_stream", TwoStream)
