"""Video prediction: from the past frames of a clip, generate the frames that follow.

Srivastava, Mansimov & Salakhutdinov, "Unsupervised Learning of Video Representations using
LSTMs", ICML 2015 (the future predictor), with the convolutional LSTM of Shi et al.,
"Convolutional LSTM Network: A Machine Learning Approach for Precipitation Nowcasting", NeurIPS
2015, as the recurrent decoder. A window of ``past_frames + future_frames`` consecutive frames
is cut from a video; the encoder (the video backbone) reads the first ``past_frames``; a
ConvLSTM unrolled ``future_frames`` steps from the encoder's last spatial map (its last time
step: the summary of the clip's end, as the LSTM encoder's final state in Srivastava et al.;
both streams' maps side by side for the two-stream network)
gives one hidden map per future frame, and the shared up-convolutional
:class:`~selfsup.models.decoders.ImageDecoder` turns each into an RGB frame in [0, 1]
(sigmoid). The loss is the squared error between predicted and true future frames, averaged
over frames, pixels, channels and the batch (the squared loss Srivastava et al. use for
natural-image inputs).

Defaults and choices (fields of :class:`VideoPredictionConfig`):
  * ``past_frames`` None: the config's ``clip_length`` (16), so the encoder trains on clips of
    the length it is evaluated on; ``future_frames`` None: as many as the past (Srivastava et
    al. predict as many frames as they read, e.g. 10 → 10 on Moving MNIST).
  * The decoder is unconditioned (it never sees its own outputs; Srivastava et al. compare
    conditioned and unconditioned decoders, with small differences) and reads the encoder's map
    at every step.
  * ``predictor_units`` 64 ConvLSTM channels and 3 × 3 kernels (``predictor_kernel``): our
    choices (Shi et al. compare several kernel sizes); ``decoder_width`` 32 (as the
    autoencoders here).
  * CPU-sized runs: ``--task_param=past_frames=4 --task_param=future_frames=4`` at
    ``--image_size=32``.

``sample_images`` (``prediction``): the first clips of the training split (file order), one
pair of rows per clip: the past frames then the true future frames, and below the predicted
future frames under their true ones. The probed and exported encoder is ``model.backbone``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from selfsup.models.conv_lstm import ConvLSTMPredictor
from selfsup.models.decoders import ImageDecoder
from selfsup.models.registry import ConfigError
from selfsup.tasks.base import TASKS
from selfsup.tasks.dpc import final_map_endpoints
from selfsup.tasks.pictures import image_grid
from selfsup.tasks.video_base import VideoTask, VideoTaskConfig

PREDICTOR_UNITS = 64
PREDICTOR_KERNEL = 3
DECODER_WIDTH = 32
# Clips shown by ``sample_images`` (two grid rows each).
SAMPLE_CLIPS = 2


def split_past_future(clips: tf.Tensor, past_frames: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Windows ``[b, past + future, h, w, c]`` → ``(past [b, past, …], future [b, future,
    …])``: the first ``past_frames`` frames, and every frame after them."""
    if not 0 < past_frames < clips.shape[1]:
        raise ValueError(f"past_frames must lie in 1..{clips.shape[1] - 1}, got {past_frames}")
    return clips[:, :past_frames], clips[:, past_frames:]


