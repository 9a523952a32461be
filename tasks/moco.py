"""MoCo: match each query to its key among a queue of keys from a slowly moving encoder.

He, Fan, Wu, Xie & Girshick, "Momentum Contrast for Unsupervised Visual Representation
Learning", CVPR 2020 (v1), and Chen, Fan, Girshick & He, "Improved Baselines with Momentum
Contrastive Learning", 2020 (v2). Two views of each image go through the query encoder (trained)
and the key encoder, a momentum copy updated as k ← m·k + (1 − m)·q before the keys are
computed (Algorithm 1). InfoNCE over logits ``[N, 1 + K]``: the positive key at index 0, then the
K keys of a queue filled from earlier batches (no gradient into keys or queue). After the loss the
batch's keys, gathered from all replicas, replace the oldest entries of the queue.

Constants (fields of :class:`MoCoConfig`; ``version`` picks the v1 or v2 defaults):

* m = 0.999 (He et al. §3.2), feature dim 128 and temperature 0.07 (§3.3); v2: temperature 0.2;
  v1 projects with one linear layer, v2 with an MLP (a hidden layer with ReLU, no BatchNorm in the
  official code) and adds blur to the views (:func:`selfsup.datasets.augment.moco_augmentation`).
  The v2 hidden width is the encoder's on ResNet-50 (2048); ``resnet_small`` has 64 features, so
  the default here is 512.
* Queue K = 65,536 on ImageNet (§4); Fashion-MNIST has 60,000 training images, and a queue that
  long holds stale keys of the very images being queried, so the default is K = 4,096 (64 batches
  of 64). K must be a multiple of the global batch so the enqueued slice never wraps.
* BatchNorm leakage (§3.3): a query and its positive key normalised with statistics of batches
  of the same images share a batch "fingerprint" that the queue's keys (other batches) lack. The
  default relies on synchronized BN (``synchronized_bn=True``): every replica normalises with the
  global batch's statistics, exactly as one device would, so replicas add no leak of their own.
  That does not remove the fingerprint the global batch itself carries; ``shuffle_bn=True`` is
  MoCo's own remedy: the key batch is permuted across the global batch, each replica encodes its
  slice in ``key_bn_splits`` sub-batches with their own BN statistics (the official CIFAR demo's
  "SplitBatchNorm" does the same on one GPU), and the keys are put back in order.
* The key encoder's BatchNorm runs in training mode (batch statistics), as in the official code;
  it stays a trainable Keras layer (frozen layers would run BN in inference mode) and is kept out
  of the optimizer by :meth:`MoCoTask.trainable_variables`. The momentum update covers weights
  and BN scale/offset (the official code's ``parameters()``); each encoder keeps its own BN
  moving statistics.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from selfsup.datasets.augment import MOCO_CROP_AREA, ViewAugmentation, moco_augmentation
from selfsup.models import FEATURE_ENDPOINT, build_backbone
from selfsup.models.backbone import variable_map
from selfsup.models.heads import MLPHead
from selfsup.models.registry import ConfigError
from selfsup.tasks.base import TASKS, Task, TaskConfig, scale_replica_loss
from selfsup.tasks.distributed import assign_replicated, gather_from_replicas
from selfsup.tasks.info_nce import info_nce
from selfsup.tasks.simclr import view_pair_inputs

MOCO_MOMENTUM = 0.999          # He et al. 2020, §3.2 and §4 (v2 keeps it)
MOCO_PROJECTION_DIM = 128      # He et al. 2020, §3.3: 128-D L2-normalised output
MOCO_TEMPERATURES = {"v1": 0.07, "v2": 0.2}   # He et al. §3.3; Chen et al. 2020 (v2), §2
IMAGENET_QUEUE_SIZE = 65_536   # He et al. 2020, §4
FASHION_MNIST_QUEUE_SIZE = 4_096
V2_HIDDEN_UNITS = (512,)       # v2 MLP hidden layer, narrowed for resnet_small (see docstring)
KEY_BACKBONE_NAME = "key_backbone"


def moco_logits(queries: tf.Tensor, keys: tf.Tensor, queue: tf.Tensor,
                temperature: float) -> tf.Tensor:
    """``[n, 1 + K]`` logits: column 0 is q·k⁺ of each query with its key, then q·queue.

    Queries are L2-normalised here; keys and queue entries are expected normalised already.
    Keys and queue are constants for the gradient (He et al. 2020, Algorithm 1).
    """
    queries = tf.math.l2_normalize(tf.cast(queries, tf.float32), axis=1)
    keys = tf.stop_gradient(tf.cast(keys, tf.float32))
    queue = tf.stop_gradient(tf.cast(queue, tf.float32))
    positive = tf.reduce_sum(queries * keys, axis=1, keepdims=True)
    negative = tf.matmul(queries, queue, transpose_b=True)
    return tf.concat([positive, negative], axis=1) / temperature


def moco_info_nce(logits: tf.Tensor) -> tf.Tensor:
    """InfoNCE of :func:`moco_logits` rows, whose positive is column 0."""
    return info_nce(logits, tf.zeros([tf.shape(logits)[0]], tf.int32))


def enqueue(queue: tf.Tensor, pointer: tf.Tensor, keys: tf.Tensor
            ) -> tuple[tf.Tensor, tf.Tensor]:
    """Writes ``keys`` at rows ``pointer … pointer + n − 1``; returns the queue and next pointer.

    The queue size is a multiple of ``n`` (checked in :class:`MoCoConfig`), so the slice never
    runs past the end and the pointer wraps to 0 exactly after the last slice.
    """
    count = tf.shape(keys)[0]
    rows = tf.cast(pointer, tf.int32) + tf.range(count)
    new_queue = tf.tensor_scatter_nd_update(queue, rows[:, None], tf.cast(keys, queue.dtype))
    new_pointer = tf.math.floormod(tf.cast(pointer, tf.int32) + count, tf.shape(queue)[0])
    return new_queue, tf.cast(new_pointer, pointer.dtype)


def unit_rows(shape, dtype=None) -> tf.Tensor:
    """Random unit vectors as rows: the queue before any key arrives (as the official code)."""
    return tf.math.l2_normalize(keras.random.normal(shape, dtype=dtype), axis=-1)


class MoCoModel(keras.Model):
    """Query encoder and head, their momentum copies, and the key queue (He et al. 2020).

    ``call`` runs the query side and returns the backbone endpoints plus ``"logits"`` (the
    projection). Building the model (its first call) also builds the key side and copies the
    query weights into it; the queue and its pointer are non-trainable variables, so they are
    checkpointed with the model.
    """

    def __init__(self, backbone: keras.Model, head: keras.layers.Layer,
                 key_backbone: keras.Model, key_head: keras.layers.Layer, queue_size: int,
                 projection_dim: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone
        self.head = head
        self.key_backbone = key_backbone
        self.key_head = key_head
        self.queue = self.add_weight(shape=(queue_size, projection_dim), initializer=unit_rows,
                                     trainable=False, name="queue")
        self.queue_pointer = self.add_weight(shape=(), initializer="zeros", dtype="int32",
                                             trainable=False, name="queue_pointer")

    def build(self, input_shape) -> None:
        images = tf.zeros([1, *input_shape[1:]])
        self.call(images, training=False)
        self.encode_keys(images, training=False)
        for query, key in self.encoder_pairs():
            key.assign(query)

    def call(self, images, training=None):
        endpoints = dict(self.backbone(images, training=training))
        endpoints["logits"] = self.head(endpoints[FEATURE_ENDPOINT], training=training)
        return endpoints

    def encode_keys(self, images, training=True) -> tf.Tensor:
        """L2-normalised key projections (no gradient)."""
        features = self.key_backbone(images, training=training)[FEATURE_ENDPOINT]
        keys = tf.cast(self.key_head(features, training=training), tf.float32)
        return tf.stop_gradient(tf.math.l2_normalize(keys, axis=1))

    def encoder_pairs(self, trainable_only: bool = False) -> list[tuple]:
        """``(query variable, key variable)`` pairs matched by their path in the encoder/head."""
        pairs = []
        for query_layer, key_layer in ((self.backbone, self.key_backbone),
                                       (self.head, self.key_head)):
            keys = variable_map(key_layer)
            for path, query in variable_map(query_layer).items():
                if trainable_only and not query.trainable:
                    continue
                key = keys[path]
                if tuple(key.shape) != tuple(query.shape):
                    raise ValueError(f"key and query variables differ in shape at {path}")
                pairs.append((query, key))
        return pairs

    def query_variables(self) -> list:
        return self.backbone.trainable_variables + self.head.trainable_variables

    def momentum_update(self, momentum: float) -> None:
        """k ← m·k + (1 − m)·q for every trainable key variable (from a replica step)."""
        pairs = self.encoder_pairs(trainable_only=True)
        assign_replicated([key for _, key in pairs],
                          [momentum * tf.convert_to_tensor(key)
                           + (1.0 - momentum) * tf.convert_to_tensor(query)
                           for query, key in pairs])

    def enqueue(self, keys: tf.Tensor) -> None:
        """Stores the global batch's ``keys`` (the same on every replica) in the queue."""
        queue, pointer = enqueue(tf.convert_to_tensor(self.queue),
                                 tf.convert_to_tensor(self.queue_pointer), keys)
        assign_replicated([self.queue, self.queue_pointer], [queue, pointer])


