"""Point-cloud autoencoder: encode a point set to one vector, decode it back to points.

Achlioptas, Diamanti, Mitliagkas & Guibas, "Learning Representations and Generative Models for
3D Point Clouds", ICML 2018; FoldingNet (Yang, Feng, Shen & Tian, CVPR 2018) for the folding
decoder. The survey's "beyond 2D" methods (§7.3, Table 9): train the autoencoder without
labels, then probe the encoder's bottleneck with a linear SVM on shape classes
(:mod:`selfsup.tasks.point_probe`).

Choices here:
  * Encoder: a registered point backbone (``pointnet``: Achlioptas et al.'s PointNet, 128-D
    ``pool`` bottleneck); image and video backbones are refused by the config.
  * Decoder: ``decoder=fc`` (default; 256-256-``num_points``·3 fully connected, Achlioptas et
    al.) or ``decoder=folding`` (FoldingNet's two folds of a 45 × 45 grid; its 2,025 output
    points need not equal ``num_points``).
  * Loss: ``reconstruction_loss=chamfer`` (default): the Chamfer distance between input and
    reconstruction (:mod:`selfsup.tasks.chamfer`, squared distances, each direction averaged
    over its points); ``reconstruction_loss=emd``: the Earth Mover's distance, approximated by
    Sinkhorn iterations (ε 0.01, 200 iterations); either averaged over the batch.
  * Data: ``dataset=shapes`` (default; generated spheres, cubes, cylinders, cones and tori,
    randomly rotated and scaled, :mod:`selfsup.datasets.point_clouds`) or
    ``mesh_folder:<root>`` (ModelNet-style mesh files). ``num_points`` = 1,024 points per
    cloud (Achlioptas et al. use 2,048; the Chamfer matrix of a batch of 32 is then 128 MB
    instead of 512 MB) and a global batch of 32 (their 50, rounded to split over 2 replicas).
  * ``image_size`` of the common config is unused.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from selfsup.datasets.point_clouds import (
    GENERATED_SHAPES,
    PointCloudSource,
    is_point_dataset,
    open_point_source,
)
from selfsup.models import FEATURE_ENDPOINT
from selfsup.models.point_decoders import (
    FOLDING_GRID_SIDE,
    FoldingDecoder,
    FullyConnectedPointDecoder,
)
from selfsup.models.pointnet import is_point_backbone, point_backbone_names
from selfsup.models.registry import ConfigError
from selfsup.tasks.base import TASKS, Task, TaskConfig
from selfsup.tasks.chamfer import approximate_emd, chamfer_distance

DECODERS = ("fc", "folding")
RECONSTRUCTION_LOSSES = ("chamfer", "emd")
NUM_POINTS = 1024
BATCH_SIZE = 32


@dataclasses.dataclass(frozen=True)
class PointCloudAEConfig(TaskConfig):
    """Point-cloud autoencoder settings (see the module docstring)."""

    backbone: str = "pointnet"
    dataset: str = GENERATED_SHAPES
    global_batch_size: int = BATCH_SIZE
    num_points: int = NUM_POINTS
    decoder: str = "fc"
    folding_grid_side: int = FOLDING_GRID_SIDE
    reconstruction_loss: str = "chamfer"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_points <= 0:
            raise ConfigError(f"num_points must be positive, got {self.num_points}")
        if self.decoder not in DECODERS:
            raise ConfigError(f"decoder must be one of {', '.join(DECODERS)}, got "
                              f"{self.decoder!r}")
        if self.reconstruction_loss not in RECONSTRUCTION_LOSSES:
            raise ConfigError(f"reconstruction_loss must be one of "
                              f"{', '.join(RECONSTRUCTION_LOSSES)}, got "
                              f"{self.reconstruction_loss!r}")
        if self.folding_grid_side < 2:
            raise ConfigError(f"folding_grid_side must be at least 2, got "
                              f"{self.folding_grid_side}")
        if not is_point_dataset(self.dataset):
            raise ConfigError(f"pointcloud_ae takes point clouds: dataset {GENERATED_SHAPES} "
                              f"or mesh_folder:<root>, got {self.dataset!r}")
        check_point_backbone(self.backbone)


def check_point_backbone(name: str) -> None:
    """ConfigError unless registered backbone ``name`` takes point clouds."""
    if not is_point_backbone(name):
        raise ConfigError(f"backbone {name!r} takes images or video, pointcloud_ae takes "
                          f"point clouds; point backbones: {', '.join(point_backbone_names())}")


class PointAutoencoder(keras.Model):
    """An encoder (``model.backbone``) and a point decoder reading its ``pool`` vector;
    ``call`` returns the encoder's endpoints plus ``reconstruction`` ``[b, m, 3]``."""

    def __init__(self, backbone: keras.Model, decoder: keras.layers.Layer, **kwargs) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone
        self.decoder = decoder

    def call(self, points, training=None):
        endpoints = dict(self.backbone(points, training=training))
        endpoints["reconstruction"] = self.decoder(endpoints[FEATURE_ENDPOINT],
                                                   training=training)
        return endpoints


