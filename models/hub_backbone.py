"""Any TF2 image feature-vector SavedModel from TF Hub as a trainable backbone (``hub:<handle>``).

``--backbone=hub:<path or URL>`` wraps a reusable SavedModel (ours from ``selfsup-export`` or a
third party's: ``__call__(images[, training])`` on float32 RGB ``[batch, height, width, 3]`` in
[0, 1] → ``[batch, features]``) as a backbone with one endpoint, ``pool``. The module is loaded
through the Keras 3 Hub layer (:class:`~selfsup.export.keras_layer.HubEncoderLayer`), which tracks
its variables so the optimizer trains them and passes ``training`` to the module (BatchNorm uses
batch statistics while training). So a published encoder can be pretrained further with any of
our image tasks, probed, and exported again.

An http(s) URL (a ``.tar.gz`` whose root is the SavedModel directory, or a server answering
``?tf-hub-format=compressed``) is downloaded once into the TF Hub cache (``$TFHUB_CACHE_DIR``).
The run config keeps the handle as given (``backbone: "hub:<handle>"``), so ``restore_encoder``
loads the same module again and then restores the trained weights from the checkpoint, whose
keys are ``backbone/hub/<variable name>`` (the module's variable names, ``/`` → ``_``).

With ``all_endpoints=True`` an export of ``selfsup-export`` (which has an ``endpoints`` function
and the ``selfsup_encoder.json`` asset) also gives every other endpoint of the original encoder,
in encoder order before ``pool``: those come from the export's inference-only trace, so they are
frozen (no gradient; BatchNorm in inference mode) and only ``pool`` trains.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from typing import Any

import keras
import tensorflow as tf

# keras_layer imports only keras and tf (selfsup.export's package init is lazy): no cycle.
from keras.src.backend.common.stateless_scope import get_stateless_scope  # No public accessor.

from selfsup.export.keras_layer import HubEncoderLayer
from selfsup.models.backbone import BACKBONES, FEATURE_ENDPOINT, Backbone
from selfsup.models.registry import ConfigError

HUB_PREFIX = "hub:"
HUB_USAGE = "hub:<path or URL> (a TF2 image feature-vector SavedModel)"


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


class HubBackbone(Backbone):
    """A Hub image feature-vector SavedModel as a backbone: ``call`` → ``{"pool": features}``.

    ``handle`` is a local SavedModel directory or an http(s) URL; its traced ``__call__`` must
    return ``[batch, features]``. ``trainable=False`` freezes the module (and its BatchNorm
    statistics). ``input_size`` and ``synchronized_bn`` are accepted for the common backbone
    interface and ignored: the module takes any size it was traced for, and its BatchNorm is
    whatever it was exported with.
    """

    def __init__(self, handle: str | os.PathLike, input_size: int | None = None,
                 synchronized_bn: bool = False, trainable: bool = True,
                 all_endpoints: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        handle = os.fspath(handle)
        if not handle:
            raise ConfigError(f"empty hub handle; use {HUB_USAGE}")
        self.handle = handle
        self._config = dict(handle=handle, input_size=input_size, trainable=trainable,
                            all_endpoints=all_endpoints)
        path = _resolve(handle)
        # The wrapped variables' paths start with the backbone's name (variable_map cuts there),
        # as for every other backbone: "backbone/hub/<module variable name, / → _>".
        self.encoder = _load_layer(handle, path, trainable, f"{self.name}/hub")
        # Checked on the traced output signature, not by a call: a call would fail in the
        # cross-replica context of a distribution strategy's scope, where tasks build this.
        module = self.encoder._module
        try:
            features = _concrete_call(module, False if self.encoder.takes_training else None)
            features = features.structured_outputs
        except (AttributeError, ValueError) as error:
            raise ConfigError(f"{handle}: no traced __call__ for images: "
                              f"{_first_line(error)}") from None
        shape = getattr(features, "shape", None)
        if shape is None or shape.rank != 2 or shape[-1] is None:
            got = f"shape {shape}" if shape is not None else type(features).__name__
            raise ConfigError(f"{handle} is not an image feature vector: __call__ returns "
                              f"{got}, not [batch, features]")
        self.num_features = int(shape[-1])
        self._endpoint_names: tuple[str, ...] = ()
        if all_endpoints:
            self._endpoint_names = _exported_endpoint_names(handle, self.encoder._module)

    def call(self, images, training: bool | None = None) -> dict[str, Any]:
        outputs = {}
        if self._endpoint_names:
            # The export's inference trace (sorted dict on reload): frozen, in encoder order.
            endpoints = self.encoder._module.endpoints(images, training=False)
            outputs = {name: tf.stop_gradient(endpoints[name])
                       for name in self._endpoint_names if name != FEATURE_ENDPOINT}
        features = self.encoder(images, training=training)
        outputs[FEATURE_ENDPOINT] = keras.ops.cast(features, "float32")
        return outputs

    def output_specs(self, input_shape: tuple) -> dict[str, tuple]:
        """Endpoint name → shape; ``pool`` is ``[batch, num_features]`` at any image size."""
        if not self._endpoint_names:
            return {FEATURE_ENDPOINT: (input_shape[0], self.num_features)}
        outputs = self(tf.zeros((1, *input_shape[1:])), training=False)
        return {name: (input_shape[0], *value.shape[1:]) for name, value in outputs.items()}


def _resolve(handle: str) -> str:
    """The local SavedModel directory of ``handle`` (downloaded into the Hub cache if a URL)."""
    # Imported here: selfsup.tasks imports selfsup.models.
    from selfsup.tasks.eval_subjects import resolve_saved_model

    return resolve_saved_model(handle)


def _accepts_training(module: Any) -> bool:
    """Whether the loaded module's ``__call__`` takes a ``training`` argument (ours does; a
    third party's may not)."""
    try:
        return "training" in inspect.signature(module.__call__).parameters
    except (TypeError, ValueError):
        return False


