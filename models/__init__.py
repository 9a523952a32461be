"""Backbones (2D networks returning named endpoints) and heads, with the backbone registry."""

# Importing a family's module registers its backbones.
from selfsup.models import alexnet, densenet, googlenet, resnet, vgg  # noqa: F401
from selfsup.models.backbone import BACKBONES, FEATURE_ENDPOINT, Backbone, build_backbone
from selfsup.models.registry import ConfigError, Registry

__all__ = ["BACKBONES", "FEATURE_ENDPOINT", "Backbone", "ConfigError", "Registry",
           "build_backbone"]
