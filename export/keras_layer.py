"""A Keras 3 layer around a TF Hub reusable SavedModel (e.g. one written by ``export_encoder``).

``tensorflow_hub.KerasLayer`` is a tf-keras (Keras 2) layer: it cannot be added to a Keras 3 model.
``keras.layers.TFSMLayer`` can, and it tracks the reloaded variables so they fine-tune, but it calls
the SavedModel without ``training``, so BatchNorm always runs in inference mode. This layer calls
the Hub ``__call__(inputs, training=...)`` so BatchNorm uses batch statistics and updates its
moving averages while fine-tuning.
"""

from __future__ import annotations

import os
import re
from typing import Any

import keras
import tensorflow as tf

_URL = re.compile(r"^https?://", re.IGNORECASE)


def load_module(handle: str | os.PathLike) -> Any:
    """Loads a SavedModel from a local/GCS path, or from an http(s) URL through the Hub cache."""
    handle = os.fspath(handle)
    if _URL.match(handle):
        import tensorflow_hub as hub  # Imported lazily: it pulls in tf-keras.

        handle = hub.resolve(handle)
    return tf.saved_model.load(handle)


@keras.saving.register_keras_serializable(package="selfsup")
class HubEncoderLayer(keras.layers.Layer):
    """Keras 3 layer calling a Hub SavedModel's ``__call__``, fine-tunable when ``trainable``.

    ``training`` reaches the SavedModel only when the layer is trainable (as in
    ``hub.KerasLayer``), so a frozen encoder keeps its BatchNorm statistics.
    """

    def __init__(self, handle: str | os.PathLike, trainable: bool = False, **kwargs) -> None:
        super().__init__(trainable=trainable, **kwargs)
        self.handle = os.fspath(handle)
        self._module = load_module(self.handle)
        if not callable(self._module):
            raise ValueError(f"{self.handle} has no __call__; it is not a reusable SavedModel")
        variables = getattr(self._module, "variables", None)
        if variables is None:
            raise ValueError(f"{self.handle} has no 'variables' attribute (not a Hub SavedModel)")
        trainable_ids = {id(v) for v in getattr(self._module, "trainable_variables", [])}
        for variable in variables:
            self._track_existing(variable, trainable=id(variable) in trainable_ids)
        self._build_at_init()

    def _track_existing(self, variable: tf.Variable, trainable: bool) -> None:
        # A Keras variable initialised from a tf.Variable wraps it (no copy), so optimizer
        # updates reach the variables the loaded functions read.
        wrapped = keras.Variable(
            initializer=variable,
            shape=variable.shape,
            dtype=variable.dtype,
            trainable=trainable,
            name=variable.name.split(":")[0].replace("/", "_"),
        )
        self._track_variable(wrapped)

    def call(self, inputs, training: bool | None = None):
        training = bool(training) and self.trainable
        return self._module(inputs, training=training)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "handle": self.handle}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> HubEncoderLayer:
        """Reloads the SavedModel; refused in Keras safe mode, like ``keras.layers.TFSMLayer``.

        A SavedModel carries graph code, so ``keras.models.load_model`` of a model holding this
        layer needs ``safe_mode=False`` (or ``keras.config.enable_unsafe_deserialization()``).
        """
        if _in_safe_mode() is not False:
            raise ValueError(
                "Deserializing a HubEncoderLayer loads an external SavedModel, which is disallowed "
                "in safe mode; pass safe_mode=False to keras.models.load_model if you trust "
                f"{config.get('handle')!r}"
            )
        return cls(**config)


def _in_safe_mode() -> bool | None:
    """Keras' ambient safe-mode flag (None when no deserialization scope is active)."""
    from keras.src.saving import serialization_lib  # No public accessor in Keras 3.15.

    return serialization_lib.in_safe_mode()