class PointCloudAETask(Task):
    """Point-cloud autoencoder (Achlioptas et al. 2018) trained with the Chamfer distance."""

    config_class = PointCloudAEConfig
    config: PointCloudAEConfig
    # The multitask config is an image config; this task takes point clouds.
    shares_backbone = False
    # Read by the trainer's modality check (image/video): the config checks this task's own.
    takes_point_clouds = True

    def __init__(self, config: TaskConfig) -> None:
        super().__init__(config)
        self._point_source: PointCloudSource | None = None

    @property
    def source(self) -> PointCloudSource:  # type: ignore[override]
        """The resolved point-cloud dataset (opened once, lazily)."""
        if self._point_source is None:
            self._point_source = open_point_source(self.config.dataset, self.config.data_dir)
            self._point_source.check_split(self.config.train_split)
        return self._point_source

    def build_decoder(self) -> keras.layers.Layer:
        config = self.config
        if config.decoder == "folding":
            return FoldingDecoder(config.folding_grid_side, name="decoder")
        return FullyConnectedPointDecoder(config.num_points, name="decoder")

    def build_model(self) -> keras.Model:
        return PointAutoencoder(self.build_backbone(), self.build_decoder(),
                                name="pointcloud_ae")

    def dummy_inputs(self) -> tf.Tensor:
        return tf.zeros([1, self.config.num_points, 3])

    def build_inputs(self, input_context: tf.distribute.InputContext | None = None
                     ) -> tf.data.Dataset:
        """``(points, points)`` batches: the clean cloud is both input and target."""
        config = self.config
        stream = 0 if input_context is None else input_context.input_pipeline_id
        batches = self.source.training_batches(
            config.train_split, self.per_replica_batch_size(input_context), config.num_points,
            config.seed, stream)
        return batches.map(lambda points, labels: (points, points))

    def build_losses(self, labels: tf.Tensor, outputs: dict[str, tf.Tensor]) -> tf.Tensor:
        """Mean Chamfer distance (or approximate EMD) between the input clouds and their
        reconstructions."""
        distance = (approximate_emd if self.config.reconstruction_loss == "emd"
                    else chamfer_distance)
        return tf.reduce_mean(distance(labels, tf.cast(outputs["reconstruction"], tf.float32)))

    def build_metrics(self) -> list[keras.metrics.Metric]:
        return [keras.metrics.Mean("loss")]

    def update_metrics(self, metrics: list[keras.metrics.Metric], loss: tf.Tensor,
                       labels, outputs: dict[str, tf.Tensor]) -> None:
        for metric in metrics:
            metric.update_state(loss)


TASKS.register("pointcloud_ae", PointCloudAETask)
