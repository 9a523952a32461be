"""Convolutional recurrent cells over feature maps: a ConvGRU step and a ConvLSTM predictor.

* :class:`ConvGRUCell`: one step of a convolutional GRU (Ballas, Yao, Pal & Courville, "Delving
  Deeper into Convolutional Networks for Learning Video Representations", ICLR 2016: the GRU of
  Cho et al. 2014 with its matrix products replaced by convolutions). DPC (Han, Xie & Zisserman
  2019) aggregates block features with it (kernel 1 × 1) and steps it on its own predictions,
  which is why it is a cell stepped by the caller rather than a sequence layer. Keras has no
  ConvGRU layer.
* :class:`ConvLSTMPredictor`: Keras' own ``ConvLSTM2D`` (Shi et al., "Convolutional LSTM
  Network", NeurIPS 2015) unrolled for a fixed number of future steps from one feature map (the
  encoder's summary), which it reads at every step; used by the ``video_prediction`` task.
"""

from __future__ import annotations

import keras


class ConvGRUCell(keras.layers.Layer):
    """One ConvGRU step (Ballas et al. 2016): ``call(inputs [b, h, w, c], state [b, h, w, u])``
    → new state ``[b, h, w, u]``.

    With ``*`` a 'same' convolution and ``[a, b]`` channel concatenation (Cho et al. 2014's
    gating, h' = z ⊙ h + (1 − z) ⊙ h̃)::

        z = σ(W_z * [x, h] + b_z)      r = σ(W_r * [x, h] + b_r)
        h̃ = tanh(W_h * [x, r ⊙ h] + b_h)
        h' = z ⊙ h + (1 − z) ⊙ h̃

    The update and reset gates share one convolution (``gates``: its first ``units`` output
    channels are z, the last ``units`` r); ``candidate`` computes h̃.
    """

    def __init__(self, units: int, kernel_size: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        if units < 1 or kernel_size < 1:
            raise ValueError("units and kernel_size must be positive")
        self.units = units
        self.kernel_size = kernel_size
        self.gates = keras.layers.Conv2D(2 * units, kernel_size, padding="same", name="gates")
        self.candidate = keras.layers.Conv2D(units, kernel_size, padding="same",
                                             name="candidate")

    def call(self, inputs, state):
        gates = keras.ops.sigmoid(self.gates(keras.ops.concatenate([inputs, state], axis=-1)))
        update, reset = gates[..., :self.units], gates[..., self.units:]
        candidate = keras.ops.tanh(
            self.candidate(keras.ops.concatenate([inputs, reset * state], axis=-1)))
        return update * state + (1.0 - update) * candidate

    def get_config(self) -> dict:
        return {**super().get_config(), "units": self.units, "kernel_size": self.kernel_size}


class ConvLSTMPredictor(keras.layers.Layer):
    """A ConvLSTM (Shi et al. 2015, Keras' ``ConvLSTM2D``) unrolled ``steps`` times from a
    zero state, reading the same conditioning map at every step: ``[b, h, w, c]`` →
    ``[b, steps, h, w, units]`` (the hidden map of each future step).

    Srivastava et al. 2015's future predictor is an LSTM decoder started from the encoder's
    summary; here the summary is the encoder's last feature map and is fed at every step (the
    recurrent state is what distinguishes the steps).
    """

    def __init__(self, steps: int, units: int, kernel_size: int = 3, **kwargs) -> None:
        super().__init__(**kwargs)
        if steps < 1 or units < 1 or kernel_size < 1:
            raise ValueError("steps, units and kernel_size must be positive")
        self.steps = steps
        self.units = units
        self.kernel_size = kernel_size
        self.lstm = keras.layers.ConvLSTM2D(units, kernel_size, padding="same",
                                            return_sequences=True, name="conv_lstm")

    def call(self, conditioning, training=None):
        sequence = keras.ops.repeat(keras.ops.expand_dims(conditioning, 1), self.steps, axis=1)
        return self.lstm(sequence, training=training)

    def get_config(self) -> dict:
        return {**super().get_config(), "steps": self.steps, "units": self.units,
                "kernel_size": self.kernel_size}