class HubFeatureVectorLayer(HubEncoderLayer):
    """:class:`HubEncoderLayer` that also calls modules whose ``__call__`` takes no
    ``training`` (a third party's feature vector: it then always runs as exported), puts its
    variable paths below ``variable_scope``, and runs inside a ``keras.StatelessScope`` whose
    mapping gives its variables other tf.Variables (as ``export_encoder`` traces a backbone on
    the export's own copies of the variables).
    """

    def __init__(self, handle: str, trainable: bool, variable_scope: str, **kwargs) -> None:
        # Set before the parent's __init__, which loads the module and wraps its variables.
        object.__setattr__(self, "_variable_scope", variable_scope)
        super().__init__(handle, trainable=trainable, **kwargs)
        self.takes_training = _accepts_training(self._module)
        # The module's variables, by the id of the Keras variable wrapping each.
        by_id = {id(variable): variable for variable in self._module.variables}
        self._module_variables = {id(wrapper): by_id[id(wrapper.value)]
                                  for wrapper in self.variables}

    def _track_existing(self, variable: tf.Variable, trainable: bool) -> None:
        # Only the Keras wrappers get the scope (their paths are the checkpoint keys); the
        # module is loaded outside it, so its own variable names stay as exported.
        with contextlib.ExitStack() as scopes:
            for name in self._variable_scope.split("/"):
                scopes.enter_context(keras.name_scope(name))
            super()._track_existing(variable, trainable)

    def call(self, inputs, training: bool | None = None):
        training = bool(training) and self.trainable
        if tf.distribute.has_strategy() and tf.distribute.in_cross_replica_context():
            # Loaded under a strategy's scope, the module's variables are distributed and its
            # functions run only per replica (the trainer's build call is cross-replica).
            strategy = tf.distribute.get_strategy()
            per_replica = strategy.run(self._call_in_replica, args=(inputs, training))
            return strategy.experimental_local_results(per_replica)[0]
        return self._call_in_replica(inputs, training)

    def _call_in_replica(self, inputs, training: bool):
        substitutes = self._substitute_handles()
        if substitutes:
            return self._call_on(substitutes, inputs, training)
        if self.takes_training:
            return self._module(inputs, training=training)
        return self._module(inputs)

    def _substitute_handles(self) -> dict[int, tf.Tensor]:
        """Module variable handle id → the resource a StatelessScope maps its wrapper to."""
        scope = get_stateless_scope()
        if scope is None:
            return {}
        substitutes = {}
        for wrapper in self.variables:
            value = scope.get_current_value(wrapper)
            if value is None:
                continue
            substitutes[id(self._module_variables[id(wrapper)].handle)] = _read_handle(value)
        return substitutes

    def _call_on(self, substitutes: dict[int, tf.Tensor], inputs, training: bool):
        """The module's traced ``__call__`` reading (and updating) the substituted variables."""
        function = _concrete_call(self._module, training if self.takes_training else None)
        captures = [substitutes.get(id(capture), capture)
                    for capture in function.captured_inputs]
        # No public API calls a concrete function on other captured variables.
        return function._call_flat([tf.convert_to_tensor(inputs, tf.float32)], captures)


def _read_handle(value: Any) -> tf.Tensor:
    """The resource handle of the tf.Variable a StatelessScope maps a wrapped variable to."""
    if not isinstance(value, tf.Variable):
        raise NotImplementedError(
            "a Hub module's graph reads its own variables: a StatelessScope may map them only "
            f"to other tf.Variables, got {type(value).__name__}")
    return value.handle


def _concrete_call(module: Any, training: bool | None) -> Any:
    """The module's ``__call__`` trace for ``training`` (any, when None)."""
    for function in module.__call__.concrete_functions:
        args, kwargs = function.structured_input_signature
        traced = args[1] if len(args) > 1 else kwargs.get("training")
        if training is None or traced == training:
            return function
    raise ValueError(f"the module has no __call__ traced for training={training}")


def _load_layer(handle: str, path: str, trainable: bool, scope: str) -> keras.layers.Layer:
    try:
        return HubFeatureVectorLayer(path, trainable, scope, name="hub")
    except (OSError, ValueError, tf.errors.OpError) as error:
        raise ConfigError(f"cannot load {handle} as a Hub image feature vector: "
                          f"{_first_line(error)}") from None


def _exported_endpoint_names(handle: str, module: Any) -> tuple[str, ...]:
    """The endpoint names (encoder order) of a ``selfsup-export``; ConfigError otherwise."""
    from selfsup.tasks.eval_subjects import read_encoder_info

    info = read_encoder_info(module)
    if info is None or not hasattr(module, "endpoints") or info.get("video"):
        raise ConfigError(f"{handle} is not an image encoder exported by selfsup-export (no "
                          "endpoints function); use all_endpoints=False")
    return tuple(info["endpoints"])


def hub_backbone_builder(handle: str) -> functools.partial:
    """The builder of backbone ``hub:<handle>`` (nothing is loaded until it is called)."""
    if not handle:
        raise ConfigError(f"empty hub handle; use {HUB_USAGE}")
    return functools.partial(HubBackbone, handle)


BACKBONES.register_prefix(HUB_PREFIX, hub_backbone_builder, HUB_USAGE)
