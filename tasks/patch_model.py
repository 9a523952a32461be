"""A shared-weight encoder over a set of patches, for the context pretext tasks.

Noroozi & Favaro 2016 (jigsaw, the "context-free network") and Doersch et al. 2015 (relative
position, "late fusion") run one encoder with shared weights on every tile or patch, join the
per-patch features, and classify the arrangement with fully connected layers. Here the encoder
is the registry backbone the probes restore (``model.backbone``), called once on the
``[b·n, t, t, 3]`` stack of all patches. Its ``"pool"`` vectors are concatenated per *group* of
patch indices (jigsaw: one group of all nine tiles in input order; relative position: one
(centre, neighbour) pair per group), and every group is classified by the same head, so a
patch encoded once can serve several examples.
"""

from __future__ import annotations

import re

import keras
import tensorflow as tf

from selfsup.models import FEATURE_ENDPOINT
from selfsup.models.heads import MLPHead
from selfsup.models.registry import ConfigError


class PatchSetModel(keras.Model):
    """Shared-weight encoder per patch, grouped concatenated features, head (Noroozi 2016,
    Doersch 2015).

    ``call(patches)`` takes ``[b, num_patches, t, t, 3]`` and returns ``{"features":
    [b·G, k·d], "logits": [b·G, num_classes]}`` for the ``G`` groups of ``k`` patch indices,
    rows ordered image-major (row ``g + G·i`` is group ``g`` of image ``i``).
    """

    def __init__(self, backbone: keras.Model, num_patches: int,
                 groups: tuple[tuple[int, ...], ...], num_classes: int,
                 hidden_units: tuple[int, ...] = (), synchronized_bn: bool = False,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        if len({len(group) for group in groups}) != 1:
            raise ValueError(f"every group needs the same number of patches, got {groups}")
        if any(not 0 <= index < num_patches for group in groups for index in group):
            raise ValueError(f"group indices must be in 0..{num_patches - 1}, got {groups}")
        self.backbone = backbone
        self.num_patches = num_patches
        self.groups = tuple(tuple(group) for group in groups)
        self.head = MLPHead(hidden_units, num_classes, synchronized_bn=synchronized_bn,
                            name="head")

    def call(self, patches, training=None):
        size, channels = patches.shape[-3], patches.shape[-1]
        stacked = tf.reshape(patches, [-1, size, size, channels])
        features = self.backbone(stacked, training=training)[FEATURE_ENDPOINT]
        width = features.shape[-1]
        per_patch = tf.reshape(features, [-1, self.num_patches, width])
        grouped = tf.gather(per_patch, tf.constant(self.groups, tf.int32), axis=1)
        joined = tf.reshape(grouped, [-1, len(self.groups[0]) * width])
        return {"features": joined, "logits": self.head(joined, training=training)}


def build_checked(model: PatchSetModel, patch_size: int, backbone_name: str) -> PatchSetModel:
    """Builds ``model`` on one dummy patch set; a backbone that cannot encode ``patch_size`` px
    patches raises a one-line ConfigError instead of failing later in the first step.

    Backbones are built for the full image size (that is what probes and exports use), and an
    ImageNet stem built for large images may not take small patches. Building through the
    model (not the backbone alone) keeps the variables' paths under ``backbone/``.
    """
    try:
        model(tf.zeros([1, model.num_patches, patch_size, patch_size, 3]), training=False)
    except ValueError as error:
        raise ConfigError(f"backbone {backbone_name!r} cannot encode {patch_size} px patches "
                          f"({_cause(error)}); use larger patches or a small-image stem "
                          f"(backbone_kwargs stem='small')") from None
    return model


def _cause(error: ValueError) -> str:
    """The original message inside Keras' "Exception encountered when calling ..." wrapper."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(error).splitlines()]
    lines = [line for line in lines if line and not line.startswith("Exception encountered")]
    return lines[0] if lines else type(error).__name__
