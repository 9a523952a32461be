"""Per-replica input streams that do not depend on how replicas are spread over workers, and
the optional tf.data service hop.

One input pipeline (one process, MirroredStrategy) hands its per-replica batches to the
replicas in turn: batch ``i`` goes to replica ``i mod R``. With several input pipelines
(MultiWorkerMirroredStrategy, one per worker) each pipeline here builds that same seeded stream
and keeps only its own replicas' batches, so a run on W workers sees exactly the data and the
augmentation seeds of a one-process run with the same global batch, for every task, and small
datasets stored in one file need no file sharding. The price: every worker runs the whole input
pipeline; ``--tf_data_service`` moves that work to tf.data workers.

tf.data service (``tf.data.experimental.service``): each worker's stream is distributed with
the HINT sharding policy and a ``shard(SHARD_HINT, SHARD_HINT)`` after the last batch, so
each tf.data worker computes the stream and serves every W-th batch of it: together they serve
every batch of the local stream once (in an order that depends on timing). Static sharding
needs the dispatcher to list its workers (``DispatcherConfig(worker_addresses=...)``). Jobs are
anonymous: every iterator (a new run, a resumed run, a DeepCluster epoch) gets its own job
and so its own stream from the start.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from selfsup.models.registry import ConfigError


def check_data_service_address(address: str) -> str:
    """``address`` if it looks like ``grpc://host:port`` (the dispatcher), else ConfigError."""
    host_port = address[len("grpc://"):] if address.startswith("grpc://") else ""
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--tf_data_service must be grpc://<dispatcher host>:<port>, "
                          f"got {address!r}")
    return address


def replica_batches(build_inputs: Callable[[tf.distribute.InputContext], tf.data.Dataset],
                    input_context: tf.distribute.InputContext,
                    start_step: int = 0) -> tf.data.Dataset:
    """This input pipeline's per-replica batches from step ``start_step`` on.

    ``build_inputs`` is called as for the only pipeline feeding all
    ``num_replicas_in_sync`` replicas; the pipeline keeps the batches of its own replicas
    (pipeline ``p`` of ``P`` feeds replicas ``p·R/P … (p+1)·R/P − 1``, the order in which
    tf.distribute numbers the replicas of its workers).
    """
    replicas = input_context.num_replicas_in_sync
    pipelines = input_context.num_input_pipelines
    whole = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                       num_replicas_in_sync=replicas)
    dataset = build_inputs(whole)
    if start_step:
        # Iterators cannot be checkpointed across workers: replay the stream to the step.
        dataset = dataset.skip(start_step * replicas)
    if pipelines == 1:
        return dataset
    per_pipeline = replicas // pipelines
    pipeline = input_context.input_pipeline_id

    def mine(index, batch):
        return tf.equal((index % replicas) // per_pipeline, pipeline)

    def drop_index(index, batch):
        return batch

    return dataset.enumerate().filter(mine).map(drop_index).prefetch(tf.data.AUTOTUNE)


def through_data_service(dataset: tf.data.Dataset, address: str) -> tf.data.Dataset:
    """``dataset`` computed by the tf.data service at ``address`` (see the module docstring)."""
    service = tf.data.experimental.service
    sharded = dataset.shard(tf.data.experimental.SHARD_HINT, tf.data.experimental.SHARD_HINT)
    return sharded.apply(service.distribute(processing_mode=service.ShardingPolicy.HINT,
                                            service=address, job_name=None))