def prediction_grid(past: np.ndarray, future: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Clips ``[n, p, h, w, 3]`` (past), ``[n, f, h, w, 3]`` (true and predicted future) → one
    float RGB picture ``[1, H, W, 3]`` in [0, 1]: per clip a row of its past then true future
    frames and, below, white cells under the past and the predicted frames under the true
    ones."""
    blank = np.ones_like(past)
    rows = []
    for index in range(len(past)):
        rows.append(np.concatenate([past[index], future[index]]))
        rows.append(np.concatenate([blank[index], predicted[index]]))
    columns = past.shape[1] + future.shape[1]
    grid = image_grid(np.concatenate(rows), columns=columns)
    return grid[None].astype(np.float32) / 255.0


@dataclasses.dataclass(frozen=True)
class VideoPredictionConfig(VideoTaskConfig):
    """Video prediction settings (see the module docstring)."""

    past_frames: int | None = None
    future_frames: int | None = None
    predictor_units: int = PREDICTOR_UNITS
    predictor_kernel: int = PREDICTOR_KERNEL
    decoder_width: int = DECODER_WIDTH

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("past_frames", "future_frames"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be positive (or None), got {value}")
        for name in ("predictor_units", "predictor_kernel", "decoder_width"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def past(self) -> int:
        return self.clip_length if self.past_frames is None else self.past_frames

    @property
    def future(self) -> int:
        return self.past if self.future_frames is None else self.future_frames


class VideoPredictionModel(keras.Model):
    """Encoder (``.backbone``), ConvLSTM predictor and frame decoder (Srivastava et al. 2015
    with Shi et al. 2015's ConvLSTM).

    ``call(past [b, p, s, s, 3])`` returns the encoder's endpoints plus ``logits`` ``[b, f, s,
    s, 3]`` and ``frames`` (their sigmoid), the predicted future frames.
    """

    def __init__(self, backbone: keras.Model, endpoints: Sequence[str], map_size: int,
                 future_frames: int,
                 image_size: int, predictor_units: int = PREDICTOR_UNITS,
                 predictor_kernel: int = PREDICTOR_KERNEL, decoder_width: int = DECODER_WIDTH,
                 synchronized_bn: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone
        self.endpoints = tuple(endpoints)
        self.future_frames = future_frames
        self.image_size = image_size
        self.predictor = ConvLSTMPredictor(future_frames, predictor_units, predictor_kernel,
                                           name="predictor")
        self.decoder = ImageDecoder(image_size, 3, input_size=map_size, width=decoder_width,
                                    synchronized_bn=synchronized_bn, name="decoder")

    def call(self, past, training=None):
        endpoints = dict(self.backbone(past, training=training))
        # The last time step of each stream's final map, side by side.
        summaries = [endpoints[name][:, -1] for name in self.endpoints]
        summary = (summaries[0] if len(summaries) == 1
                   else keras.ops.concatenate(summaries, axis=-1))
        hidden = self.predictor(summary, training=training)
        flat = keras.ops.reshape(hidden, (-1, *hidden.shape[2:]))
        logits = self.decoder(flat, training=training)
        logits = keras.ops.reshape(
            logits, (-1, self.future_frames, self.image_size, self.image_size, 3))
        return {**endpoints, "logits": logits, "frames": keras.ops.sigmoid(logits)}


class VideoPredictionTask(VideoTask):
    """Future-frame prediction (Srivastava et al. 2015; ConvLSTM of Shi et al. 2015)."""

    config_class = VideoPredictionConfig
    config: VideoPredictionConfig

    def window_length(self) -> int:
        return self.config.past + self.config.future

    def build_model(self) -> VideoPredictionModel:
        config = self.config
        backbone = self.build_backbone()
        endpoints, shape = final_map_endpoints(backbone, config.past, config.image_size)
        if shape[0] != shape[1]:
            raise ConfigError(f"the final map of {config.backbone!r} is not square: {shape}")
        return VideoPredictionModel(
            backbone, endpoints, shape[0], config.future, config.image_size,
            config.predictor_units, config.predictor_kernel, config.decoder_width,
            config.synchronized_bn, name="video_prediction")

    def dummy_inputs(self) -> tf.Tensor:
        size = self.config.image_size
        return tf.zeros([1, self.config.past, size, size, 3])

    def build_inputs(self, input_context: tf.distribute.InputContext | None = None
                     ) -> tf.data.Dataset:
        past_frames = self.config.past

        def past_and_future(clips, seed):
            # One window per video: [b, 1, p + f, s, s, 3].
            return split_past_future(clips[:, 0], past_frames)

        return self.map_training_clips(past_and_future, input_context)

    def build_losses(self, labels: tf.Tensor, outputs: dict[str, tf.Tensor]) -> tf.Tensor:
        """Squared error of the predicted frames, mean over frames, pixels, channels, batch."""
        frames = tf.cast(outputs["frames"], tf.float32)
        return tf.reduce_mean(tf.square(frames - tf.cast(labels, tf.float32)))

    def build_metrics(self) -> list[keras.metrics.Metric]:
        return [keras.metrics.Mean("loss")]

    def update_metrics(self, metrics: list[keras.metrics.Metric], loss: tf.Tensor, labels,
                       outputs: dict[str, tf.Tensor]) -> None:
        for metric in metrics:
            metric.update_state(loss)

    def sample_images(self, model: keras.Model) -> dict[str, tf.Tensor]:
        """The first clips' past, true and predicted future frames (module docstring)."""
        past, future = self.sample_clips()
        predicted = model(past, training=False)["frames"]
        return {"prediction": tf.constant(prediction_grid(
            past.numpy(), future.numpy(), np.asarray(predicted)))}

    def sample_clips(self) -> tuple[tf.Tensor, tf.Tensor]:
        """``(past, future)`` of the first window of the first :data:`SAMPLE_CLIPS` training
        videos (file order, centre crop)."""
        clips = self.first_training_clips(SAMPLE_CLIPS)
        return split_past_future(clips, self.config.past)


TASKS.register("video_prediction", VideoPredictionTask)
