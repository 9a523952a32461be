"""Audio for audio-visual tasks: soundtracks decoded with PyAV, log-mel spectrograms in TF.

:func:`decode_audio` reads the first audio stream of any container FFmpeg knows (the PyAV wheel
bundles FFmpeg: aac, ac3, mp3, flac, pcm, opus, ...) and resamples it with
``av.AudioResampler`` to float32 at the asked rate, then averages its channels to mono.

:func:`log_mel_spectrogram` follows the AudioSet / VGGish front end (Hershey et al., "CNN
Architectures for Large-Scale Audio Classification", ICASSP 2017, §2.3 and the released VGGish
parameters): 16 kHz mono, 25 ms periodic-Hann windows every 10 ms, an FFT of the next power of
two (512 samples at 16 kHz), magnitude spectrum, 64 mel bands between 125 and 7500 Hz on the HTK
mel scale (``mel = 1127 ln(1 + f / 700)``, triangles in mel, the DC bin excluded, as
``tf.signal.linear_to_mel_weight_matrix`` builds them), then ``log(mel + 0.01)``. One second of
16 kHz audio gives 98 frames × 64 bands.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from selfsup.models.registry import ConfigError

# Hershey et al. 2017 (VGGish / AudioSet front end).
SAMPLE_RATE = 16_000
WINDOW_SECONDS = 0.025
HOP_SECONDS = 0.010
NUM_MEL_BINS = 64
MEL_MIN_HZ = 125.0
MEL_MAX_HZ = 7500.0
LOG_OFFSET = 0.01


class AudioDecodeError(ConfigError):
    """A file without a decodable audio stream (one-line message naming it)."""


def _import_av():
    try:
        import av
    except ImportError:  # pragma: no cover - a dependency of selfsup
        raise ConfigError("decoding audio needs PyAV (pip install 'av>=14')") from None
    return av


def has_audio_stream(path: str | os.PathLike) -> bool:
    """Whether ``path`` opens as a container with at least one audio stream (no decoding)."""
    av = _import_av()
    try:
        with av.open(os.fspath(path)) as container:
            return bool(container.streams.audio)
    except (av.FFmpegError, OSError):
        return False


def audio_start_time(path: str | os.PathLike) -> float:
    """Seconds from the container's time origin to the first audio sample (0 if unknown)."""
    av = _import_av()
    with av.open(os.fspath(path)) as container:
        stream = container.streams.audio[0]
        if stream.start_time is None:
            return 0.0
        return float(stream.start_time * stream.time_base)


def mono_resampler(sample_rate: int):
    """An ``av.AudioResampler`` to planar float32 at ``sample_rate`` that keeps the channels
    (they are averaged by :func:`resampled_mono`: FFmpeg's own stereo→mono downmix weights
    each channel by 1/√2, so a mono mix of two equal channels would be √2 louder)."""
    av = _import_av()
    return av.AudioResampler(format="fltp", rate=sample_rate)


def resampled_mono(resampler, frame) -> list[np.ndarray]:
    """``resampler``'s output for ``frame`` (None: flush) as mono float32 chunks (the mean of
    the channels)."""
    return [out.to_ndarray().mean(axis=0, dtype=np.float32)
            for out in resampler.resample(frame)]


def decode_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The first audio stream of ``path`` as float32 mono ``[samples]`` at ``sample_rate``
    (resampled by FFmpeg, channels averaged); :class:`AudioDecodeError` naming the file when
    it has no audio stream or nothing decodes."""
    av = _import_av()
    path = os.fspath(path)
    if sample_rate <= 0:
        raise ConfigError(f"sample_rate must be positive, got {sample_rate}")
    try:
        with av.open(path) as container:
            if not container.streams.audio:
                raise AudioDecodeError(f"{path!r} has no audio stream; audio-visual tasks need "
                                       "videos with a soundtrack")
            resampler = mono_resampler(sample_rate)
            chunks = []
            for frame in container.decode(audio=0):
                chunks.extend(resampled_mono(resampler, frame))
            chunks.extend(resampled_mono(resampler, None))
    except av.FFmpegError as error:
        raise AudioDecodeError(f"cannot decode the audio of {path!r} ({type(error).__name__}: "
                               f"{str(error).splitlines()[0][:160]})") from None
    if not chunks or not sum(len(chunk) for chunk in chunks):
        raise AudioDecodeError(f"{path!r} has an audio stream but no decodable samples")
    return np.concatenate(chunks).astype(np.float32)


def fft_length(window_samples: int) -> int:
    """The next power of two at or above ``window_samples`` (VGGish's FFT size)."""
    return 1 << max(0, int(window_samples - 1).bit_length())


def log_mel_spectrogram(waveforms: tf.Tensor, sample_rate: int = SAMPLE_RATE, *,
                        window_seconds: float = WINDOW_SECONDS,
                        hop_seconds: float = HOP_SECONDS, num_mel_bins: int = NUM_MEL_BINS,
                        lower_hz: float = MEL_MIN_HZ, upper_hz: float = MEL_MAX_HZ,
                        log_offset: float = LOG_OFFSET) -> tf.Tensor:
    """float32 waveforms ``[..., samples]`` → log-mel ``[..., frames, num_mel_bins]``.

    Frames are the windows that fit entirely (no end padding): ``1 + (samples − window) //
    hop``. The magnitude (not power) spectrum is mapped to mel bands, as in VGGish.
    """
    window = int(round(window_seconds * sample_rate))
    hop = int(round(hop_seconds * sample_rate))
    fft = fft_length(window)
    stft = tf.signal.stft(tf.cast(waveforms, tf.float32), frame_length=window, frame_step=hop,
                          fft_length=fft, window_fn=tf.signal.hann_window, pad_end=False)
    magnitude = tf.abs(stft)
    weights = tf.signal.linear_to_mel_weight_matrix(
        num_mel_bins=num_mel_bins, num_spectrogram_bins=fft // 2 + 1, sample_rate=sample_rate,
        lower_edge_hertz=lower_hz, upper_edge_hertz=upper_hz)
    mel = tf.tensordot(magnitude, weights, axes=1)
    return tf.math.log(mel + log_offset)


def num_log_mel_frames(samples: int, sample_rate: int = SAMPLE_RATE,
                       window_seconds: float = WINDOW_SECONDS,
                       hop_seconds: float = HOP_SECONDS) -> int:
    """Frames :func:`log_mel_spectrogram` makes of ``samples`` samples."""
    window = int(round(window_seconds * sample_rate))
    hop = int(round(hop_seconds * sample_rate))
    return max(0, 1 + (samples - window) // hop)
