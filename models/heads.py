"""Small heads that sit on a backbone endpoint: linear classifiers and MLP projectors."""

from __future__ import annotations

import keras


class LinearClassifier(keras.layers.Layer):
    """A single dense layer producing class logits (RotNet's 4-way head, linear probes)."""

    def __init__(self, num_classes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.dense = keras.layers.Dense(num_classes, name="logits")

    def call(self, features):
        return self.dense(features)

    def get_config(self) -> dict:
        return {**super().get_config(), "num_classes": self.num_classes}


class MLPHead(keras.layers.Layer):
    """Hidden dense + BatchNorm + ReLU layers then a linear output (SimCLR-style projector)."""

    def __init__(self, hidden_units: tuple[int, ...], output_units: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.hidden_units = tuple(hidden_units)
        self.output_units = output_units
        self.hidden = [keras.layers.Dense(u, use_bias=False, name=f"hidden{i}")
                       for i, u in enumerate(self.hidden_units)]
        self.norms = [keras.layers.BatchNormalization(name=f"bn{i}")
                      for i in range(len(self.hidden_units))]
        self.out = keras.layers.Dense(output_units, name="out")

    def call(self, features, training=None):
        x = features
        for dense, norm in zip(self.hidden, self.norms, strict=True):
            x = keras.ops.relu(norm(dense(x), training=training))
        return self.out(x)

    def get_config(self) -> dict:
        return {**super().get_config(), "hidden_units": self.hidden_units,
                "output_units": self.output_units}
