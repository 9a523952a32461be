"""DeepCluster: cluster the encoder's features every epoch and learn to predict the clusters.

Caron, Bojanowski, Joulin & Douze, "Deep Clustering for Unsupervised Learning of Visual
Features", ECCV 2018. Before every epoch the pooled features of a fixed, seeded subset of the
training images (eval mode, unaugmented) are PCA-whitened, L2-normalised and clustered by
k-means (:mod:`selfsup.tasks.clustering`); the classifier head is re-initialised and the epoch
trains it and the encoder to predict the cluster ids of images sampled uniformly over clusters.
The NMI between consecutive epochs' assignments (and against the true labels, when the
dataset has them) is returned to the trainer, which prints and logs it.

Constants from the paper: PCA to 256 dimensions with whitening (§4), k = 10,000 on ImageNet
(§4; here ``num_clusters`` = 100, see :class:`DeepClusterConfig`), uniform sampling over
clusters (§3.3), re-initialised top layer (§3.3), optional Sobel input filter (§4). From the
official code: 20 k-means iterations, top layer re-initialised to N(0, 0.01²) weights and zero
bias, and a fresh optimizer for it (here: its momentum/moment slots are zeroed).

Clustering runs on the host in ``begin_epoch`` (eager, once per process, outside
``strategy.run``), so every replica of a MirroredStrategy trains on the same assignments and
the same head initialisation; with several worker processes each clusters and then all take
the chief's assignments (:func:`~selfsup.tasks.multi_worker.broadcast_from_chief`).
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from selfsup.datasets.pipelines import raw_image_label_dataset
from selfsup.datasets.preprocess import to_float_rgb
from selfsup.models import FEATURE_ENDPOINT, build_backbone
from selfsup.models.registry import ConfigError
from selfsup.tasks.base import BACKBONE_NAME, TASKS, PretextModel, Task, TaskConfig
from selfsup.tasks.clustering import (
    KMEANS_ITERATIONS,
    PCA_DIM,
    cluster_features,
    nmi,
    uniform_over_clusters,
)
from selfsup.tasks.multi_worker import broadcast_from_chief

HEAD_INIT_STDDEV = 0.01  # official DeepCluster code: top layer weights ~ N(0, 0.01²), bias 0
# Sobel kernels of the official code (a fixed conv after averaging RGB to gray); x then y.
SOBEL_X = np.array([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
SOBEL_KERNELS = np.stack([SOBEL_X, SOBEL_X.T], axis=-1)[:, :, None, :]  # [3, 3, 1, 2]
_READ_BATCH = 4096
# Streams of the per-run random generators (the run seed picks the subset, (seed, epoch) the
# rest), so changing one use of randomness does not shift another.
_SUBSET_STREAM, _EPOCH_STREAM = 0, 1


def sobel_filter(images: tf.Tensor) -> tf.Tensor:
    """``[b, h, w, 3]`` RGB → ``[b, h, w, 3]`` = (Sobel x, Sobel y, zeros) of the gray image.

    DeepCluster feeds the network the two Sobel responses of the grayscale image (removing
    colour, which k-means would otherwise latch onto). Registry backbones take 3 channels, so
    the third is zero: the first convolution then computes exactly what a 2-channel one would.
    Zero padding at the borders and cross-correlation, as in the official code's conv layer.
    """
    gray = tf.reduce_mean(images, axis=-1, keepdims=True)
    kernels = tf.constant(SOBEL_KERNELS, dtype=images.dtype)
    edges = tf.nn.conv2d(gray, kernels, strides=1, padding="SAME")
    return tf.concat([edges, tf.zeros_like(gray)], axis=-1)


class SobelBackbone(keras.Model):
    """An encoder that applies DeepCluster's fixed Sobel filter (Caron et al. 2018) first.

    Takes float RGB in [0, 1] like every encoder, so probes and exports use it unchanged; the
    wrapped registry backbone is ``network`` and its endpoints are returned as they are.
    """

    def __init__(self, network: keras.Model, **kwargs) -> None:
        super().__init__(**kwargs)
        self.network = network

    def call(self, images, training=None):
        return self.network(sobel_filter(images), training=training)

    def output_specs(self, input_shape: tuple) -> dict[str, tuple]:
        return self.network.output_specs(input_shape)

    def get_config(self) -> dict:
        return {"name": self.name, "sobel": True, "network": self.network.get_config()}


@dataclasses.dataclass(frozen=True)
class DeepClusterConfig(TaskConfig):
    """DeepCluster settings (defaults chosen for Fashion-MNIST; paper values in brackets).

    - ``num_clusters`` = 100 [10,000 on ImageNet]: the paper over-segments, k = 10× the 1,000
      classes, with ≈ 128 images per cluster; 10× Fashion-MNIST's 10 classes with 100 images
      per cluster of the default subset keeps both ratios.
    - ``cluster_examples`` = 10,000 [the whole dataset]: the images clustered (and sampled from)
      every epoch, a fixed seeded subset of ``train_split``. It sets the epoch length (156 steps
      at batch 64): feature extraction and k-means (8–18 s measured on 2 shared CPU cores) stay
      a fraction of an epoch (≈ 30–60 s) while a few-minute run still re-clusters 3–4 times.
    - ``pca_dim`` = 256 [256]: clamped to the feature size (64 for ``resnet_small``, i.e.
      whitening without reduction) and the number of examples.
    - ``sobel`` = False [True]: Sobel removes colour so k-means cannot cluster on it; the
      default dataset is grayscale, so the filter only throws away intensity there.
    - ``random_flip`` = True [random resized crops and flips]: horizontal flips of the training
      images (decided per epoch in numpy, so a resumed run sees the same ones); crops are left
      out on 28 px images.
    """

    num_clusters: int = 100
    cluster_examples: int = 10_000
    pca_dim: int = PCA_DIM
    kmeans_iterations: int = KMEANS_ITERATIONS
    sobel: bool = False
    random_flip: bool = True
    feature_batch_size: int = 512

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_clusters < 2:
            raise ConfigError(f"num_clusters must be at least 2, got {self.num_clusters}")
        if self.cluster_examples < max(self.num_clusters, self.global_batch_size):
            raise ConfigError(f"cluster_examples ({self.cluster_examples}) must be at least "
                              f"num_clusters and the global batch size")
        for name in ("pca_dim", "kmeans_iterations", "feature_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")


def reinitialize_head(head: keras.layers.Dense, seed: int) -> None:
    """Fresh N(0, HEAD_INIT_STDDEV²) kernel and zero bias, assigned in place (same variables)."""
    initializer = keras.initializers.RandomNormal(stddev=HEAD_INIT_STDDEV, seed=seed)
    head.kernel.assign(initializer(head.kernel.shape, dtype=head.kernel.dtype))
    head.bias.assign(tf.zeros(head.bias.shape, dtype=head.bias.dtype))


def reset_optimizer_slots(optimizer: keras.optimizers.Optimizer, variables: list) -> int:
    """Zeroes the optimizer's per-variable state (momentum, moments) of ``variables``.

    Keras names a slot ``<variable path with '/' → '_'>_<slot>``; the match is by that name, so
    it also finds the slots of a LossScaleOptimizer's inner optimizer. Returns how many were
    reset. (Adam's bias correction uses the shared step count and is not reset.)
    """
    prefixes = tuple(variable.path.replace("/", "_") + "_" for variable in variables)
    reset = 0
    for slot in optimizer.variables:
        if slot.name.startswith(prefixes):
            slot.assign(tf.zeros(slot.shape, dtype=slot.dtype))
            reset += 1
    return reset


def _epoch_seed(seed: int, epoch: int) -> int:
    """A 32-bit seed (what scikit-learn accepts) for epoch ``epoch`` of a run seeded ``seed``."""
    return int(np.random.SeedSequence([seed, epoch, _EPOCH_STREAM]).generate_state(1)[0])


class DeepClusterTask(Task):
    """DeepCluster (Caron et al. 2018): k-means pseudo-labels re-computed every epoch.

    A resumed run re-clusters where it stops (the trainer calls
    ``begin_epoch`` on resume), so its remaining epoch differs from an uninterrupted run's, and
    its first epoch logs no ``nmi_previous`` (assignments are not checkpointed).
    """

    shares_backbone = False  # re-clusters between epochs

    config_class = DeepClusterConfig

    def __init__(self, config: DeepClusterConfig) -> None:
        super().__init__(config)
        self._images: np.ndarray | None = None  # uint8 [n, s, s, c], the clustered subset
        self._labels: np.ndarray | None = None  # the dataset's labels (−1: none), for NMI only
        self._assignments: np.ndarray | None = None
        self._epoch_indices: np.ndarray | None = None
        self._epoch_flips: np.ndarray | None = None
        self._features_of: tuple[keras.Model, tf.types.experimental.PolymorphicFunction] | None
        self._features_of = None  # (model, its traced feature function)

    def build_backbone(self) -> keras.Model:
        if not self.config.sobel:
            return super().build_backbone()
        network = build_backbone(self.config.backbone, input_size=self.config.image_size,
                                 synchronized_bn=self.config.synchronized_bn, name="network",
                                 **self.config.backbone_kwargs)
        return SobelBackbone(network, name=BACKBONE_NAME)

    def build_model(self) -> PretextModel:
        head = keras.layers.Dense(
            self.config.num_clusters, name="head",
            kernel_initializer=keras.initializers.RandomNormal(stddev=HEAD_INIT_STDDEV))
        return PretextModel(self.build_backbone(), head, name="deepcluster")

    # -- the clustered subset ------------------------------------------------------------

    def cluster_subset(self) -> tuple[np.ndarray, np.ndarray]:
        """The seeded subset clustered every epoch: uint8 images and their dataset labels.

        ``cluster_examples`` images drawn without replacement from ``train_split`` (all of it
        when smaller), read once and kept in memory (decoded, so epochs do not re-decode).
        """
        if self._images is None:
            config = self.config
            split = config.train_split
            total = self.source.builder.info.splits[split].num_examples
            rng = np.random.default_rng([config.seed, _SUBSET_STREAM])
            chosen = np.sort(rng.choice(total, min(config.cluster_examples, total),
                                        replace=False))
            images, labels, offset = [], [], 0
            dataset = raw_image_label_dataset(self.source, split, config.image_size)
            for batch_images, batch_labels in dataset.batch(_READ_BATCH):
                keep = np.isin(np.arange(offset, offset + len(batch_labels)), chosen)
                images.append(batch_images.numpy()[keep])
                labels.append(batch_labels.numpy()[keep])
                offset += len(batch_labels)
            self._images, self._labels = np.concatenate(images), np.concatenate(labels)
        return self._images, self._labels

    def steps_per_epoch(self) -> int:
        count = len(self.cluster_subset()[0])
        if count < max(self.config.global_batch_size, self.config.num_clusters):
            raise ConfigError(f"split {self.config.train_split!r} has {count} images, fewer "
                              f"than the global batch or num_clusters")
        return count // self.config.global_batch_size

    def _feature_fn(self, model: keras.Model):
        """A traced eval-mode ``uint8 images → pooled features`` function of ``model``."""
        if self._features_of is None or self._features_of[0] is not model:
            images = self.cluster_subset()[0]

            @tf.function(input_signature=[tf.TensorSpec([None, *images.shape[1:]], tf.uint8)])
            def pooled_features(batch):
                features = model.backbone(to_float_rgb(batch), training=False)[FEATURE_ENDPOINT]
                return tf.cast(features, tf.float32)

            self._features_of = (model, pooled_features)
        return self._features_of[1]

    def extract_features(self, model: keras.Model) -> np.ndarray:
        """Pooled eval-mode encoder features ``[n, d]`` of the clustered subset."""
        images = self.cluster_subset()[0]
        pooled_features = self._feature_fn(model)
        size = self.config.feature_batch_size
        return np.concatenate([pooled_features(images[start:start + size]).numpy()
                               for start in range(0, len(images), size)])

    # -- the epoch hook -------------------------------------------------------------------

    def begin_epoch(self, epoch: int, model: keras.Model, optimizer: keras.optimizers.Optimizer,
                    strategy: tf.distribute.Strategy) -> dict[str, float]:
        """Re-clusters, re-initialises the head (and its optimizer state), plans the epoch."""
        config = self.config
        seed = _epoch_seed(config.seed, epoch)
        assignments = cluster_features(self.extract_features(model), config.num_clusters,
                                       config.pca_dim, seed, config.kmeans_iterations)
        # Several workers cluster on their own hosts; the chief's result is the one all use.
        assignments = broadcast_from_chief(strategy, assignments)
        logs = {"nonempty_clusters": float(len(np.unique(assignments)))}
        if self._assignments is not None:
            logs["nmi_previous"] = nmi(self._assignments, assignments)
        labels = self._labels
        if labels is not None and np.all(labels >= 0):
            logs["nmi_labels"] = nmi(labels, assignments)
        rng = np.random.default_rng(seed)
        num_samples = self.steps_per_epoch() * config.global_batch_size
        self._epoch_indices = uniform_over_clusters(assignments, num_samples, rng)
        self._epoch_flips = (rng.random(num_samples) < 0.5 if config.random_flip
                             else np.zeros(num_samples, bool))
        self._assignments = assignments
        reinitialize_head(model.head, seed)
        reset_optimizer_slots(optimizer, model.head.trainable_variables)
        return logs

    @property
    def assignments(self) -> np.ndarray | None:
        """The current epoch's cluster id of each subset image (None before ``begin_epoch``)."""
        return self._assignments

    @property
    def epoch_indices(self) -> np.ndarray | None:
        """The current epoch's subset indices in training order (uniform over clusters)."""
        return self._epoch_indices

    def build_inputs(self, input_context: tf.distribute.InputContext | None = None
                     ) -> tf.data.Dataset:
        """``(images, cluster ids)`` batches of this epoch's uniform-over-clusters plan."""
        if self._epoch_indices is None:
            raise RuntimeError("DeepCluster inputs need begin_epoch first (the trainer calls it)")
        images = tf.constant(self.cluster_subset()[0])
        assignments = tf.constant(self._assignments)
        plan = tf.data.Dataset.from_tensor_slices((self._epoch_indices, self._epoch_flips))
        if input_context is not None and input_context.num_input_pipelines > 1:
            plan = plan.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        plan = plan.repeat().batch(self.per_replica_batch_size(input_context),
                                   drop_remainder=True)

        def gather(indices, flips):
            batch = to_float_rgb(tf.gather(images, indices))
            batch = tf.where(flips[:, None, None, None], tf.reverse(batch, axis=[2]), batch)
            return batch, tf.gather(assignments, indices)

        return plan.map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


TASKS.register("deepcluster", DeepClusterTask)
