"""DPC: predict the feature maps of future blocks of frames, contrasted against all others.

Han, Xie & Zisserman, "Video Representation Learning by Dense Predictive Coding", ICCV
Workshops 2019. A window of ``num_blocks`` consecutive, non-overlapping blocks of
``clip_length`` frames (a block is the encoder's clip) is cut from a video; the encoder f
(the video backbone) turns each block into a feature map z_t ``[h', w', c]`` (its last spatial
endpoint, averaged over the block's time axis; both streams' maps side by side for the
two-stream network); an aggregation ConvGRU g reads z_1 … z_{n−k}
into a context c; a predictor φ (two 1 × 1 convolutions with a ReLU between) gives ẑ = φ(c)
for the next block, and is stepped recurrently: the ConvGRU takes ẑ as its next input and φ
predicts the block after, k times. Every predicted vector ẑ_{t, i, j} (block t, position
i, j) is scored by a plain dot product (no normalisation, no temperature, as the paper)
against the actual vectors z of every predicted block, position and video of the global batch
(gathered across replicas); one positive per row (the same video, block and position),
softmax cross-entropy over all candidates (the paper's noise-contrastive loss). The paper
names the negatives (§3): *easy* (other videos), *spatial* (same video, other position) and
*temporal* (same video, same position, other block); the task logs which kind the top-scored
candidate is (``accuracy`` + ``top1_spatial`` + ``top1_temporal`` + ``top1_easy`` = 1).

Defaults (fields of :class:`DPCConfig`), from the paper's implementation details unless
said:
  * ``num_blocks`` 8 × ``clip_length`` 5 frames, the last ``predicted_blocks`` 3 predicted
    from the first 5; frames taken every ``frame_stride`` 3rd frame (the authors' released
    training setting for 25–30 fps video). The block length is the video base's
    ``clip_length``, so the probes evaluate the encoder on clips of the length it learnt on.
  * The ConvGRU has one layer with 1 × 1 kernels (``aggregator_kernel``) and as many channels
    as the encoder's map; φ's convolutions keep that width.
  * Input crops: ``image_size`` stays the video base's 112 px (the r3d/c3d family's size; the
    paper uses 128 px for its 2D-3D ResNet-18, giving 4 × 4 maps where r3d_18 gives 7 × 7).
  * Our choice: φ's last convolution starts at zero, so every first score is 0 and the first
    loss exactly log(candidates) (as CPC here); raw dot products of untrained maps are large.
    Train with Adam (the paper: Adam, learning rate 1e-3, weight decay 1e-5).
  * CPU-sized runs: ``--task_param=num_blocks=4 --task_param=clip_length=4
    --task_param=predicted_blocks=2 --task_param=frame_stride=2 --image_size=32
    --task_param=frame_size=40 --backbone_param=width_multiplier=0.125`` (16 frames per
    window, 4 × 4 maps; see the tests for measured losses).
The curriculum of the paper (predicting further with less context later in training) is not
implemented. The probed and exported encoder is ``model.backbone`` on a clip (its ``pool``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import keras
import tensorflow as tf

from selfsup.models.conv_lstm import ConvGRUCell
from selfsup.models.registry import ConfigError
from selfsup.tasks.base import TASKS
from selfsup.tasks.info_nce import info_nce, replica_scores
from selfsup.tasks.video_base import VideoTask, VideoTaskConfig

# Han et al. 2019: 8 blocks of 5 frames, the last 3 predicted from the first 5.
DPC_NUM_BLOCKS = 8
DPC_BLOCK_FRAMES = 5
DPC_PREDICTED_BLOCKS = 3
# The authors' released training code samples every 3rd frame.
DPC_FRAME_STRIDE = 3
# Han et al. 2019 and their released model: a one-layer ConvGRU with 1 × 1 kernels.
DPC_AGGREGATOR_KERNEL = 1

# What the top-scored candidate of a prediction is (Han et al. 2019's kinds of negatives).
EASY_NEGATIVE, SPATIAL_NEGATIVE, TEMPORAL_NEGATIVE, POSITIVE = 0, 1, 2, 3
CANDIDATE_KINDS = {EASY_NEGATIVE: "top1_easy", SPATIAL_NEGATIVE: "top1_spatial",
                   TEMPORAL_NEGATIVE: "top1_temporal"}


def split_blocks(clips: tf.Tensor, num_blocks: int, block_frames: int) -> tf.Tensor:
    """Windows ``[b, num_blocks · block_frames, h, w, c]`` → blocks ``[b, num_blocks,
    block_frames, h, w, c]``: block ``t`` holds frames ``t · block_frames`` … ``(t + 1) ·
    block_frames − 1`` of its window, in order."""
    frames = clips.shape[1]
    if frames is not None and frames != num_blocks * block_frames:
        raise ValueError(f"a window of {frames} frames is not {num_blocks} blocks of "
                         f"{block_frames}")
    shape = tf.shape(clips)
    return tf.reshape(clips, tf.concat([[shape[0], num_blocks, block_frames], shape[2:]], 0))


def block_feature_maps(maps: Sequence[tf.Tensor], num_blocks: int) -> tf.Tensor:
    """The encoder's final maps of every block, ``[b · n, t', h', w', c_k]`` per stream (the
    blocks of a video consecutive) → ``[b, n, h', w', Σ c_k]``: each averaged over its time
    axis, then concatenated along channels."""
    pooled = [tf.reduce_mean(value, axis=1) for value in maps]
    pooled = pooled[0] if len(pooled) == 1 else tf.concat(pooled, axis=-1)
    shape = tf.shape(pooled)
    return tf.reshape(pooled, tf.concat([[-1, num_blocks], shape[1:]], 0))


def dpc_scores(predictions: tf.Tensor, targets: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Dot products of every predicted vector with every actual one of the global batch.

    ``predictions``, ``targets``: ``[b, k, h', w', c]`` (k predicted blocks). Rows and columns
    are flattened in (video, block, row, column) order; the candidates are the targets of all
    replicas (this replica's start at its offset). Returns ``(scores [b·k·h'·w', replicas ·
    b·k·h'·w'], positive_index)``: the positive of a row is the target of the same video, block
    and position, i.e. column ``offset + row``.
    """
    depth = predictions.shape[-1]
    queries = tf.reshape(tf.cast(predictions, tf.float32), [-1, depth])
    keys = tf.reshape(tf.cast(targets, tf.float32), [-1, depth])
    scores, offset = replica_scores(queries, keys)
    return scores, tf.range(tf.shape(queries)[0]) + offset