@dataclasses.dataclass(frozen=True)
class MoCoConfig(TaskConfig):
    """MoCo settings; ``None`` fields take the ``version``'s default (module docstring)."""

    version: str = "v2"
    queue_size: int = FASHION_MNIST_QUEUE_SIZE
    momentum: float = MOCO_MOMENTUM
    temperature: float | None = None
    projection_dim: int = MOCO_PROJECTION_DIM
    projection_hidden_units: tuple[int, ...] | None = None
    shuffle_bn: bool = False
    key_bn_splits: int = 1
    crop_min_area: float = MOCO_CROP_AREA[0]
    blur_probability: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.version not in MOCO_TEMPERATURES:
            raise ConfigError(f"MoCo version must be v1 or v2, got {self.version!r}")
        defaults = {"temperature": MOCO_TEMPERATURES[self.version],
                    "projection_hidden_units": () if self.version == "v1" else V2_HIDDEN_UNITS,
                    "blur_probability": 0.0 if self.version == "v1" else 0.5}
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if self.queue_size <= 0 or self.queue_size % self.global_batch_size:
            raise ConfigError(f"queue_size {self.queue_size} must be a positive multiple of the "
                              f"global batch size {self.global_batch_size}")
        if self.key_bn_splits < 1 or self.global_batch_size % self.key_bn_splits:
            raise ConfigError(f"key_bn_splits {self.key_bn_splits} must divide the global batch "
                              f"size {self.global_batch_size}")
        if self.key_bn_splits > 1 and not self.shuffle_bn:
            raise ConfigError("key_bn_splits > 1 needs shuffle_bn=true")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {self.temperature}")
        if self.projection_dim < 1 or any(u < 1 for u in self.projection_hidden_units):
            raise ConfigError(f"projection sizes must be positive, got projection_dim "
                              f"{self.projection_dim}, hidden {self.projection_hidden_units}")
        if not 0 < self.crop_min_area <= 1:
            raise ConfigError(f"crop_min_area must be in (0, 1], got {self.crop_min_area}")
        if not 0 <= self.blur_probability <= 1:
            raise ConfigError(f"blur_probability must be in [0, 1], got {self.blur_probability}")


