"""Video SimCLR (CVRL): per-clip augmentations, clip pairs of one video, replicas, learning."""

import numpy as np
import pytest
import tensorflow as tf

from helpers import (
    VIDEO_TINY,
    assert_two_replicas_match_one_device,
    eager_losses_on_batch,
    initial_weights,
    seeded_first_batch,
)
from selfsup.datasets import clips as clip_sampling
from selfsup.datasets.augment import ViewAugmentation
from selfsup.models.registry import ConfigError
from selfsup.tasks.video_simclr import (
    CVRL_TEMPERATURE,
    VideoSimCLRConfig,
    VideoSimCLRTask,
    augment_clips,
    clip_color_augment,
    clip_pairs,
)

# A one-stage R3D (8 channels): for checks about the task, not about the encoder.
VIDEO_ONE_STAGE = {**VIDEO_TINY, "image_size": 16, "frame_size": 20, "clip_length": 4,
                   "backbone_kwargs": {"stage_blocks": (1,), "stage_widths": (8,),
                                       "stage_convs": ("3d",), "stem_width": 8}}
# No augmentation at all: a view is its window.
IDENTITY = ViewAugmentation(crop_area=(1.0, 1.0), crop_aspect_ratio=(1.0, 1.0),
                            flip_probability=0.0, jitter_probability=0.0,
                            grayscale_probability=0.0, blur_probability=0.0)


def repeated_frame_clips(count: int, frames: int, seed: int = 0) -> np.ndarray:
    """``count`` clips, each one random picture repeated ``frames`` times; all clips equal."""
    picture = np.random.default_rng(seed).uniform(0.1, 0.6, size=(1, 1, 8, 8, 3))
    return np.tile(picture, (count, frames, 1, 1, 1)).astype(np.float32)


def test_brightness_factor_is_one_per_clip_for_all_its_frames():
    """Numpy check of the consistency: with brightness alone (no clipping in range), output /
    input is one number per clip, over every pixel of every frame, and differs between clips."""
    clips = np.random.default_rng(1).uniform(0.1, 0.6, size=(4, 3, 8, 8, 3)).astype(np.float32)
    brightness_only = ViewAugmentation(brightness=0.5, contrast=0.0, saturation=0.0, hue=0.0,
                                       jitter_probability=1.0, grayscale_probability=0.0,
                                       blur_probability=0.0)
    out = clip_color_augment(tf.constant(clips), tf.constant([3, 4], tf.int64),
                             brightness_only).numpy()
    ratio = out / clips
    per_clip = ratio.reshape(4, -1)
    np.testing.assert_allclose(per_clip, per_clip[:, :1] * np.ones_like(per_clip), rtol=1e-5)
    factors = per_clip[:, 0]
    assert ((0.5 <= factors) & (factors <= 1.5)).all()
    assert len(np.unique(np.round(factors, 5))) == 4  # four clips, four draws


def test_full_colour_and_blur_draws_are_identical_across_frames_and_differ_between_clips():
    """SimCLR's jitter, grayscale and blur (all forced on): frames that were equal stay equal
    within each clip, and equal clips come out different."""
    clips = repeated_frame_clips(4, 3)
    always = ViewAugmentation(jitter_probability=1.0, grayscale_probability=0.0,
                              blur_probability=1.0)
    out = clip_color_augment(tf.constant(clips), tf.constant([7, 8], tf.int64), always).numpy()
    for clip in out:
        for frame in clip[1:]:
            np.testing.assert_allclose(frame, clip[0], atol=1e-6)
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.abs(out[i] - out[j]).max() > 1e-2, (i, j)
    assert np.abs(out[0] - clips[0]).max() > 1e-2


def test_crop_is_one_box_per_clip():
    clips = repeated_frame_clips(4, 3, seed=2)
    crop_only = ViewAugmentation(crop_area=(0.3, 0.6), flip_probability=0.0,
                                 jitter_probability=0.0, grayscale_probability=0.0,
                                 blur_probability=0.0)
    out = augment_clips(tf.constant(clips), tf.constant([1, 2], tf.int64), crop_only).numpy()
    assert out.shape == clips.shape
    for clip in out:
        np.testing.assert_array_equal(clip[1], clip[0])
        np.testing.assert_array_equal(clip[2], clip[0])
    assert min(np.abs(out[i] - out[j]).max() for i in range(4) for j in range(i)) > 1e-3


