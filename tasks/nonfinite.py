"""Non-finite losses: stop at the step that produced one, or undo that step and go on.

A NaN or Inf loss (bad data, a diverging learning rate) poisons every weight it reaches, and a
checkpoint saved after it is worthless; resuming from it repeats the failure. By default the
loop stops at the first such step, naming it and the last good checkpoint. With skipping on, a
step whose loss or resulting weights are not finite is undone in-graph — every variable of the
model, the optimizers and the metrics goes back to its value before the step, except the step
counters, so the batch counts as consumed, the learning-rate schedule moves on and a resumed
run replays the same data — and training stops only after too many such steps in a row.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import tensorflow as tf


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message names the step."""


def all_finite(variables: Sequence) -> tf.Tensor:
    """Scalar bool: every element of every floating-point variable is finite."""
    checks = [tf.reduce_all(tf.math.is_finite(variable)) for variable in variables
              if tf.as_dtype(variable.dtype).is_floating]
    return tf.reduce_all(tf.stack(checks)) if checks else tf.constant(True)


def undo_if_not_finite(run_step: Callable[[], dict[str, tf.Tensor]], restored: Sequence,
                       watched: Sequence) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    """Runs ``run_step()`` (inside a tf.function, cross-replica context) and, when its
    ``"loss"`` or any variable of ``watched`` is not finite afterwards, puts every variable of
    ``restored`` back to its value before the step. Returns ``(logs, finite)``.

    The strategy-reduced loss is the same on every replica and the assignments happen in
    cross-replica context, so all replicas keep or undo the step together.
    """
    before = [tf.identity(variable) for variable in restored]
    with tf.control_dependencies(before):  # read the old values before the step writes
        logs = run_step()
    finite = tf.math.logical_and(tf.math.is_finite(logs["loss"]), all_finite(watched))

    def undo() -> tf.Tensor:
        with tf.control_dependencies([variable.assign(value)
                                      for variable, value in zip(restored, before, strict=True)]):
            return tf.constant(False)

    finite = tf.cond(finite, lambda: tf.constant(True), undo)
    return logs, finite


class NonFiniteSteps:
    """The loop's policy for non-finite steps: stop at once, or count skips and stop after
    ``max_in_a_row`` consecutive ones."""

    def __init__(self, skip: bool, max_in_a_row: int) -> None:
        self.skip = skip
        self.max_in_a_row = max_in_a_row
        self.skipped = 0  # in this process's run
        self.in_a_row = 0

    def after_step(self, step: int, loss: float, finite: bool, last_checkpoint: str | None
                   ) -> None:
        """Records step ``step``'s outcome; raises TrainingError when training must stop."""
        finite = finite and math.isfinite(loss)
        if finite:
            self.in_a_row = 0
            return
        last_checkpoint = last_checkpoint or "none (no step saved yet)"
        if not self.skip:
            raise TrainingError(f"loss is {loss} at step {step}; stopped without saving, the "
                                f"last good checkpoint is {last_checkpoint} (--skip_nonfinite_"
                                "steps skips such steps instead)")
        self.skipped += 1
        self.in_a_row += 1
        if self.in_a_row >= self.max_in_a_row:
            raise TrainingError(
                f"{self.in_a_row} non-finite steps in a row (steps {step - self.in_a_row + 1}"
                f"..{step}, loss {loss}); stopped without saving, the last good checkpoint is "
                f"{last_checkpoint}")
