"""The contract of video backbones, and which registered backbones take video.

A video backbone is a :class:`~selfsup.models.backbone.Backbone` whose ``call(clips,
training=None)`` takes float32 RGB clips ``[batch, time, height, width, 3]`` in [0, 1] and
returns an ordered dict of named endpoints (input to output): feature maps ``[batch, time',
height', width', channels]`` per stage (or ``[batch, time', channels]`` for recurrent ones),
ending with ``"pool"``: ``[batch, features]``, pooled over time and space. Video backbones are
registered in the one backbone registry with :func:`register_video_backbone`, which also
records that they take clips, so tasks can refuse an image backbone for a video task (and the
other way round) before building anything.
"""

from __future__ import annotations

from collections.abc import Callable

import keras

from selfsup.models.backbone import BACKBONES, Backbone
from selfsup.models.pointnet import is_point_backbone
from selfsup.models.registry import ConfigError

CLIP_RANK = 5  # [batch, time, height, width, channels]
_VIDEO_BACKBONE_NAMES: set[str] = set()


class VideoBackbone(Backbone):
    """Base of every video backbone (see the module docstring): clips in, endpoints out."""

    input_rank = CLIP_RANK


def register_video_backbone(name: str, builder: Callable[..., keras.Model]) -> None:
    """Registers ``builder`` as backbone ``name`` and marks it as taking clips."""
    BACKBONES.register(name, builder)
    _VIDEO_BACKBONE_NAMES.add(name)


def is_video_backbone(name: str) -> bool:
    """Whether registered backbone ``name`` takes clips (unknown names list the valid ones)."""
    BACKBONES.get(name)
    return name in _VIDEO_BACKBONE_NAMES


def video_backbone_names() -> list[str]:
    return sorted(_VIDEO_BACKBONE_NAMES)


def check_backbone_modality(name: str, video: bool) -> None:
    """ConfigError unless backbone ``name`` takes clips (``video``) or images (not ``video``);
    point-cloud backbones take neither."""
    points = is_point_backbone(name)
    if is_video_backbone(name) == video and not points:
        return
    kind = "point clouds" if points else "images" if video else "video clips"
    if video:
        raise ConfigError(f"backbone {name!r} takes {kind}, this task takes video; video "
                          f"backbones: {', '.join(video_backbone_names())}")
    image_names = [n for n in BACKBONES.names()
                   if n not in _VIDEO_BACKBONE_NAMES and not is_point_backbone(n)]
    raise ConfigError(f"backbone {name!r} takes {kind}, this task takes images; image "
                      f"backbones: {', '.join(image_names)}")
