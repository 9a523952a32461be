"""Backbones (2D and video networks returning named endpoints) and heads, with the backbone
registry."""

# Importing a family's module registers its backbones (2D: alexnet … vgg; video: c3d, lrcn,
# two_stream, video_resnet; point clouds: pointnet); hub_backbone resolves every
# "hub:<path or URL>".
from selfsup.models import (  # noqa: F401
    alexnet,
    c3d,
    densenet,
    googlenet,
    hub_backbone,
    lrcn,
    pointnet,
    resnet,
    two_stream,
    vgg,
    video_resnet,
)
from selfsup.models.backbone import BACKBONES, FEATURE_ENDPOINT, Backbone, build_backbone
from selfsup.models.registry import ConfigError, Registry

__all__ = ["BACKBONES", "FEATURE_ENDPOINT", "Backbone", "ConfigError", "Registry",
           "build_backbone"]
