"""Optical flow: Farneback recovers a known shift, uint8 storage, the cache, aligned windows."""

import os
import shutil

import cv2
import numpy as np
import pytest
import tensorflow as tf

from selfsup.datasets import optical_flow
from selfsup.datasets.optical_flow import (
    FarnebackParams,
    cached_video_flow,
    dequantize_flow,
    ensure_flow_cache,
    farneback_flow,
    flip_flow_windows,
    flow_cache_path,
    quantize_flow,
    training_window_batches,
)
from selfsup.datasets.video_decode import decode_video
from selfsup.datasets.video_sources import TfdsVideoSource, open_video_source
from selfsup.models.registry import ConfigError

STEP = 2 * optical_flow.FLOW_BOUND / 255  # one uint8 level in pixels


def textured_image(size: int = 64, seed: int = 0) -> np.ndarray:
    """Smooth random texture (blurred noise): Farneback needs gradients everywhere."""
    noise = np.random.default_rng(seed).uniform(0, 255, size=(size, size)).astype(np.float32)
    return np.clip(cv2.GaussianBlur(noise, (0, 0), 2.0) * 3 - 255, 0, 255).astype(np.uint8)


def test_farneback_recovers_a_known_translation():
    image = textured_image()
    dx, dy = 3, -2
    moved = np.roll(image, shift=(dy, dx), axis=(0, 1))  # content moves right 3, up 2
    frames = np.stack([np.repeat(f[..., None], 3, axis=-1) for f in (image, moved)])
    flow = farneback_flow(frames)
    assert flow.shape == (2, 64, 64, 2) and flow.dtype == np.float32
    interior = flow[0, 12:-12, 12:-12]  # away from the wrapped border
    np.testing.assert_allclose(np.median(interior[..., 0]), dx, atol=0.2)
    np.testing.assert_allclose(np.median(interior[..., 1]), dy, atol=0.2)
    assert np.mean(np.abs(interior - [dx, dy]) < 0.5) > 0.9
    np.testing.assert_array_equal(flow[1], 0)  # the last frame has no successor


def test_quantisation_round_trip_is_within_half_a_step():
    flow = np.random.default_rng(1).uniform(-25, 25, size=(4, 6, 7, 2)).astype(np.float32)
    stored = quantize_flow(flow)
    assert stored.dtype == np.uint8
    restored = dequantize_flow(stored)
    assert np.abs(restored - np.clip(flow, -20, 20)).max() <= STEP / 2 + 1e-5
    # Hand-worked: ±20 px are the ends, 10 px is 30/40 of the way: 191.25 → 191.
    np.testing.assert_array_equal(quantize_flow(np.array([-20.0, 20.0, 10.0, -35.0])),
                                  [0, 255, 191, 0])
    np.testing.assert_allclose(dequantize_flow(tf.constant([0, 255], tf.uint8)).numpy(),
                               [-20, 20], atol=1e-5)


def test_mirrored_flow_windows_negate_u_exactly():
    windows = np.random.default_rng(2).integers(0, 256, size=(2, 2, 3, 4, 5)).astype(np.uint8)
    flipped = flip_flow_windows(tf.constant(windows), tf.constant([True, False])).numpy()
    np.testing.assert_array_equal(flipped[1], windows[1])
    mirror = windows[0, :, :, ::-1]
    np.testing.assert_array_equal(flipped[0, ..., :3], mirror[..., :3])
    np.testing.assert_array_equal(flipped[0, ..., 4], mirror[..., 4])
    # In pixels: the mirrored u is the negated u of the mirrored position.
    np.testing.assert_allclose(dequantize_flow(flipped[0, ..., 3]),
                               -dequantize_flow(mirror[..., 3]), atol=1e-5)


@pytest.fixture(scope="module")
def sample_source():
    return open_video_source("sample_videos")


def test_cache_hit_returns_the_stored_array_and_any_change_misses(sample_source, tmp_path):
    video = tmp_path / "clip.avi"
    tree = next(path for path in sample_source.video_paths("train") if "tree" in path)
    shutil.copy(tree, video)  # a short real clip (tree.avi: 51 train frames)
    cache = tmp_path / "cache"
    params = FarnebackParams()
    first = cached_video_flow(video, 24, cache, params)
    path = flow_cache_path(cache, video, 24, params)
    assert path.is_file() and first.dtype == np.uint8
    assert first.shape == decode_video(video, 24).shape[:3] + (2,)
    np.testing.assert_array_equal(cached_video_flow(video, 24, cache, params), first)
    # A hit reads the file: replace it and the replacement comes back.
    marker = np.full((1, 2, 2, 2), 7, np.uint8)
    np.save(path, marker)
    np.testing.assert_array_equal(cached_video_flow(video, 24, cache, params), marker)
    # Other Farneback parameters, frame size or bound, or a touched file: other keys.
    others = [flow_cache_path(cache, video, 24, FarnebackParams(winsize=9)),
              flow_cache_path(cache, video, 28, params),
              flow_cache_path(cache, video, 24, params, bound=10.0)]
    assert len({path, *others}) == 4
    changed = cached_video_flow(video, 24, cache, FarnebackParams(winsize=9))
    assert changed.shape == first.shape and not np.array_equal(changed, first)
    os.utime(video, ns=(1, 1))
    assert flow_cache_path(cache, video, 24, params) != path


