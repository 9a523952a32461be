"""CPC: predict the encodings of patches below from a row-causal context of the patches above.

van den Oord, Li & Vinyals, "Representation Learning with Contrastive Predictive Coding",
2018 (its image experiments), and Hénaff et al., "Data-Efficient Image Recognition with
Contrastive Predictive Coding", 2019. An image is cut into a grid of overlapping patches (the
papers: 7 × 7 patches of 64 px at stride 32 from a 256 px image); the shared encoder turns each
patch into a pooled vector z[i, j]; a masked-convolution context network gives c[i, j] from
the z of rows ≤ i (PixelCNN-style, Hénaff et al.); a linear map per offset predicts
ẑ[i + k, j] = W_k c[i, j], scored by dot product against every z of the global batch (the
target, the other patches of the same image and of the other images, gathered across
replicas): InfoNCE (van den Oord et al. eq. 4), mean over all predictions.

Choices here (all are config fields):
  * Geometry: ``grid_size`` 7 and 50 % overlap (patch = 2 · stride) as in the papers; the stride
    is ``image_size // (grid_size + 1)`` (32 for 256 px) but at least ``MIN_PATCH_STRIDE`` px,
    and the batch is resized to the grid's footprint ``(grid_size − 1) · stride + patch`` when it
    differs from ``image_size``. Fashion-MNIST (28 px) becomes 32 px cut into 7 × 7 patches of
    8 px at stride 4.
  * Offsets: ``prediction_steps`` offsets starting at the first row whose patches share no
    pixels with row i (k ≥ ceil(patch / stride) = 2 at 50 % overlap), so no prediction can be
    made by copying overlapping pixels; ``skip_overlapping_rows=False`` starts at k = 1.
    ``prediction_steps=3`` (k = 2, 3, 4 on the 7-row grid) is our choice, not a paper's.
  * Context network: ``context_layers`` residual blocks (ReLU → row-causal 3 × 3 convolution
    → ReLU → 1 × 1 convolution); the row-causal convolution pads two rows above and none
    below, i.e. a masked convolution that sees rows i − 2 … i. Three blocks see the 6 rows
    above a position: all of a 7-row grid.
  * Probed / exported encoder (:class:`PatchGridEncoder`): like the papers' linear evaluation
    it runs the patch encoder on the same grid of patches of the input image and averages
    the patch vectors (``pool``); the other endpoints are g × g grids of per-patch features.
    Measured on Fashion-MNIST after 300 Adam steps (batch 32, the slow test), the best probed
    layer of the patch grid is 85.4 % trained vs 83.2 % random init; the same patch encoder
    applied to whole 28 px images gave 84.3 % vs 84.1 %, no gain.
    The registry backbone is built for the patch size (its ``input_size``).
  * The patch encoder keeps the backbone's BatchNorm (Hénaff et al. replace it with
    LayerNorm, finding that batch statistics let large models shortcut the task); patch
    augmentations (colour dropping, flips) are not applied.
  * The scores are raw dot products (no normalisation or temperature, as in the papers), which
    SGD at the trainer's default rate drives to divergence within a few steps; train CPC with
    Adam (``--optimizer=adam``, learning rate ~1e-3), as the papers do.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import tensorflow as tf

from selfsup.models import FEATURE_ENDPOINT, Backbone, build_backbone
from selfsup.models.registry import ConfigError
from selfsup.tasks.base import BACKBONE_NAME, TASKS, Task, TaskConfig
from selfsup.tasks.info_nce import replica_info_nce

# van den Oord et al. 2018 and Hénaff et al. 2019: a 7 × 7 grid, patches overlapping by half.
CPC_GRID_SIZE = 7
# Smallest automatic stride (patch = 2 · stride = 8 px): smaller patches hold too few pixels for
# a convolutional encoder.
MIN_PATCH_STRIDE = 4
CONTEXT_KERNEL = (3, 3)


@dataclasses.dataclass(frozen=True)
class PatchGeometry:
    """Where the patches lie: the batch is resized to ``footprint`` px, then cut."""

    grid_size: int
    patch_size: int
    stride: int

    @property
    def footprint(self) -> int:
        return (self.grid_size - 1) * self.stride + self.patch_size


def resolve_geometry(image_size: int, grid_size: int = CPC_GRID_SIZE,
                     patch_size: int | None = None, stride: int | None = None) -> PatchGeometry:
    """The patch grid for ``image_size`` (None: automatic, see the module docstring)."""
    if stride is None:
        stride = max(image_size // (grid_size + 1), MIN_PATCH_STRIDE)
    if patch_size is None:
        patch_size = 2 * stride
    return PatchGeometry(grid_size, patch_size, stride)


def patch_grid(images: tf.Tensor, geometry: PatchGeometry) -> tf.Tensor:
    """Images ``[b, s, s, c]`` → overlapping patches ``[b, g, g, p, p, c]`` (row-major grid).

    The batch is first resized (bilinear) to the grid's footprint if its size differs.
    Vectorised: one ``extract_patches`` call over the batch.
    """
    size = geometry.footprint
    if images.shape[1] != size or images.shape[2] != size:
        images = tf.image.resize(images, [size, size])
    channels = images.shape[-1]
    patches = tf.image.extract_patches(
        images, sizes=[1, geometry.patch_size, geometry.patch_size, 1],
        strides=[1, geometry.stride, geometry.stride, 1], rates=[1, 1, 1, 1], padding="VALID")
    # extract_patches flattens each patch in (row, column, channel) order.
    grid = geometry.grid_size
    return tf.reshape(patches, [-1, grid, grid, geometry.patch_size, geometry.patch_size,
                                channels])


class RowCausalConv(keras.layers.Layer):
    """A convolution whose output row i sees input rows i − (kh − 1) … i only.

    Equivalent to a PixelCNN-style masked convolution over whole rows (Hénaff et al. 2019):
    the input is zero-padded above by ``kh − 1`` rows and not below, and 'same' on columns.
    """

    def __init__(self, filters: int, kernel_size: tuple[int, int] = CONTEXT_KERNEL,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        rows, cols = kernel_size
        self.pad = keras.layers.ZeroPadding2D(((rows - 1, 0), (cols // 2, (cols - 1) // 2)))
        self.conv = keras.layers.Conv2D(filters, kernel_size, padding="valid", name="conv")

    def call(self, inputs):
        return self.conv(self.pad(inputs))


class RowCausalContext(keras.layers.Layer):
    """CPC's context network: residual row-causal convolutions over the grid of encodings."""

    def __init__(self, units: int, num_blocks: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.input_projection = keras.layers.Conv2D(units, 1, name="input_projection")
        self.causal = [RowCausalConv(units, name=f"block{i + 1}_causal")
                       for i in range(num_blocks)]
        self.mixing = [keras.layers.Conv2D(units, 1, name=f"block{i + 1}_mix")
                       for i in range(num_blocks)]

    def call(self, encodings):
        x = self.input_projection(encodings)
        for causal, mixing in zip(self.causal, self.mixing, strict=True):
            x = x + mixing(keras.ops.relu(causal(keras.ops.relu(x))))
        return x


def prediction_offsets(geometry: PatchGeometry, prediction_steps: int,
                       skip_overlapping_rows: bool = True) -> tuple[int, ...]:
    """Row offsets k predicted from each context row (see the module docstring)."""
    first = math.ceil(geometry.patch_size / geometry.stride) if skip_overlapping_rows else 1
    return tuple(range(first, first + prediction_steps))


def cpc_loss(encodings: tf.Tensor, predictions: dict[int, tf.Tensor]) -> tf.Tensor:
    """InfoNCE of every prediction against all patch encodings of the global batch.

    ``encodings``: z ``[b, g, g, d]``; ``predictions[k]``: ẑ ``[b, g, g, d]`` made at every row i
    for row i + k (rows with i + k ≥ g have no target and are dropped). The positive of the
    prediction at (image n, row i, column j) is z[n, i + k, j]; the candidates are all
    ``replicas · b · g²`` encodings. Returns the mean over all predictions.
    """
    encodings = tf.cast(encodings, tf.float32)
    batch = tf.shape(encodings)[0]
    grid, depth = encodings.shape[1], encodings.shape[-1]
    keys = tf.reshape(encodings, [-1, depth])
    # Flat index of z[n, i, j] in keys.
    flat_index = tf.reshape(tf.range(batch * grid * grid), [batch, grid, grid])
    queries, positives = [], []
    for offset, predicted in predictions.items():
        if not 0 < offset < grid:
            raise ValueError(f"offset {offset} must lie in 1..{grid - 1}")
        queries.append(tf.reshape(tf.cast(predicted[:, :grid - offset], tf.float32), [-1, depth]))
        positives.append(tf.reshape(flat_index[:, offset:], [-1]))
    return replica_info_nce(tf.concat(queries, 0), keys, tf.concat(positives, 0))


@dataclasses.dataclass(frozen=True)
class CPCConfig(TaskConfig):
    """CPC settings (see the module docstring for the defaults and their sources)."""

    grid_size: int = CPC_GRID_SIZE
    patch_size: int | None = None
    patch_stride: int | None = None
    prediction_steps: int = 3
    skip_overlapping_rows: bool = True
    context_units: int = 128
    context_layers: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("grid_size", "prediction_steps", "context_units", "context_layers"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("patch_size", "patch_stride"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        offsets = self.offsets()
        if offsets[-1] >= self.grid_size:
            raise ConfigError(f"offsets {offsets[0]}..{offsets[-1]} do not fit a "
                              f"{self.grid_size}-row grid; lower prediction_steps")

    def geometry(self) -> PatchGeometry:
        return resolve_geometry(self.image_size, self.grid_size, self.patch_size,
                                self.patch_stride)

    def offsets(self) -> tuple[int, ...]:
        return prediction_offsets(self.geometry(), self.prediction_steps,
                                  self.skip_overlapping_rows)


class OffsetPredictors(keras.layers.Layer):
    """One linear map per row offset: ẑ_k = W_k c (van den Oord et al. 2018, eq. 3, no bias).

    ``call(context [b, g, g, u], encodings [b, g, g, d])`` → ``[K, b, g, g, d]``; the encodings
    only fix d when the weights are built. The maps start at zero, so every first score is 0
    and the initial loss exactly log(candidates); with Glorot-initialised maps the first
    scores were large (loss 14.6 against log N = 6.7 measured on Fashion-MNIST).
    """

    def __init__(self, num_offsets: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_offsets = num_offsets

    def build(self, context_shape, encodings_shape) -> None:
        self.kernel = self.add_weight(
            shape=(self.num_offsets, context_shape[-1], encodings_shape[-1]),
            initializer="zeros", name="kernel")

    def call(self, context, encodings):
        return keras.ops.einsum("bijc,kcd->kbijd", context, self.kernel)


class PatchGridEncoder(Backbone):
    """CPC's encoder as probed and exported (Hénaff et al. 2019): image → patch grid → encoder.

    The image is cut into the training grid of patches, and the shared patch encoder (a
    registry backbone built for the patch size, attribute ``patch_encoder``) runs on every
    patch, as in the papers' linear evaluation. Endpoints: each endpoint of the patch encoder
    as a ``[b, g, g, c]`` grid (4-D maps averaged over each patch first), and ``pool`` = the
    patch vectors z averaged over the grid.
    """

    def __init__(self, backbone: str, geometry: PatchGeometry, synchronized_bn: bool = False,
                 backbone_kwargs: dict | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        kwargs_of_backbone = dict(backbone_kwargs or {})
        self.geometry = geometry
        self._config = dict(backbone=backbone, geometry=dataclasses.asdict(geometry),
                            synchronized_bn=synchronized_bn, backbone_kwargs=kwargs_of_backbone)
        self.patch_encoder = build_backbone(backbone, input_size=geometry.patch_size,
                                            synchronized_bn=synchronized_bn,
                                            name="patch_encoder", **kwargs_of_backbone)

    def call(self, inputs, training=None, from_patches=False):
        """Images ``[b, s, s, c]`` → endpoints; with ``from_patches``, patch grids
        ``[b, g, g, p, p, c]`` (the training input) → patch vectors z ``[b, g, g, d]``."""
        grid, patch = self.geometry.grid_size, self.geometry.patch_size
        patches = inputs if from_patches else patch_grid(inputs, self.geometry)
        flat = keras.ops.reshape(patches, (-1, patch, patch, patches.shape[-1]))
        outputs = self.patch_encoder(flat, training=training)
        if from_patches:
            pooled = outputs[FEATURE_ENDPOINT]
            return keras.ops.reshape(pooled, (-1, grid, grid, pooled.shape[-1]))
        endpoints = {}
        for name, value in outputs.items():
            if len(value.shape) == 4:
                value = keras.ops.mean(value, axis=(1, 2))
            value = keras.ops.reshape(value, (-1, grid, grid, value.shape[-1]))
            endpoints[name] = (keras.ops.mean(value, axis=(1, 2)) if name == FEATURE_ENDPOINT
                               else value)
        return endpoints


class CPCModel(keras.Model):
    """Patch encoder (``.backbone``), row-causal context network and one W_k per offset.

    ``call(patches [b, g, g, p, p, 3])`` returns ``encodings`` z ``[b, g, g, d]``, ``context``
    c ``[b, g, g, units]`` and ``predictions`` ``[K, b, g, g, d]``, entry ``n`` = W_k c for the
    ``n``-th offset k of ``offsets``.
    """

    def __init__(self, backbone: PatchGridEncoder, offsets: tuple[int, ...],
                 context_units: int, context_layers: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone
        self.offsets = tuple(offsets)
        self.context = RowCausalContext(context_units, context_layers, name="context")
        self.predictors = OffsetPredictors(len(self.offsets), name="predictors")

    def call(self, patches, training=None):
        encodings = self.backbone(patches, training=training, from_patches=True)
        context = self.context(encodings)
        return {"encodings": encodings, "context": context,
                "predictions": self.predictors(context, encodings)}


class CPCTask(Task):
    """Contrastive Predictive Coding on image patches (van den Oord 2018; Hénaff et al. 2019)."""

    shares_backbone = False  # a patch-grid encoder of its own

    config_class = CPCConfig

    def build_backbone(self) -> PatchGridEncoder:
        config = self.config
        return PatchGridEncoder(config.backbone, config.geometry(),
                                synchronized_bn=config.synchronized_bn,
                                backbone_kwargs=config.backbone_kwargs, name=BACKBONE_NAME)

    def build_model(self) -> CPCModel:
        config = self.config
        return CPCModel(self.build_backbone(), config.offsets(), config.context_units,
                        config.context_layers, name="cpc")

    def dummy_inputs(self) -> tf.Tensor:
        geometry = self.config.geometry()
        grid, patch = geometry.grid_size, geometry.patch_size
        return tf.zeros([1, grid, grid, patch, patch, 3])

    def build_inputs(self, input_context: tf.distribute.InputContext | None = None
                     ) -> tf.data.Dataset:
        config = self.config
        geometry = config.geometry()
        images = self.training_images(input_context)
        return images.map(lambda batch: patch_grid(batch, geometry),
                          num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    def build_losses(self, labels, outputs: dict[str, tf.Tensor]) -> tf.Tensor:
        predictions = dict(zip(self.config.offsets(), tf.unstack(outputs["predictions"]),
                               strict=True))
        return cpc_loss(outputs["encodings"], predictions)

    def build_metrics(self) -> list[keras.metrics.Metric]:
        return [keras.metrics.Mean("loss")]

    def compute_loss(self, inputs, model: keras.Model, training: bool):
        """Label-free: the inputs are just the model's input."""
        outputs = model(inputs, training=training)
        return self.build_losses(None, outputs), None, outputs


TASKS.register("cpc", CPCTask)
