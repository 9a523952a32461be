"""Cross-replica helpers for single-replica task code (gather a batch, assign a variable).

Tasks run inside ``strategy.run``; these helpers do the right thing there and also outside any
strategy, so the same task code runs on one device and on several replicas.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf


def gather_from_replicas(values: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """All replicas' ``values`` stacked along axis 0, and this replica's row offset in them."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return values, tf.constant(0, tf.int32)
    gathered = context.all_gather(values, axis=0)
    offset = tf.cast(context.replica_id_in_sync_group, tf.int32) * tf.shape(values)[0]
    return gathered, offset


def _tf_variable(variable):
    return variable.value if isinstance(variable, keras.Variable) else variable


def assign_replicated(variables: Sequence, values: Sequence[tf.Tensor]) -> None:
    """Assigns ``values`` (the same on every replica) to ``variables`` from task code.

    In a replica context a mirrored variable can only be written through the strategy, so
    the assignment is merged into cross-replica context and applied to every copy; outside a
    strategy it is a plain ``assign``. Callers must pass values that agree across replicas
    (computed from gathered or mirrored tensors), e.g. MoCo's momentum update and queue.
    """
    variables, values = list(variables), list(values)
    if len(variables) != len(values):
        raise ValueError(f"{len(variables)} variables but {len(values)} values")
    context = tf.distribute.get_replica_context()
    if context is None or not tf.distribute.has_strategy() or (
            context.num_replicas_in_sync == 1
            and not isinstance(_tf_variable(variables[0]), tf.distribute.DistributedValues)):
        for variable, value in zip(variables, values, strict=True):
            variable.assign(value)
        return

    def merge_fn(strategy, pairs):
        for variable, value in pairs:
            strategy.extended.update(_tf_variable(variable),
                                     lambda var, new: var.assign(new), args=(value,),
                                     group=False)

    context.merge_call(merge_fn, args=(list(zip(variables, values, strict=True)),))