def test_ensure_flow_cache_reports_and_then_only_reads(sample_source, tmp_path):
    messages = []
    files = ensure_flow_cache(sample_source, "test", 20, tmp_path, log=messages.append)
    assert len(files) == 8 and all(path.is_file() for path in files)
    assert "8 of 8 videos" in messages[0] and "done" in messages[-1]
    messages.clear()
    assert ensure_flow_cache(sample_source, "test", 20, tmp_path, log=messages.append) == files
    assert messages == []


def test_windows_carry_the_flow_of_their_own_frames(sample_source, tmp_path):
    """Every window of a real batch against an independent numpy/OpenCV rebuild from its
    provenance: decoded frames at its start (looped), its crop and flip, and Farneback flow of
    those frames quantised by the formula, mirrored with u negated when flipped."""
    frame_size, size, length = 24, 16, 4
    bound = optical_flow.default_flow_bound(frame_size)  # 1.875 px at 24 px
    files = ensure_flow_cache(sample_source, "train", frame_size, tmp_path, bound=bound,
                              log=lambda message: None)
    batches = training_window_batches(
        sample_source, "train", frame_size=frame_size, image_size=size, num_windows=2,
        num_frames=length, frame_stride=2, batch_size=3, seed=5, flow_files=files)
    batch = next(iter(batches))
    assert batch["rgb"].shape == (3, 2, length, size, size, 3)
    assert batch["flow"].shape == (3, 2, length, size, size, 2)
    provenance = batch["provenance"].numpy().reshape(-1, 5)
    rgb = np.round(batch["rgb"].numpy().reshape(-1, length, size, size, 3) * 255)
    flow = np.round(batch["flow"].numpy().reshape(-1, length, size, size, 2) * 255)
    paths = sample_source.video_paths("train")
    flips = 0
    for row, (video_index, start, top, left, flipped) in enumerate(provenance):
        frames = decode_video(paths[video_index], frame_size)
        indices = (start + 2 * np.arange(length)) % len(frames)
        grey = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in frames]
        expected_flow = np.zeros((length,) + frames.shape[1:3] + (2,), np.float32)
        for slot, index in enumerate(indices):
            if index + 1 < len(frames):
                expected_flow[slot] = cv2.calcOpticalFlowFarneback(
                    grey[index], grey[index + 1], None, 0.5, 3, 15, 3, 5, 1.1, 0)
        stored = np.round((np.clip(expected_flow, -bound, bound) + bound) * 255 / (2 * bound))
        crop = (slice(None), slice(top, top + size), slice(left, left + size))
        expected_rgb, stored = frames[indices][crop], stored[crop]
        if flipped:
            flips += 1
            expected_rgb = expected_rgb[:, :, ::-1]
            stored = stored[:, :, ::-1]
            stored[..., 0] = 255 - stored[..., 0]
        np.testing.assert_array_equal(rgb[row], expected_rgb, err_msg=str(row))
        np.testing.assert_array_equal(flow[row], stored, err_msg=str(row))
    assert 0 < flips < len(provenance)  # both branches were checked (seed 5)
    # Real motion, spread over many levels (a fixed ±20 px bound gave at most 2.5 here).
    assert np.abs(flow - 127.5).max() > 20


def test_farneback_needs_a_folder_source():
    with pytest.raises(ConfigError, match="flow=difference"):
        source = object.__new__(TfdsVideoSource)
        source.name = "ucf101"
        optical_flow.folder_source(source)


def test_a_cache_file_that_does_not_fit_its_video_is_an_error(sample_source, tmp_path):
    files = ensure_flow_cache(sample_source, "test", 20, tmp_path, log=lambda message: None)
    np.save(files[0], np.zeros((3, 20, 20, 2), np.uint8))  # a stale / foreign file
    videos = optical_flow.with_flow(sample_source.videos("test", 20, first=1), files)
    with pytest.raises(tf.errors.InvalidArgumentError, match="delete the flow cache"):
        next(iter(videos))
