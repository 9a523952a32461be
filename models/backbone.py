"""The contract every backbone follows, and the backbone registry.

A backbone is a ``keras.Model`` whose ``call(images, training=None)`` takes float32 RGB images
``[batch, height, width, 3]`` in [0, 1] and returns an ordered dict of named endpoints (input to
output), ending with ``"pool"``: the global-average-pooled feature vector. Every endpoint can be
probed (``selfsup-eval``) or exported (``selfsup-export``).
"""

from __future__ import annotations

import keras

from selfsup.models.normalization import BatchNormalization
from selfsup.models.registry import Registry

BACKBONES: Registry[keras.Model] = Registry("backbone")

FEATURE_ENDPOINT = "pool"
# Inputs up to this size (Fashion-MNIST 28, CIFAR 32, STL-10 at 64) get a network's small-image
# stem, which keeps the resolution instead of dividing it by 4 at once.
SMALL_STEM_MAX_INPUT = 64
STEMS = ("auto", "imagenet", "small")


def resolve_stem(stem: str, input_size: int | None) -> str:
    """``"auto"`` → ``"small"`` for inputs up to SMALL_STEM_MAX_INPUT px, else ``"imagenet"``."""
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {', '.join(STEMS)}, got {stem!r}")
    if stem != "auto":
        return stem
    return "small" if input_size is not None and input_size <= SMALL_STEM_MAX_INPUT else "imagenet"


class Backbone(keras.Model):
    """Base of every backbone: the endpoint-dict contract above, plus its bookkeeping.

    Subclasses build their layers in ``__init__``, store their constructor arguments in
    ``self._config`` (for ``get_config``) and return ordered endpoints from ``call``.
    """

    _config: dict

    def output_specs(self, input_shape: tuple) -> dict[str, tuple]:
        """Endpoint name → output shape for images of ``input_shape`` ([batch, h, w, 3]).

        An unbuilt backbone is first built by a real call on one image: a symbolic call would
        create its variables without the backbone's own name in their paths (``stem_conv/...``
        instead of ``backbone/stem_conv/...``), and those paths are the checkpoint keys.
        """
        if not self.built:
            self(keras.ops.zeros((1, *input_shape[1:])), training=False)
        specs = self.compute_output_spec(keras.KerasTensor(input_shape))
        return {name: tuple(spec.shape) for name, spec in specs.items()}

    def get_config(self) -> dict:
        return {**super().get_config(), **self._config}


def build_backbone(backbone: str, **kwargs) -> keras.Model:
    """Builds the registered backbone ``backbone`` (unknown names list the valid ones).

    ``kwargs`` go to its constructor (``input_size``, ``synchronized_bn``, ``name``, …).
    """
    return BACKBONES.build(backbone, **kwargs)


BATCH_NORM_EPSILON = 1e-5  # torchvision / He et al.; keras.applications uses 1.001e-5


def make_batch_norm(synchronized: bool, name: str | None = None,
                    epsilon: float | None = None) -> keras.layers.BatchNormalization:
    """BatchNorm with the momentum and (unless given) epsilon of the torchvision ResNets.

    ``synchronized=True`` computes batch statistics across all replicas of a tf.distribute
    strategy, so results do not depend on how the global batch is split. ``epsilon=1.001e-5``
    matches ``keras.applications`` networks, so their weights load with identical outputs.
    """
    return BatchNormalization(
        momentum=0.9, epsilon=BATCH_NORM_EPSILON if epsilon is None else epsilon,
        synchronized=synchronized, name=name)


def variable_map(layer: keras.layers.Layer) -> dict[str, keras.Variable]:
    """``layer``'s variables keyed by their path below ``layer`` (stable across builds).

    Keras prefixes variable paths with the names of enclosing layers, which Keras makes unique
    per process (``res_net_1``); cutting at ``layer``'s own name removes that dependence. Used
    for checkpoint keys and for the names of exported variables.
    """
    mapping = {}
    for variable in layer.variables:
        parts = variable.path.split("/")
        key = "/".join(parts[parts.index(layer.name) + 1:]) if layer.name in parts else (
            variable.path)
        if key in mapping:
            raise ValueError(f"two variables of {layer.name} share the path {key!r}")
        mapping[key] = variable
    return mapping