class MoCoTask(Task):
    """MoCo v1/v2 pretext task (He et al. 2020; Chen et al. 2020): momentum contrast."""

    shares_backbone = False  # a key encoder, a queue and a train_step of its own

    config_class = MoCoConfig
    config: MoCoConfig

    def augmentation(self) -> ViewAugmentation:
        return moco_augmentation(self.config.version,
                                 crop_area=(self.config.crop_min_area, 1.0),
                                 blur_probability=self.config.blur_probability)

    def _head(self, name: str) -> MLPHead:
        return MLPHead(self.config.projection_hidden_units, self.config.projection_dim,
                              batch_norm=False, name=name)

    def build_model(self) -> MoCoModel:
        config = self.config
        key_backbone = build_backbone(
            config.backbone, input_size=config.image_size,
            synchronized_bn=config.synchronized_bn and not config.shuffle_bn,
            name=KEY_BACKBONE_NAME, **config.backbone_kwargs)
        return MoCoModel(self.build_backbone(), self._head("head"), key_backbone,
                         self._head("key_head"), config.queue_size, config.projection_dim,
                         name="moco")

    def trainable_variables(self, model: MoCoModel) -> list:
        return model.query_variables()

    def build_inputs(self, input_context: tf.distribute.InputContext | None = None
                     ) -> tf.data.Dataset:
        return view_pair_inputs(self, self.augmentation(), input_context)

    def compute_keys(self, model: MoCoModel, images: tf.Tensor, step: tf.Tensor) -> tf.Tensor:
        """This replica's keys; with ``shuffle_bn`` computed on a shuffled slice of the global
        batch (permutation seeded by ``step``, the same on every replica), in ``key_bn_splits``
        sub-batches with their own BN statistics, and put back in order."""
        if not self.config.shuffle_bn:
            return model.encode_keys(images, training=True)
        all_images, offset = gather_from_replicas(images)
        count = tf.shape(images)[0]
        seed = tf.stack([tf.constant(self.config.seed, tf.int64), tf.cast(step, tf.int64)])
        permutation = tf.random.experimental.stateless_shuffle(
            tf.range(tf.shape(all_images)[0]), seed)
        mine = tf.gather(all_images, permutation[offset:offset + count])
        sub_batches = tf.split(mine, self.config.key_bn_splits, axis=0)
        mine_keys = tf.concat([model.encode_keys(sub_batch, training=True)
                               for sub_batch in sub_batches], axis=0)
        shuffled_keys, _ = gather_from_replicas(mine_keys)
        keys = tf.gather(shuffled_keys, tf.math.invert_permutation(permutation))
        return keys[offset:offset + count]

    def build_metrics(self) -> list[keras.metrics.Metric]:
        # "accuracy": how often the positive key wins among the 1 + K candidates.
        return [keras.metrics.Mean("loss"), keras.metrics.SparseCategoricalAccuracy("accuracy")]

    def train_step(self, inputs, model: MoCoModel, optimizer: keras.optimizers.Optimizer,
                   metrics: list[keras.metrics.Metric]) -> dict[str, tf.Tensor]:
        query_images, key_images = inputs
        model.momentum_update(self.config.momentum)
        keys = self.compute_keys(model, key_images, optimizer.iterations)
        queue = tf.convert_to_tensor(model.queue)
        with tf.GradientTape() as tape:
            queries = model(query_images, training=True)["logits"]
            logits = moco_logits(queries, keys, queue, self.config.temperature)
            loss = moco_info_nce(logits)
            replica_loss = scale_replica_loss(loss, optimizer)
        self.apply_gradients(tape, replica_loss, model, optimizer)
        all_keys, _ = gather_from_replicas(keys)
        with tf.control_dependencies([loss]):
            model.enqueue(all_keys)
        self.update_metrics(metrics, loss, tf.zeros([tf.shape(logits)[0]], tf.int32),
                            {"logits": logits})
        return {"loss": loss}

    def validation_step(self, inputs, model: MoCoModel,
                        metrics: list[keras.metrics.Metric]) -> dict[str, tf.Tensor]:
        query_images, key_images = inputs
        keys = model.encode_keys(key_images, training=False)
        queries = model(query_images, training=False)["logits"]
        logits = moco_logits(queries, keys, tf.convert_to_tensor(model.queue),
                             self.config.temperature)
        loss = moco_info_nce(logits)
        self.update_metrics(metrics, loss, tf.zeros([tf.shape(logits)[0]], tf.int32),
                            {"logits": logits})
        return {"loss": loss}


TASKS.register("moco", MoCoTask)
