"""PointNet encoders of point clouds: a shared per-point MLP and a max-pool over the points.

Qi, Su, Mo & Guibas, "PointNet", CVPR 2017 (the shared MLP and the symmetric max-pool, without
the input and feature transform nets), in the configuration of Achlioptas, Diamanti, Mitliagkas
& Guibas, "Learning Representations and Generative Models for 3D Point Clouds", ICML 2018 (§4
and appendix): five 1×1 convolutions with 64, 128, 128, 256 and k = 128 filters, each followed
by BatchNorm and ReLU, then a feature-wise max over the points; the 128-D result is the
autoencoder's bottleneck and the feature their linear SVM reads.

Registered backbones (``input_rank = 3``: they take ``[batch, points, 3]`` point clouds, not
images or clips, and refuse anything else with a ConfigError):
  * ``pointnet``: Achlioptas et al.'s encoder above;
  * ``pointnet_qi``: PointNet's vanilla MLP widths 64, 64, 64, 128, 1024 (Qi et al., Fig. 2).
Endpoints: ``mlp1`` … ``mlpK`` (``[batch, points, width]``, per point) and ``pool``
(``[batch, width of the last layer]``, the max over the points, which makes the encoder's
output independent of the points' order).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import keras
import tensorflow as tf

from selfsup.models.backbone import BACKBONES, FEATURE_ENDPOINT, Backbone, make_batch_norm
from selfsup.models.registry import ConfigError

POINT_RANK = 3  # [batch, points, xyz]
ACHLIOPTAS_WIDTHS = (64, 128, 128, 256, 128)  # Achlioptas et al. 2018, appendix (AE encoder)
QI_WIDTHS = (64, 64, 64, 128, 1024)  # Qi et al. 2017, Fig. 2 (without the T-nets)
_POINT_BACKBONE_NAMES: set[str] = set()


class PointNet(Backbone):
    """Shared per-point MLP (Dense = 1×1 convolution, BatchNorm, ReLU per layer) and max-pool.

    ``input_size`` is accepted (every backbone builder receives the run's image size) and
    ignored: the network works for any number of points.
    """

    input_rank = POINT_RANK

    def __init__(self, widths: Sequence[int] = ACHLIOPTAS_WIDTHS, synchronized_bn: bool = True,
                 input_size: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        widths = tuple(int(width) for width in widths)
        if not widths or min(widths) <= 0:
            raise ConfigError(f"pointnet widths must be positive, got {widths}")
        self._config = {"widths": widths, "synchronized_bn": synchronized_bn}
        # No bias before BatchNorm: its shift makes one redundant.
        self.dense_layers = [keras.layers.Dense(width, use_bias=False, name=f"mlp{i}_dense")
                             for i, width in enumerate(widths, start=1)]
        self.norms = [make_batch_norm(synchronized_bn, name=f"mlp{i}_bn")
                      for i in range(1, len(widths) + 1)]

    def __call__(self, points, *args, **kwargs):
        # Checked before Keras' __call__, which would wrap the message in several lines.
        shape = tuple(getattr(points, "shape", ()))
        if len(shape) != POINT_RANK or shape[-1] != 3:
            raise ConfigError(f"{self.name} takes point clouds [batch, points, 3], got shape "
                              f"{shape}: image and video tasks, probes and exports need an "
                              f"image or video backbone")
        return super().__call__(points, *args, **kwargs)

    def call(self, points, training=None):
        endpoints = {}
        features = points
        for i, (dense, norm) in enumerate(zip(self.dense_layers, self.norms, strict=True),
                                          start=1):
            features = tf.nn.relu(norm(dense(features), training=training))
            endpoints[f"mlp{i}"] = features
        endpoints[FEATURE_ENDPOINT] = tf.reduce_max(features, axis=1)
        return endpoints


def register_point_backbone(name: str, builder: Callable[..., keras.Model]) -> None:
    """Registers ``builder`` as backbone ``name`` and marks it as taking point clouds."""
    BACKBONES.register(name, builder)
    _POINT_BACKBONE_NAMES.add(name)


def is_point_backbone(name: str) -> bool:
    """Whether registered backbone ``name`` takes point clouds (unknown names list the valid
    ones)."""
    BACKBONES.get(name)
    return name in _POINT_BACKBONE_NAMES


def point_backbone_names() -> list[str]:
    return sorted(_POINT_BACKBONE_NAMES)


register_point_backbone("pointnet", partial(PointNet, widths=ACHLIOPTAS_WIDTHS))
register_point_backbone("pointnet_qi", partial(PointNet, widths=QI_WIDTHS))
