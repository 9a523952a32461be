"""Stop requests by signal: SIGTERM (a scheduler pre-empting the job) and SIGINT (Ctrl-C).

While a :class:`StopSignals` block is active, either signal only records that a stop was asked
for; the training loop checks between steps, so the step in flight finishes, a checkpoint of the
current step is saved and the program ends with a message instead of dying half-way. A second
signal gets its previous behaviour at once (Ctrl-C twice: KeyboardInterrupt; a second SIGTERM
ends the process), for when saving itself hangs.

With several worker processes each may get its signal at its own moment (or only one of them
may): :func:`stop_agreement` makes them all stop after the same step, as the save and every
step are collective.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

import tensorflow as tf

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingStopped(Exception):  # noqa: N818  (a requested stop, not an error)
    """Training stopped early on a signal after saving a checkpoint; re-running resumes it."""

    def __init__(self, received: signal.Signals | None, step: int, checkpoint: str | None
                 ) -> None:
        reason = received.name if received else "another worker's signal"
        super().__init__(f"stopped by {reason} at step {step}; checkpoint {checkpoint}; "
                         "re-run the same command to resume")
        self.signal = received
        self.step = step
        self.checkpoint = checkpoint

    @property
    def exit_code(self) -> int:
        """The shell's code for "ended by this signal" (128 + number: 143 for SIGTERM, 130 for
        SIGINT; SIGTERM's for a worker stopped by another's signal): schedulers and ``&&``
        chains see an unfinished run, not a success."""
        return 128 + int(self.signal or signal.SIGTERM)


class StopSignals:
    """Context manager that turns SIGTERM / SIGINT into :attr:`received` (None until one comes).

    Handlers can only be installed from the main thread; elsewhere the block changes nothing
    (signals keep their usual effect). The previous handlers come back on exit.
    """

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            # None: the handler was not set from Python; the default is the closest we can do.
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None:
            self._restore()
            signal.raise_signal(signum)
            return
        self.received = signal.Signals(signum)


def stop_agreement(strategy: tf.distribute.Strategy) -> Callable[[bool], bool]:
    """``agree(stop_here)``: whether any process of the run asked to stop.

    One process: ``stop_here`` itself. Several workers: an all-reduce of their flags, called by
    every worker between the same steps, so all of them stop after the same step and take
    part in the final save (a worker stopping alone would leave the others waiting for it in
    their next step).
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return bool

    @tf.function
    def stops_anywhere(stop_here: tf.Tensor) -> tf.Tensor:
        flags = strategy.run(tf.identity, args=(stop_here,))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, flags, axis=None) > 0

    return lambda stop_here: bool(stops_anywhere(tf.constant(float(stop_here))))
