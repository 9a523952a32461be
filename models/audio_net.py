"""The audio subnetwork of L3-Net: a VGG-style 2D convnet over a log-mel spectrogram.

Arandjelović & Zisserman, "Look, Listen and Learn", ICCV 2017, §3.2: four blocks of two 3×3
convolutions (each with BatchNorm and ReLU) and a 2×2 max-pool, 64/128/256/512 channels, then a
max-pool over the whole remaining time–frequency map to one 512-d vector. ``width_multiplier``
scales every block (0.25 gives 16/32/64/128, the CPU-sized default of ``av_correspondence``).

The network takes raw waveforms: its first step is the log-mel front end of
:func:`selfsup.datasets.audio.log_mel_spectrogram` (VGGish's parameters; L3-Net itself uses a
257-band log spectrogram of 48 kHz audio), so an exported audio encoder needs no separate
preprocessing. Endpoints, input to output: ``log_mel`` ``[b, frames, bands, 1]``, ``block1`` …
``block4``, ``pool``.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from selfsup.datasets.audio import (
    HOP_SECONDS,
    LOG_OFFSET,
    MEL_MAX_HZ,
    MEL_MIN_HZ,
    NUM_MEL_BINS,
    SAMPLE_RATE,
    WINDOW_SECONDS,
    log_mel_spectrogram,
)
from selfsup.models.backbone import FEATURE_ENDPOINT, Backbone, make_batch_norm
from selfsup.models.blocks import conv

L3_AUDIO_WIDTHS = (64, 128, 256, 512)  # Arandjelović & Zisserman 2017, Fig. 2


class LogMel(keras.layers.Layer):
    """Waveforms ``[b, samples]`` → log-mel ``[b, frames, bands, 1]`` (no weights)."""

    def __init__(self, sample_rate: int = SAMPLE_RATE, num_mel_bins: int = NUM_MEL_BINS,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.sample_rate = sample_rate
        self.num_mel_bins = num_mel_bins

    def call(self, waveforms):
        spectrogram = log_mel_spectrogram(
            waveforms, self.sample_rate, window_seconds=WINDOW_SECONDS, hop_seconds=HOP_SECONDS,
            num_mel_bins=self.num_mel_bins, lower_hz=MEL_MIN_HZ,
            upper_hz=min(MEL_MAX_HZ, self.sample_rate / 2), log_offset=LOG_OFFSET)
        return spectrogram[..., tf.newaxis]

    def get_config(self) -> dict:
        return {**super().get_config(), "sample_rate": self.sample_rate,
                "num_mel_bins": self.num_mel_bins}


class AudioNet(Backbone):
    """L3-Net's audio subnetwork (Arandjelović & Zisserman 2017) on log-mel input; see the
    module docstring for the layout and endpoints."""

    input_rank = 2  # waveforms [batch, samples]

    def __init__(self, sample_rate: int = SAMPLE_RATE, num_mel_bins: int = NUM_MEL_BINS,
                 widths: tuple[int, ...] = L3_AUDIO_WIDTHS, width_multiplier: float = 1.0,
                 synchronized_bn: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self._config = dict(sample_rate=sample_rate, num_mel_bins=num_mel_bins,
                            widths=tuple(widths), width_multiplier=width_multiplier,
                            synchronized_bn=synchronized_bn)
        self.log_mel = LogMel(sample_rate, num_mel_bins, name="log_mel")
        self.convs, self.norms = [], []
        for block, width in enumerate(widths, start=1):
            channels = max(1, int(round(width * width_multiplier)))
            for index in (1, 2):
                self.convs.append(conv(channels, 3, name=f"block{block}_conv{index}"))
                self.norms.append(make_batch_norm(synchronized_bn,
                                                  name=f"block{block}_bn{index}"))
        self.pool = keras.layers.MaxPooling2D(2, padding="same", name="pool2x2")

    def call(self, waveforms, training=None):
        x = self.log_mel(waveforms)
        endpoints = {"log_mel": x}
        for block in range(len(self.convs) // 2):
            for layer in (2 * block, 2 * block + 1):
                x = keras.ops.relu(self.norms[layer](self.convs[layer](x), training=training))
            x = self.pool(x)
            endpoints[f"block{block + 1}"] = x
        endpoints[FEATURE_ENDPOINT] = keras.ops.max(x, axis=(1, 2))
        return endpoints