def dpc_loss(predictions: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
    """Mean cross-entropy of each prediction's positive among all candidates."""
    scores, positive_index = dpc_scores(predictions, targets)
    return info_nce(scores, positive_index)


def candidate_kind(row: tf.Tensor, column: tf.Tensor, predicted_blocks: int,
                   positions: int) -> tf.Tensor:
    """Kind of candidate ``column`` for the prediction of global row ``row`` (both flat
    indices in :func:`dpc_scores`' order, broadcast against each other): ``POSITIVE``,
    ``TEMPORAL_NEGATIVE`` (same video and position, other block), ``SPATIAL_NEGATIVE`` (same
    video, other position) or ``EASY_NEGATIVE`` (another video)."""
    row, column = tf.cast(row, tf.int32), tf.cast(column, tf.int32)
    per_video = predicted_blocks * positions
    same_video = row // per_video == column // per_video
    same_position = row % positions == column % positions
    same_block = (row // positions) % predicted_blocks == (column // positions) % predicted_blocks
    return tf.where(~same_video, EASY_NEGATIVE,
                    tf.where(~same_position, SPATIAL_NEGATIVE,
                             tf.where(~same_block, TEMPORAL_NEGATIVE, POSITIVE)))


def final_map_endpoints(backbone: keras.Model, frames: int, image_size: int
                        ) -> tuple[tuple[str, ...], tuple[int, int, int]]:
    """The backbone's last spatio-temporal map of each stream, for clips of ``frames`` square
    frames: the 5-D endpoints ``[b, t', h', w', c]`` that the next endpoint pools (``res5``
    of R3D, ``conv5`` of C3D, ``frame_res4`` of LRCN, ``rgb_res5`` and ``motion_res5`` of the
    two-stream network). Returns their names and ``(h', w', Σ c)``; ConfigError if there is
    none or their sides differ."""
    specs = backbone.output_specs((None, frames, image_size, image_size, 3))
    items = list(specs.items())
    names = tuple(name for index, (name, shape) in enumerate(items)
                  if len(shape) == 5 and (index + 1 == len(items) or len(items[index + 1][1]) != 5))
    if not names:
        raise ConfigError(f"backbone {backbone.name!r} has no spatio-temporal feature map "
                          f"[b, t, h, w, c]; this task needs one")
    sides = {specs[name][2:4] for name in names}
    if len(sides) > 1:
        raise ConfigError(f"the final maps {', '.join(names)} of backbone {backbone.name!r} "
                          f"differ in size: {sorted(sides)}")
    height, width = sides.pop()
    return names, (height, width, sum(specs[name][-1] for name in names))


@dataclasses.dataclass(frozen=True)
class DPCConfig(VideoTaskConfig):
    """DPC settings (see the module docstring for the sources of the defaults)."""

    clip_length: int = DPC_BLOCK_FRAMES  # frames per block
    frame_stride: int = DPC_FRAME_STRIDE
    num_blocks: int = DPC_NUM_BLOCKS
    predicted_blocks: int = DPC_PREDICTED_BLOCKS
    aggregator_kernel: int = DPC_AGGREGATOR_KERNEL

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("num_blocks", "predicted_blocks", "aggregator_kernel"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.predicted_blocks >= self.num_blocks:
            raise ConfigError(f"predicted_blocks must be below num_blocks ({self.num_blocks}) "
                              f"so at least one block is observed, got {self.predicted_blocks}")


class DPCModel(keras.Model):
    """Encoder (``.backbone``), aggregation ConvGRU and predictor φ of DPC (Han et al. 2019).

    ``call(blocks [b, n, T, s, s, 3])`` returns ``features`` z ``[b, n, h', w', c]`` of every
    block, ``targets`` (z of the last ``predicted_blocks``) and ``predictions`` ẑ of the same
    shape, made recurrently from the first ``n − predicted_blocks`` blocks.
    """

    def __init__(self, backbone: keras.Model, endpoints: Sequence[str], channels: int,
                 predicted_blocks: int, aggregator_kernel: int = DPC_AGGREGATOR_KERNEL,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone
        self.endpoints = tuple(endpoints)
        self.predicted_blocks = predicted_blocks
        self.aggregator = ConvGRUCell(channels, aggregator_kernel, name="aggregator")
        self.predictor_hidden = keras.layers.Conv2D(channels, 1, name="predictor_hidden")
        # Zero-initialised: the first predictions are 0 (see the module docstring).
        self.predictor_out = keras.layers.Conv2D(channels, 1, kernel_initializer="zeros",
                                                 name="predictor_out")

    def predict_next(self, context):
        return self.predictor_out(keras.ops.relu(self.predictor_hidden(context)))

    def call(self, blocks, training=None):
        num_blocks = blocks.shape[1]
        flat = keras.ops.reshape(blocks, (-1, *blocks.shape[2:]))
        outputs = self.backbone(flat, training=training)
        features = block_feature_maps([outputs[name] for name in self.endpoints], num_blocks)
        observed = num_blocks - self.predicted_blocks
        context = keras.ops.zeros_like(features[:, 0])
        for t in range(observed):
            context = self.aggregator(features[:, t], context)
        predictions = []
        for step in range(self.predicted_blocks):
            predicted = self.predict_next(context)
            predictions.append(predicted)
            if step + 1 < self.predicted_blocks:
                context = self.aggregator(predicted, context)
        return {"features": features, "targets": features[:, observed:],
                "predictions": keras.ops.stack(predictions, axis=1)}


class DPCTask(VideoTask):
    """Dense Predictive Coding (Han, Xie & Zisserman 2019) on blocks of video frames."""

    config_class = DPCConfig
    config: DPCConfig

    def window_length(self) -> int:
        return self.config.num_blocks * self.config.clip_length

    def build_model(self) -> DPCModel:
        config = self.config
        backbone = self.build_backbone()
        endpoints, shape = final_map_endpoints(backbone, config.clip_length, config.image_size)
        return DPCModel(backbone, endpoints, shape[-1], config.predicted_blocks,
                        config.aggregator_kernel, name="dpc")

    def dummy_inputs(self) -> tf.Tensor:
        config = self.config
        size = config.image_size
        return tf.zeros([1, config.num_blocks, config.clip_length, size, size, 3])

    def build_inputs(self, input_context: tf.distribute.InputContext | None = None
                     ) -> tf.data.Dataset:
        config = self.config

        def to_blocks(clips, seed):
            # One window per video: [b, 1, n · T, s, s, 3] → [b, n, T, s, s, 3].
            blocks = split_blocks(clips[:, 0], config.num_blocks, config.clip_length)
            return blocks, tf.zeros([tf.shape(blocks)[0]], tf.int64)

        return self.map_training_clips(to_blocks, input_context)

    def compute_loss(self, inputs, model: keras.Model, training: bool):
        """Label-free: the loss of the predictions against all block maps of the batch."""
        blocks, _ = inputs
        outputs = model(blocks, training=training)
        predictions = outputs["predictions"]
        scores, positive_index = dpc_scores(predictions, outputs["targets"])
        positions = predictions.shape[2] * predictions.shape[3]
        top = tf.argmax(scores, axis=-1, output_type=tf.int32)
        outputs = {**outputs, "scores": scores,
                   "top1_kind": candidate_kind(positive_index, top, self.config.predicted_blocks,
                                               positions)}
        return info_nce(scores, positive_index), None, outputs

    def build_metrics(self) -> list[keras.metrics.Metric]:
        return [keras.metrics.Mean("loss"), keras.metrics.Mean("accuracy"),
                *(keras.metrics.Mean(name) for name in CANDIDATE_KINDS.values())]

    def update_metrics(self, metrics: list[keras.metrics.Metric], loss: tf.Tensor, labels,
                       outputs: dict[str, tf.Tensor]) -> None:
        kinds = outputs["top1_kind"]
        codes = {"accuracy": POSITIVE, **{name: code for code, name in CANDIDATE_KINDS.items()}}
        for metric in metrics:
            if metric.name == "loss":
                metric.update_state(loss)
            else:
                metric.update_state(tf.cast(tf.equal(kinds, codes[metric.name]), tf.float32))


TASKS.register("dpc", DPCTask)
