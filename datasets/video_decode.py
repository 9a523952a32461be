"""Decoding video files to uint8 RGB frames with OpenCV (``opencv-python-headless``).

The wheel bundles FFmpeg, so mp4 (H.264), avi (MJPG, XviD, …), mov, mkv and webm decode with no
system codecs installed. Frames come out of OpenCV in BGR order and are turned into RGB here, and
nowhere else. Every frame is resized with ``cv2.INTER_AREA`` (area averaging, the antialiased
choice when shrinking) so that its shorter side is ``frame_size``, keeping the aspect ratio.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from selfsup.models.registry import ConfigError

# Containers the folder source picks up (lower-case, without the dot). A ``.mp4.gz`` is not a
# video: gunzip it first (the sample_videos preparation does that for OpenCV's box/cup clips).
VIDEO_EXTENSIONS = ("mp4", "avi", "mov", "mkv", "webm", "m4v")


class VideoDecodeError(ConfigError):
    """A video file that cannot be opened or holds no decodable frame (one-line message)."""


def is_video_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` has one of :data:`VIDEO_EXTENSIONS` (case-insensitive)."""
    return os.path.splitext(os.fspath(path))[1][1:].lower() in VIDEO_EXTENSIONS


def resized_frame_shape(height: int, width: int, frame_size: int) -> tuple[int, int]:
    """``(height, width)`` with the shorter side ``frame_size`` and the aspect ratio kept."""
    scale = frame_size / min(height, width)
    if height <= width:
        return frame_size, max(frame_size, round(width * scale))
    return max(frame_size, round(height * scale)), frame_size


def video_frame_rate(path: str | os.PathLike) -> float:
    """The container's frames per second (0 when unknown)."""
    capture = cv2.VideoCapture(os.fspath(path))
    try:
        return float(capture.get(cv2.CAP_PROP_FPS)) if capture.isOpened() else 0.0
    finally:
        capture.release()


def check_video(path: str | os.PathLike) -> int:
    """Raises :class:`VideoDecodeError` naming ``path`` unless it opens and its first frame
    decodes (cheap: one frame); returns the container's declared frame count (0: unknown),
    an upper bound of the decodable frames for the files seen here."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise VideoDecodeError(f"video file {path!r} does not exist")
    capture = cv2.VideoCapture(path)
    try:
        if not capture.isOpened():
            raise VideoDecodeError(_cannot_open(path))
        ok, frame = capture.read()
        if not ok or frame is None:
            raise VideoDecodeError(_no_frame(path))
        return max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT)))
    finally:
        capture.release()


def _cannot_open(path: str) -> str:
    return (f"cannot open {path!r} as a video (extensions: {', '.join(VIDEO_EXTENSIONS)}; "
            "gunzip .gz files first; remove or re-encode a damaged file)")


def _no_frame(path: str) -> str:
    return f"video file {path!r} has no decodable frame; remove or re-encode it"


def decode_video(path: str | os.PathLike, frame_size: int | None) -> np.ndarray:
    """All decodable frames of ``path`` as uint8 RGB ``[t, h, w, 3]`` with ``min(h, w) ==
    frame_size`` (``None``: native size).

    Decoding stops at the first frame that does not decode (some files declare more frames than
    they hold, e.g. OpenCV's tree.avi: 444 declared, 68 decodable). Raises
    :class:`VideoDecodeError` naming the file when it cannot be opened or yields no frame.
    """
    path = os.fspath(path)
    if frame_size is not None and frame_size < 1:
        raise ConfigError(f"frame_size must be a positive number of pixels, got {frame_size}")
    if not os.path.isfile(path):
        raise VideoDecodeError(f"video file {path!r} does not exist")
    capture = cv2.VideoCapture(path)
    frames = []
    try:
        if not capture.isOpened():
            raise VideoDecodeError(_cannot_open(path))
        size = None
        while True:
            ok, frame = capture.read()
            if not ok or frame is None:
                break
            if frame_size is not None:
                if size is None:
                    height, width = resized_frame_shape(*frame.shape[:2], frame_size)
                    size = (width, height)  # cv2 sizes are (width, height)
                if frame.shape[1::-1] != size:
                    frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
            frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    finally:
        capture.release()
    if not frames:
        raise VideoDecodeError(_no_frame(path))
    return np.stack(frames)
