"""Invalid setting combinations fail before training starts, each with one line naming the fix.

Cross-setting checks (tasks/preflight.py) take the strategy's replica count and the data; the
expected per-replica sizes and window spans are worked out by hand in each test.
"""

import io

import cv2
import numpy as np
import pytest
import tensorflow as tf

from selfsup.models.registry import ConfigError
from selfsup.tasks.base import task_class
from selfsup.tasks.preflight import (
    check_replica_batch,
    check_task_replica_batch,
    check_video_windows,
    preflight,
)
from selfsup.tasks.trainer import TrainerConfig
from selfsup.tasks.training import run_training


@pytest.mark.parametrize(("batch", "replicas", "per_replica"), [(8, 1, 8), (8, 2, 4), (12, 4, 3)])
def test_an_even_global_batch_gives_its_share_to_each_replica(batch, replicas, per_replica):
    assert check_replica_batch(batch, replicas) == per_replica


@pytest.mark.parametrize(("batch", "replicas", "hint"), [(10, 4, "(e.g. 8 or 12)"),
                                                         (3, 2, "(e.g. 2 or 4)"),
                                                         (2, 4, "(e.g. 4)")])
def test_a_global_batch_that_does_not_split_over_the_replicas_is_refused(batch, replicas, hint):
    with pytest.raises(ConfigError) as error:
        check_replica_batch(batch, replicas)
    assert str(error.value) == (f"batch size {batch} does not split evenly over {replicas} "
                                f"replicas; use a multiple of {replicas} {hint}")


def test_an_uneven_batch_stops_run_training_before_anything_is_written(two_replica_strategy,
                                                                       tmp_path):
    config = task_class("rotnet").config_class(global_batch_size=5)
    with pytest.raises(ConfigError, match="batch size 5 does not split evenly over 2 replicas"):
        run_training("rotnet", config, TrainerConfig(model_dir=str(tmp_path)),
                     two_replica_strategy, out=io.StringIO())
    assert list(tmp_path.iterdir()) == []  # no run_config.json, no checkpoint


def test_moco_key_bn_splits_must_divide_each_replicas_batch():
    cls = task_class("moco")
    # Global batch 8 over 2 replicas: 4 keys per replica, so 4 splits fit and 8 do not
    # (8 divides the global batch, which is all the config alone can check).
    fits = cls(cls.config_class(global_batch_size=8, queue_size=64, shuffle_bn=True,
                                key_bn_splits=4))
    check_task_replica_batch(fits, 4)
    too_many = cls(cls.config_class(global_batch_size=8, queue_size=64, shuffle_bn=True,
                                    key_bn_splits=8))
    with pytest.raises(ConfigError, match="key_bn_splits 8 must divide the per-replica batch 4"):
        check_task_replica_batch(too_many, 4)


def test_counting_needs_two_images_on_every_replica(two_replica_strategy):
    cls = task_class("counting")
    task = cls(cls.config_class(global_batch_size=2))  # the config alone allows 2
    with pytest.raises(ConfigError, match="at least 2 images per replica .* got 1"):
        preflight(task, two_replica_strategy, io.StringIO())
    preflight(cls(cls.config_class(global_batch_size=4)), two_replica_strategy, io.StringIO())


def test_warmup_as_long_as_the_run_is_refused():
    with pytest.raises(ConfigError, match=r"warmup_steps \(100\) must be below train_steps "
                                          r"\(100\)"):
        TrainerConfig(model_dir="unused", train_steps=100, warmup_steps=100)
    TrainerConfig(model_dir="unused", train_steps=100, warmup_steps=99)


@pytest.fixture(scope="module")
def short_videos(tmp_path_factory):
    """``train/{a,b}``: a 6-frame and a 12-frame lossless video."""
    root = tmp_path_factory.mktemp("short_videos")
    for label, length in (("a", 6), ("b", 12)):
        folder = root / "train" / label
        folder.mkdir(parents=True)
        writer = cv2.VideoWriter(str(folder / f"{length}frames.avi"),
                                 cv2.VideoWriter_fourcc(*"FFV1"), 10, (16, 16))
        for index in range(length):
            writer.write(np.full((16, 16, 3), index, np.uint8))
        writer.release()
    return root


def video_task(root, clip_length: int, frame_stride: int = 1):
    cls = task_class("rotnet3d")
    return cls(cls.config_class(dataset=f"video_folder:{root}", image_size=8, frame_size=8,
                                clip_length=clip_length, frame_stride=frame_stride,
                                global_batch_size=2))


@pytest.mark.parametrize(("clip_length", "frame_stride", "note"), [
    (6, 1, ""),  # span 6: both videos hold a whole window
    (8, 1, "note: 1 of 2 videos in train have fewer than the 8 frames of a training window "
           "and are looped: 6frames.avi (6)\n"),
    (4, 3, "note: 1 of 2 videos in train have fewer than the 10 frames of a training window "
           "and are looped: 6frames.avi (6)\n"),  # span (4 − 1) · 3 + 1 = 10
])
def test_videos_shorter_than_the_window_are_named(short_videos, clip_length, frame_stride,
                                                  note):
    out = io.StringIO()
    check_video_windows(video_task(short_videos, clip_length, frame_stride), out)
    assert out.getvalue() == note


@pytest.mark.parametrize(("clip_length", "frame_stride", "span"), [(13, 1, 13), (5, 3, 13)])
def test_a_window_longer_than_every_video_is_refused(short_videos, clip_length, frame_stride,
                                                     span):
    with pytest.raises(ConfigError) as error:
        check_video_windows(video_task(short_videos, clip_length, frame_stride), io.StringIO())
    assert str(error.value).startswith(
        f"training windows span {span} frames ({clip_length} frames, stride {frame_stride}) "
        f"but the longest video in train of video_folder:{short_videos} has 12")


def test_run_config_is_not_written_when_preflight_fails(short_videos, tmp_path):
    task = video_task(short_videos, 13)
    with pytest.raises(ConfigError, match="training windows span 13 frames"):
        run_training("rotnet3d", task.config, TrainerConfig(model_dir=str(tmp_path / "run")),
                     tf.distribute.OneDeviceStrategy("/cpu:0"), out=io.StringIO())
    assert not (tmp_path / "run" / "run_config.json").exists()


@pytest.mark.parametrize(("task", "setting", "message"), [
    ("moco", {"projection_dim": 0}, "projection sizes must be positive, got projection_dim 0"),
    ("moco", {"projection_hidden_units": (512, 0)}, "hidden (512, 0)"),
    ("jigsaw", {"cell_size": 0}, "cell_size must be positive (or None: derived from image_size)"),
    ("jigsaw", {"tile_size": 0}, "tile_size must be positive"),
    ("relative_position", {"patch_size": 0}, "patch_size must be positive"),
    ("relative_position", {"cell_size": 0}, "cell_size must be positive"),
])
def test_config_values_that_would_break_or_be_ignored_are_refused(task, setting, message):
    with pytest.raises(ConfigError) as error:
        task_class(task).config_class(**setting)
    assert message in str(error.value) and "\n" not in str(error.value)
