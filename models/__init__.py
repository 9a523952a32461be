"""Backbones (2D networks returning named endpoints) and heads, with the backbone registry."""

from selfsup.models import resnet  # noqa: F401  (registers the ResNet family)
from selfsup.models.backbone import BACKBONES, FEATURE_ENDPOINT, build_backbone
from selfsup.models.registry import ConfigError, Registry

__all__ = ["BACKBONES", "FEATURE_ENDPOINT", "ConfigError", "Registry", "build_backbone"]
