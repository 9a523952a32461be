"""What changes when several worker processes train one model (MultiWorkerMirroredStrategy).

Every worker runs the same loop and holds the same (mirrored) weights; only the chief writes:
checkpoints into the model dir, summaries and sample pictures. The other workers still take
part in every save (TensorFlow's documented multi-worker pattern: saving may need
cross-worker communication) but write into a temporary directory of their own and delete it.
Host-side results that must agree across workers (DeepCluster's cluster assignments) are taken
from the chief by :func:`broadcast_from_chief`.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's checkpoints and summaries (always true for
    single-process strategies)."""
    return bool(strategy.extended.should_checkpoint)


def worker_id(strategy: tf.distribute.Strategy) -> str:
    """``<task type>_<index>`` of this process in a multi-worker cluster, else ``local``."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return "local"
    return f"{resolver.task_type}_{resolver.task_id}"


class WorkerCheckpointManager:
    """A non-chief worker's view of the chief's ``tf.train.CheckpointManager``.

    Reads (``latest_checkpoint``, ``checkpoints``) see the chief's model dir, so a restarted
    worker resumes from the same checkpoint as the chief; :meth:`save` writes this worker's
    copy into ``<model_dir>/.worker-tmp-<worker>`` and deletes it right away.
    """

    def __init__(self, checkpoint: tf.train.Checkpoint, chief_manager: tf.train.CheckpointManager,
                 model_dir: str, worker: str) -> None:
        self._checkpoint = checkpoint
        self._chief = chief_manager
        # Strings and gfile, not pathlib: the model dir may be remote (gs://...).
        self.temporary_dir = os.path.join(model_dir, f".worker-tmp-{worker}")

    def __getattr__(self, name: str):
        return getattr(self._chief, name)

    @property
    def latest_checkpoint(self) -> str | None:
        # Another process writes the chief's directory: read its state file afresh.
        return tf.train.latest_checkpoint(self._chief.directory)

    def save(self, checkpoint_number: int | None = None, **kwargs) -> None:
        manager = tf.train.CheckpointManager(self._checkpoint, self.temporary_dir,
                                             max_to_keep=1)
        manager.save(checkpoint_number=checkpoint_number, **kwargs)
        tf.io.gfile.rmtree(self.temporary_dir)


def checkpoint_manager(strategy: tf.distribute.Strategy, checkpoint: tf.train.Checkpoint,
                       model_dir: str, **kwargs):
    """The chief's CheckpointManager on ``model_dir``, or on other workers a
    :class:`WorkerCheckpointManager` over it (``kwargs`` go to the CheckpointManager)."""
    manager = tf.train.CheckpointManager(checkpoint, model_dir, **kwargs)
    if is_chief(strategy):
        return manager
    return WorkerCheckpointManager(checkpoint, manager, model_dir, worker_id(strategy))


def broadcast_from_chief(strategy: tf.distribute.Strategy, values: np.ndarray) -> np.ndarray:
    """The first replica's ``values`` (a host array of the same shape in every process) on
    every worker; a copy of ``values`` unless the strategy is multi-worker (one process holds
    every replica, so there is nothing to agree on).

    An all-reduce sum in which every replica but the first contributes zeros. In float64,
    so integer ids up to 2**53 come back exact.
    """
    values = np.asarray(values)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return values.copy()
    local = tf.constant(values.astype(np.float64))

    @tf.function
    def broadcast():
        def replica_fn():
            context = tf.distribute.get_replica_context()
            keep = tf.cast(tf.equal(context.replica_id_in_sync_group, 0), tf.float64)
            return context.all_reduce(tf.distribute.ReduceOp.SUM, local * keep)

        return strategy.run(replica_fn)

    result = strategy.experimental_local_results(broadcast())[0].numpy()
    return result.astype(values.dtype)