def test_the_two_views_are_two_windows_of_the_same_video():
    """Without augmentation the views are exactly the sampler's two windows of each row, and
    each row is one video: in ``sample_videos`` every training video has its own label, so the
    label is the video's identity. The two windows of a video differ (other start, crop or
    flip)."""
    task = VideoSimCLRTask(VideoSimCLRConfig(global_batch_size=4, **VIDEO_TINY))
    source = task.video_source
    assert source.num_videos("train") == source.num_classes  # label = video identity
    config = task.config
    windows, labels = next(iter(clip_sampling.training_clips(
        source, "train", frame_size=config.frame_size, image_size=config.image_size,
        num_windows=task.windows_per_video(), num_frames=task.window_length(),
        frame_stride=config.frame_stride, batch_size=4, seed=0, with_labels=True)))
    assert windows.shape == (4, 2, 8, 32, 32, 3)
    view_a, view_b = clip_pairs(windows, tf.constant([0, 1], tf.int64), IDENTITY)
    np.testing.assert_allclose(view_a.numpy(), windows[:, 0].numpy(), atol=1e-6)
    np.testing.assert_allclose(view_b.numpy(), windows[:, 1].numpy(), atol=1e-6)
    assert (np.abs(view_a.numpy() - view_b.numpy()).max(axis=(1, 2, 3, 4)) > 0.02).all()
    assert len(set(labels.numpy())) > 1  # rows are different videos


def test_loss_falls_on_real_clip_pairs():
    task = VideoSimCLRTask(VideoSimCLRConfig(global_batch_size=4, synchronized_bn=False,
                                             **VIDEO_TINY))
    batch = seeded_first_batch(task)
    view_a, view_b = batch
    assert view_a.shape == view_b.shape == (4, 8, 32, 32, 3)
    assert 0.0 <= float(tf.reduce_min(view_a)) and float(tf.reduce_max(view_b)) <= 1.0
    losses = eager_losses_on_batch(task, batch, steps=8, learning_rate=0.02)
    # The first loss depends on the batch (0.9–4.4 over pipeline seeds 0–4 at random init;
    # log 7 ≈ 1.95 at equal scores); in every case it halves within 8 steps.
    assert min(losses[-3:]) < 0.5 * losses[0], losses


def test_two_replicas_match_one_device_at_the_train_step(two_replica_strategy):
    """Same global batch of 4 clip pairs: the same loss and weights after a step
    (synchronized BN in encoder and head, negatives gathered across replicas)."""
    task = VideoSimCLRTask(VideoSimCLRConfig(global_batch_size=4, temperature=0.5,
                                             projection_hidden_units=(16,), projection_dim=8,
                                             **VIDEO_ONE_STAGE))
    rng = np.random.default_rng(6)
    views = tuple(rng.uniform(size=(4, 4, 16, 16, 3)).astype(np.float32) for _ in range(2))
    _, weights = initial_weights(task)
    assert_two_replicas_match_one_device(task, weights, views, two_replica_strategy,
                                         learning_rate=0.1)


def test_config_defaults_and_validation():
    config = VideoSimCLRConfig()
    assert config.temperature == CVRL_TEMPERATURE == 0.1 and config.crop_min_area == 0.3
    task = VideoSimCLRTask(config)
    assert task.windows_per_video() == 2 and task.window_length() == 16
    with pytest.raises(ConfigError, match="temperature"):
        VideoSimCLRConfig(temperature=0.0)
    with pytest.raises(ConfigError, match="crop_min_area"):
        VideoSimCLRConfig(crop_min_area=0.0)
    with pytest.raises(ConfigError, match="blur_probability"):
        VideoSimCLRConfig(blur_probability=2.0)


@pytest.mark.slow
def test_short_pretrain_beats_random_init_in_clip_retrieval(tmp_path):
    """300 SGD steps at 8 videos (16 clips) per step on the sample clips (VIDEO_TINY), then the
    video probe (4 clips per video) of the trained and the random-init encoder: 1.6–3 min on the
    shared 2-core machine. Measured: loss means 2.74, 2.64, 2.63, 2.52, 2.54 (log 15 ≈ 2.71 at
    equal scores; with only 8 training videos a batch of 8 often holds one video twice, a
    negative that is really a positive); on the 32 test clips, ``pool`` triplet retrieval
    0.983 vs 0.916 random init, nearest neighbour from the same video 0.97 vs 0.81, clip top-1
    93.8 vs 84.4 %; best video top-1 100 vs 100 % (saturated, not asserted). The asserted
    retrieval margin is under half the measured one."""
    from helpers import pretrain_and_probe_video, probe_summary

    config = VideoSimCLRConfig(global_batch_size=8, **VIDEO_TINY)
    results = pretrain_and_probe_video("video_simclr", config, tmp_path, train_steps=300,
                                       learning_rate=0.1)
    summary = probe_summary(results)
    print("video_simclr probe", summary, results["losses"])
    assert results["losses"][-1] < results["losses"][0], results["losses"]
    assert summary["trained"]["pool_triplet"] > summary["random_init"]["pool_triplet"] + 0.03, \
        summary
