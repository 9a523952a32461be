"""Small heads that sit on a backbone endpoint: linear classifiers and MLP projectors."""

from __future__ import annotations

import keras

from selfsup.models.backbone import make_batch_norm


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
    """Hidden dense layers with ReLU, then a linear output: the projection MLP g(·) of SimCLR
    (Chen et al. 2020) and MoCo v2 (Chen et al. 2020), and the fully connected heads of the
    context tasks.

    Each hidden layer is followed by BatchNorm when ``batch_norm`` (synchronized across replicas
    when ``synchronized_bn``, so 2 replicas compute what one device does); no hidden layers give
    a linear head (MoCo v1's projection).
    """

    def __init__(self, hidden_units: tuple[int, ...], output_units: int,
                 batch_norm: bool = True, synchronized_bn: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.hidden_units = tuple(hidden_units)
        self.output_units = output_units
        self.batch_norm = batch_norm
        self.synchronized_bn = synchronized_bn
        self.hidden = [keras.layers.Dense(units, use_bias=not batch_norm, name=f"hidden{i}")
                       for i, units in enumerate(self.hidden_units)]
        self.norms = ([make_batch_norm(synchronized_bn, name=f"bn{i}")
                       for i in range(len(self.hidden_units))] if batch_norm else [])
        self.out = keras.layers.Dense(output_units, name="out")

    def call(self, features, training=None):
        x = features
        for index, dense in enumerate(self.hidden):
            x = dense(x)
            if self.batch_norm:
                x = self.norms[index](x, training=training)
            x = keras.ops.relu(x)
        return self.out(x)

    def get_config(self) -> dict:
        return {**super().get_config(), "hidden_units": self.hidden_units,
                "output_units": self.output_units, "batch_norm": self.batch_norm,
                "synchronized_bn": self.synchronized_bn}
