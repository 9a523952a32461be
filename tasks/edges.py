"""Edges: predict the edge map a hard-coded detector finds in the image.

A free-semantic-label task (Jing & Tian's survey, §5.3.2: labels from hard-coded detectors).
The targets come from :mod:`selfsup.datasets.edges` (luma, Gaussian smoothing, Sobel gradients,
non-maximum suppression in four directions as in Canny 1986, a threshold relative to each
image's largest gradient), made in tf.data per batch. A dense head predicts them from the
encoder: :class:`~selfsup.models.decoders.ImageDecoder` reads the backbone's last spatial
endpoint (``res4`` of ``resnet_small``, ``conv5`` of AlexNet) and up-samples it to one logit per
pixel at full resolution.

Loss: the class-balanced sigmoid cross-entropy of HED (Xie & Tu, "Holistically-Nested Edge
Detection", ICCV 2015, eq. 2): per image, β = |Y−| / |Y| weights the edge pixels and 1 − β the
others, so the rare edge pixels (~10–20 % here) count as much as the rest. HED sums over the
pixels; here each image's sum is divided by its number of pixels (a constant factor, which
keeps the loss scale independent of the image size) and the images are averaged, so a replica's
loss needs no information from other replicas. An image without edges has β = 1 and loss 0.

Defaults: ``threshold_fraction`` = 0.2 of each image's largest magnitude and
``smoothing_sigma`` = 1.0 px (Canny's smoothing; at 28 px larger values erase the garments'
inner structure). The probed encoder is ``model.backbone``.
``sample_images``: fixed training images, their target edges, the predicted edge probability.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from selfsup.datasets.edges import DEFAULT_THRESHOLD_FRACTION, edge_maps
from selfsup.models.decoders import ImageDecoder, last_spatial_endpoint
from selfsup.models.registry import ConfigError
from selfsup.tasks.autoencoder import (
    DECODER_WIDTH,
    SAMPLE_TRIPLES,
    AutoencoderTask,
    EncoderDecoderModel,
)
from selfsup.tasks.base import TASKS, TaskConfig
from selfsup.tasks.pictures import interleave

SMOOTHING_SIGMA = 1.0


def balanced_edge_loss(edges: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """HED's class-balanced sigmoid cross-entropy (Xie & Tu 2015, eq. 2) for binary ``edges``
    and ``logits`` ``[b, h, w, 1]``: per image ``−(β Σ₊ log σ(a) + (1 − β) Σ₋ log(1 − σ(a)))
    / |Y|`` with β = |Y−| / |Y|, averaged over the images."""
    edges = tf.cast(edges, tf.float32)
    logits = tf.cast(logits, tf.float32)
    pixels = tf.cast(tf.reduce_prod(tf.shape(edges)[1:]), tf.float32)
    positives = tf.reduce_sum(edges, axis=[1, 2, 3], keepdims=True)
    beta = (pixels - positives) / pixels
    # −log σ(a) = softplus(−a) and −log(1 − σ(a)) = softplus(a), stable for any a.
    weighted = (beta * edges * tf.nn.softplus(-logits)
                + (1.0 - beta) * (1.0 - edges) * tf.nn.softplus(logits))
    return tf.reduce_mean(tf.reduce_sum(weighted, axis=[1, 2, 3]) / pixels)


@dataclasses.dataclass(frozen=True)
class EdgesConfig(TaskConfig):
    """Edge-detector settings (see the module docstring)."""

    threshold_fraction: float = DEFAULT_THRESHOLD_FRACTION
    smoothing_sigma: float = SMOOTHING_SIGMA
    decoder_width: int = DECODER_WIDTH

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.threshold_fraction <= 1.0:
            raise ConfigError(f"threshold_fraction must be in (0, 1], got "
                              f"{self.threshold_fraction}")
        if self.smoothing_sigma < 0:
            raise ConfigError(f"smoothing_sigma must be non-negative (0: no smoothing), got "
                              f"{self.smoothing_sigma}")
        if self.decoder_width <= 0:
            raise ConfigError(f"decoder_width must be positive, got {self.decoder_width}")


class EdgesTask(AutoencoderTask):
    """Edge prediction (survey §5.3.2): a dense head on the encoder's last spatial endpoint
    learns a Sobel/NMS edge detector's output with HED's balanced loss.

    Shares the autoencoders' model class, loss-only metrics and fixed sample images; its own
    config has no reconstruction settings.
    """

    config_class = EdgesConfig
    config: EdgesConfig
    model_name = "edges"

    def edge_targets(self, images: tf.Tensor) -> tf.Tensor:
        return edge_maps(images, self.config.threshold_fraction, self.config.smoothing_sigma)

    def build_model(self) -> EncoderDecoderModel:
        config = self.config
        backbone = self.build_backbone()
        endpoint, (side, _, _) = last_spatial_endpoint(backbone, config.image_size)
        decoder = ImageDecoder(config.image_size, 1, input_size=side, width=config.decoder_width,
                               synchronized_bn=config.synchronized_bn, name="decoder")
        return EncoderDecoderModel(backbone, decoder, decoder_input=endpoint,
                                   name=self.model_name)

    def build_inputs(self, input_context: tf.distribute.InputContext | None = None
                     ) -> tf.data.Dataset:
        """``(images, edge maps [b, h, w, 1])`` batches."""
        images = self.training_images(input_context)
        return images.map(lambda batch: (batch, self.edge_targets(batch)),
                          num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    def build_losses(self, labels: tf.Tensor, outputs: dict[str, tf.Tensor]) -> tf.Tensor:
        return balanced_edge_loss(labels, outputs["logits"])

    def sample_images(self, model: keras.Model) -> dict[str, tf.Tensor]:
        images = self.first_training_images(SAMPLE_TRIPLES)
        predicted = tf.sigmoid(tf.cast(model(images, training=False)["logits"], tf.float32))
        return {"edges": interleave(images, self.edge_targets(images), predicted)}


TASKS.register("edges", EdgesTask)
