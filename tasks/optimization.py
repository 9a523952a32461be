"""Optimizers and learning-rate schedules by name (all Keras 3 core; see BUILD.md for the
tensorflow-addons pieces they replace)."""

from __future__ import annotations

import keras

from selfsup.models.registry import ConfigError

OPTIMIZERS = ("sgd", "adam", "adamw", "lamb")
SCHEDULES = ("constant", "cosine")
SGD_MOMENTUM = 0.9  # Gidaris et al. 2018 and most SSL recipes: SGD, Nesterov momentum 0.9


def make_schedule(name: str, learning_rate: float, train_steps: int, warmup_steps: int = 0):
    """``constant`` or ``cosine`` (decay to 0 over ``train_steps``, linear warm-up first)."""
    if name not in SCHEDULES:
        raise ConfigError(f"unknown lr schedule {name!r}; valid names: {', '.join(SCHEDULES)}")
    if name == "constant":
        return learning_rate
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else learning_rate,
        decay_steps=max(1, train_steps - warmup_steps),
        warmup_target=learning_rate if warmup_steps else None,
        warmup_steps=warmup_steps,
    )


def make_optimizer(name: str, learning_rate, weight_decay: float = 0.0,
                   loss_scale: bool = False, beta_1: float | None = None,
                   ) -> keras.optimizers.Optimizer:
    """A Keras 3 optimizer; ``weight_decay`` is decoupled (multiplied by the learning rate).

    ``loss_scale`` wraps it in a LossScaleOptimizer for float16 mixed precision. ``beta_1``
    sets the first-moment decay of the Adam family (ignored by SGD).
    """
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; valid names: {', '.join(OPTIMIZERS)}")
    decay = weight_decay or None
    moments = {} if beta_1 is None else {"beta_1": beta_1}
    if name == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate, momentum=SGD_MOMENTUM, nesterov=True,
                                         weight_decay=decay)
    elif name == "adam":
        optimizer = keras.optimizers.Adam(learning_rate, weight_decay=decay, **moments)
    elif name == "adamw":
        optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay, **moments)
    else:
        optimizer = keras.optimizers.Lamb(learning_rate, weight_decay=decay, **moments)
    if loss_scale:
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
