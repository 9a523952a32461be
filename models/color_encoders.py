"""Encoders that see only part of an image's colour: the lightness-only input of colorization.

Zhang, Isola & Efros, "Colorful Image Colorization", ECCV 2016: the network's input is the L
channel of CIE Lab, centred (L − 50). :class:`LightnessEncoder` takes RGB in [0, 1] like every
backbone, computes L / 100 and feeds it, repeated on 3 channels, to an inner backbone, whose own
input scaling maps [0, 1] to [−1, 1], i.e. (L − 50) / 50: the paper's centred L. Users probing
or fine-tuning the exported encoder on colour images therefore feed it lightness only, as the
paper evaluates its colorization network.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from selfsup.datasets.color import rgb_to_lightness
from selfsup.models.backbone import Backbone

LIGHTNESS_RANGE = 100.0


def lightness_input(images: tf.Tensor) -> tf.Tensor:
    """RGB ``[b, h, w, 3]`` in [0, 1] → L / 100 ``[b, h, w, 3]`` (L repeated on 3 channels)."""
    lightness = rgb_to_lightness(images) / LIGHTNESS_RANGE
    return tf.tile(lightness, [1, 1, 1, 3])


class LightnessEncoder(Backbone):
    """A backbone fed the lightness of its RGB input only (Zhang et al. 2016's L input).

    Returns the inner backbone's endpoints unchanged and has no variables of its own, so the
    inner backbone can be shared with other tasks (``multitask``).
    """

    def __init__(self, inner: keras.Model, **kwargs) -> None:
        super().__init__(**kwargs)
        self.inner = inner
        try:
            inner_config = dict(inner.get_config())
        except NotImplementedError:
            inner_config = {"name": inner.name}
        self._config = {"input": "lightness", "inner": inner_config}

    def call(self, images, training=None):
        return dict(self.inner(lightness_input(images), training=training))
