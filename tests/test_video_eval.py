"""Video evaluation: clip → video accuracy, clip retrieval, video feature pooling, the video
probe end to end and its place in ``selfsup-eval``."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from helpers import VIDEO_TINY
from selfsup.tasks.clip_retrieval import nearest_neighbour_accuracy, triplet_retrieval_accuracy
from selfsup.tasks.features import flatten_endpoint
from selfsup.tasks.video_eval import clip_top1, softmax, video_probabilities, video_top1

# --- clip → video ----------------------------------------------------------------------------


def test_video_prediction_averages_probabilities_not_votes():
    # Hand-worked: video 7 (label 1) has clips predicting 0, 1, 0 (a majority vote says 0) but
    # its mean probabilities are (0.4167, 0.5833) → 1, right. Video 3 (label 0): mean (0.55,
    # 0.45) → 0, right. Video 5 (label 0): its one clip says 1, wrong. Clips are interleaved.
    probabilities = np.array([[0.6, 0.4], [0.3, 0.7], [0.1, 0.9], [0.2, 0.8], [0.8, 0.2],
                              [0.55, 0.45]])
    video_ids = np.array([7, 3, 7, 5, 3, 7])
    labels = np.array([1, 0, 1, 0, 0, 1])
    videos, mean = video_probabilities(probabilities, video_ids)
    np.testing.assert_array_equal(videos, [3, 5, 7])
    np.testing.assert_allclose(mean, [[0.55, 0.45], [0.2, 0.8], [1.25 / 3, 1.75 / 3]])
    # Clips right: 0.3/0.7 (label 0, says 1) no; 0.1/0.9 yes; 0.8/0.2 yes; the rest no → 2 / 6.
    assert clip_top1(probabilities, labels) == pytest.approx(100 * 2 / 6)
    assert video_top1(probabilities, labels, video_ids) == pytest.approx(100 * 2 / 3)


def test_video_top1_matches_a_numpy_loop():
    rng = np.random.default_rng(0)
    video_ids = rng.integers(0, 30, size=200)
    truth = rng.integers(0, 5, size=30)
    labels = truth[video_ids]
    probabilities = softmax(rng.normal(size=(200, 5)) + 1.5 * np.eye(5)[labels])
    correct = total = 0
    for video in sorted(set(video_ids.tolist())):
        rows = [i for i in range(200) if video_ids[i] == video]
        mean = [sum(probabilities[i][k] for i in rows) / len(rows) for k in range(5)]
        correct += int(max(range(5), key=lambda k: mean[k]) == truth[video])
        total += 1
    assert video_top1(probabilities, labels, video_ids) == pytest.approx(100 * correct / total)


def test_softmax_rows_sum_to_one_without_overflow():
    probabilities = softmax(np.array([[1000.0, 1000.0, -1000.0], [0.0, math.log(3.0), 0.0]]))
    np.testing.assert_allclose(probabilities, [[0.5, 0.5, 0.0], [0.2, 0.6, 0.2]], atol=1e-12)


# --- retrieval -------------------------------------------------------------------------------


def numpy_triplet_accuracy(features: np.ndarray, ids: np.ndarray) -> float:
    """Every (anchor, positive, negative) triple in a plain loop; ties count one half."""
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    wins = triples = 0.0
    for a, p, n in itertools.product(range(len(ids)), repeat=3):
        if p == a or ids[p] != ids[a] or ids[n] == ids[a]:
            continue
        positive, negative = float(unit[a] @ unit[p]), float(unit[a] @ unit[n])
        wins += 1.0 if positive > negative else 0.5 if positive == negative else 0.0
        triples += 1
    return wins / triples


def numpy_nearest_neighbour(features: np.ndarray, ids: np.ndarray) -> float:
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    hits = anchors = 0
    for a in range(len(ids)):
        if sum(ids == ids[a]) < 2:
            continue
        others = [j for j in range(len(ids)) if j != a]
        nearest = max(others, key=lambda j: float(unit[a] @ unit[j]))
        hits += int(ids[nearest] == ids[a])
        anchors += 1
    return hits / anchors


@pytest.mark.parametrize("block", [128, 5])
def test_retrieval_metrics_match_numpy_loops(block):
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 6, size=23)  # uneven clip counts, perhaps a video with one clip
    features = rng.normal(size=(23, 4)) + 0.8 * rng.normal(size=(6, 4))[ids]
    assert triplet_retrieval_accuracy(features, ids, block=block) == pytest.approx(
        numpy_triplet_accuracy(features, ids), abs=1e-12)
    assert nearest_neighbour_accuracy(features, ids, block=block) == pytest.approx(
        numpy_nearest_neighbour(features, ids))


def test_ties_count_one_half():
    # Quantised features make many exactly equal cosines.
    ids = np.array([0, 0, 1, 1, 2, 2, 2])
    features = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [1, 1], [0, 1], [1, 0]], np.float64)
    assert triplet_retrieval_accuracy(features, ids) == pytest.approx(
        numpy_triplet_accuracy(features, ids))
    assert triplet_retrieval_accuracy(np.ones((6, 3)), np.array([0, 0, 1, 1, 2, 2])) == 0.5


def test_planted_clusters_retrieve_perfectly_and_random_features_at_chance():
    rng = np.random.default_rng(2)
    ids = np.repeat(np.arange(8), 6)
    centres = rng.normal(size=(8, 32))
    planted = centres[ids] + 0.05 * rng.normal(size=(48, 32))
    assert triplet_retrieval_accuracy(planted, ids) == 1.0
    assert nearest_neighbour_accuracy(planted, ids) == 1.0
    noise = rng.normal(size=(48, 32))
    assert abs(triplet_retrieval_accuracy(noise, ids) - 0.5) < 0.05
    # Chance for the nearest neighbour: 5 of the 47 other clips share the anchor's video.
    assert nearest_neighbour_accuracy(noise, ids) < 0.3


# --- video feature pooling -------------------------------------------------------------------


def numpy_video_pool(x: np.ndarray, size: int) -> np.ndarray:
    """Mean over time, then PyTorch's adaptive bins, in loops; flattened row-major (i, j, c)."""
    batch, frames, height, width, channels = x.shape
    out = np.zeros((batch, size, size, channels))
    for b, i, j, c in itertools.product(range(batch), range(size), range(size),
                                        range(channels)):
        top, bottom = math.floor(i * height / size), math.ceil((i + 1) * height / size)
        left, right = math.floor(j * width / size), math.ceil((j + 1) * width / size)
        cells = [x[b, t, r, s, c] for t in range(frames) for r in range(top, bottom)
                 for s in range(left, right)]
        out[b, i, j, c] = sum(cells) / len(cells)
    return out.reshape(batch, -1)


@pytest.mark.parametrize(("frames", "height", "width", "size"), [(3, 7, 5, 3), (1, 2, 2, 3),
                                                                 (4, 4, 4, 1)])
def test_video_maps_pool_over_time_then_space_like_numpy(frames, height, width, size):
    x = np.random.default_rng(frames).normal(size=(2, frames, height, width, 3))
    pooled = flatten_endpoint(tf.constant(x, tf.float32), size).numpy()
    np.testing.assert_allclose(pooled, numpy_video_pool(x, size), rtol=1e-5, atol=1e-6)


def test_recurrent_sequences_average_over_time():
    x = np.random.default_rng(3).normal(size=(2, 5, 6))
    pooled = flatten_endpoint(tf.constant(x, tf.float32), 3).numpy()
    expected = [[sum(x[b, t, c] for t in range(5)) / 5 for c in range(6)] for b in range(2)]
    np.testing.assert_allclose(pooled, expected, rtol=1e-5, atol=1e-6)


# --- the video probe on real clips -----------------------------------------------------------


def write_video_run(model_dir: Path, seed: int = 7) -> dict:
    """A video run dir as selfsup-train leaves it: run config and a backbone checkpoint (of a
    seeded random-init encoder)."""
    import selfsup.tasks.rotnet3d  # noqa: F401  (registers the run's task)
    from selfsup.tasks.base import BACKBONE_NAME
    from selfsup.tasks.checkpoints import RUN_CONFIG_FILE, build_encoder, variable_map

    run_config = {"task": "rotnet3d", **VIDEO_TINY, "frame_stride": 1, "data_dir": None,
                  "seed": seed}
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / RUN_CONFIG_FILE).write_text(json.dumps(run_config))
    encoder = build_encoder(run_config, seed)
    tf.train.Checkpoint(model={f"{BACKBONE_NAME}/{key}": variable for key, variable
                               in variable_map(encoder).items()}).save(str(model_dir / "ckpt"))
    return run_config


def test_video_runs_go_to_the_video_protocol():
    from selfsup.tasks.linear_eval import is_video_run

    assert is_video_run({"dataset": "sample_videos"})
    assert is_video_run({"dataset": "video_folder:/somewhere"})
    assert not is_video_run({"dataset": "fashion_mnist"})


def test_video_probe_of_random_init_encoders_beats_chance_on_sample_videos(tmp_path):
    """8 scenes, train and test footage disjoint, 4 clips per video: every endpoint of the two
    random-init encoders (seeds 7 and 0) beats chance (12.5 %) at the video level by far, and
    the JSON, the table and the retrieval checks are complete (a light probe: 2 L2 values,
    100 steps)."""
    from selfsup.tasks.linear_eval import RESULTS_FILE, format_table, probe_metrics
    from selfsup.tasks.linear_probe import LinearClassifierConfig
    from selfsup.tasks.video_eval import evaluate_video_linear

    write_video_run(tmp_path)
    results = evaluate_video_linear(
        tmp_path, clips_per_video=4, log=lambda message: None,
        classifier=LinearClassifierConfig(steps=100, weight_decays=(1e-3, 1e-1)))
    assert json.loads((tmp_path / "eval" / RESULTS_FILE).read_text()) == results
    assert results["endpoints"] == ["stem", "res2", "res3", "res4", "res5", "pool"]
    protocol = results["protocol"]
    assert (protocol["name"], protocol["clips_per_video"], protocol["clip_length"]) == (
        "video_linear", 4, 8)
    for column in ("trained", "random_init"):
        for name, entry in results[column].items():
            assert entry["video_top1"] >= 50.0 and entry["top1"] > 25.0, (column, name, entry)
            assert 0.0 <= entry["nearest_neighbour"] <= 1.0
            assert 0.5 < entry["triplet_retrieval"] <= 1.0, (column, name, entry)
        videos = {name: entry["video_top1"] for name, entry in results[column].items()}
        assert results["best"][column] == max(videos, key=videos.get)
    assert results["trained"]["pool"]["num_features"] == 64
    assert results["trained"]["res5"]["num_features"] == 64 * 9
    assert results["trained"] != results["random_init"]
    table = format_table(results)
    assert "video random init" in table and "triplet trained" in table
    metrics = probe_metrics(results)
    assert metrics["video probe video top-1 % (pool)"] == results["trained"]["pool"]["video_top1"]
    assert metrics["random-init clip retrieval triplet (pool)"] == (
        results["random_init"]["pool"]["triplet_retrieval"])


def test_classify_clips_matches_a_numpy_loop_over_the_videos():
    """A fixed linear classifier of each clip's mean colour, scored on a subset of the test
    videos with 3 clips each: the same clip and video top-1 as a numpy loop over the data
    layer's evaluation clips (softmax, mean per video, argmax)."""
    from selfsup.datasets.clips import evaluation_clips
    from selfsup.datasets.video_sources import open_video_source
    from selfsup.tasks.video_eval import classify_clips

    source = open_video_source("sample_videos")
    weights = np.random.default_rng(4).normal(size=(3, 8)) * 20.0

    def logits_of(clips):
        return tf.reduce_mean(clips, axis=[1, 2, 3]) @ tf.constant(weights, tf.float32)

    geometry = dict(frame_size=40, image_size=32, clip_length=8, frame_stride=1)
    keep = np.array([1, 4, 6, 7])
    scores = classify_clips(logits_of, source, "test", clips_per_video=3, videos=keep,
                            log=lambda message: None, **geometry)
    clip_hits = video_hits = videos = 0
    for windows, label, index in evaluation_clips(
            source, "test", frame_size=40, image_size=32, num_windows=3, num_frames=8,
            frame_stride=1):
        if int(index) not in keep:
            continue
        logits = windows.numpy().astype(np.float64).mean(axis=(1, 2, 3)) @ weights
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = exp / exp.sum(axis=1, keepdims=True)
        clip_hits += int(np.sum(probabilities.argmax(axis=1) == int(label)))
        video_hits += int(probabilities.mean(axis=0).argmax() == int(label))
        videos += 1
    assert (scores["videos"], scores["clips"]) == (4, 12) and videos == 4
    assert scores["clip_top1"] == pytest.approx(100 * clip_hits / 12, abs=1e-3)
    assert scores["video_top1"] == pytest.approx(100 * video_hits / 4, abs=1e-3)


def test_finetune_protocol_refuses_an_image_run(tmp_path):
    from selfsup.models.registry import ConfigError
    from selfsup.tasks.checkpoints import RUN_CONFIG_FILE
    from selfsup.tasks.video_finetune import FinetuneSettings, evaluate_finetune

    (tmp_path / RUN_CONFIG_FILE).write_text(json.dumps(
        {"task": "rotnet", "backbone": "resnet_small", "dataset": "fashion_mnist",
         "image_size": 28}))
    with pytest.raises(ConfigError, match="'fashion_mnist' is not one"):
        evaluate_finetune(tmp_path, FinetuneSettings(steps=5))
    with pytest.raises(ConfigError, match="finetune steps must be positive"):
        FinetuneSettings(steps=0)


# --- slow: clip retrieval after a short pretraining (issue 7) --------------------------------


def pretrain_video_task(task_name: str, task_config, model_dir: Path, *, train_steps: int,
                        learning_rate: float) -> list[float]:
    """Pretrains a video task on one device (SGD, the trainer's defaults otherwise); returns
    the logged losses."""
    import io

    from selfsup.tasks.trainer import TrainerConfig
    from selfsup.tasks.training import run_training

    trainer = TrainerConfig(model_dir=str(model_dir), train_steps=train_steps,
                            learning_rate=learning_rate, log_every=max(train_steps // 5, 1),
                            checkpoint_every=train_steps)
    out = io.StringIO()
    run_training(task_name, task_config, trainer, "one_device", out=out)
    return [float(line.split("loss ")[1].split()[0])
            for line in out.getvalue().splitlines() if line.startswith("step ")]


@pytest.mark.slow
def test_short_contrastive_pretrain_against_random_init_in_clip_retrieval(tmp_path):
    """video_simclr (the pretext task that asks for exactly this property), 300 SGD steps of 8
    videos × 2 clips on the sample clips, then ``evaluate_linear`` (the video route, the full
    probe protocol, 8 clips per test video). Measured twice, identical (3.5 min in all on the
    shared 2-core machine): loss 2.74 → 2.54 (means of 60 steps; chance log 15 = 2.71); on
    ``pool`` triplet retrieval 0.976 trained vs 0.948 random init, nearest neighbour 0.969 vs
    0.984 (one clip of 64); every inner layer is at the ceiling already at random init
    (triplet 0.984–1.000 trained, 0.995–1.000 random): the 8 sample scenes differ so much in
    appearance that any features tell their clips apart. Video top-1 100 % at the best layer
    of both encoders. Asserted: the loss falls and ``pool``'s triplet retrieval improves over
    random init (the issue's check), nothing about the ceilinged layers."""
    from selfsup.tasks.linear_eval import evaluate_linear, format_table
    from selfsup.tasks.video_simclr import VideoSimCLRConfig

    losses = pretrain_video_task("video_simclr", VideoSimCLRConfig(global_batch_size=8,
                                                                   **VIDEO_TINY),
                                 tmp_path, train_steps=300, learning_rate=0.1)
    results = evaluate_linear(tmp_path, clips_per_video=8, log=lambda message: None)
    print(format_table(results))
    print("video_simclr losses", losses)
    assert results["protocol"]["name"] == "video_linear"
    assert losses[-1] < losses[0]
    trained, random_init = results["trained"]["pool"], results["random_init"]["pool"]
    assert trained["triplet_retrieval"] > random_init["triplet_retrieval"], (trained,
                                                                              random_init)


def test_the_linear_protocol_needs_two_clips_per_video_for_retrieval(tmp_path):
    from selfsup.models.registry import ConfigError
    from selfsup.tasks.linear_eval import validate_settings

    with pytest.raises(ConfigError, match="clips_per_video must be at least 2 for the linear"):
        validate_settings(str(tmp_path), "linear", clips_per_video=1)
    with pytest.raises(ConfigError, match="at least 1 for the finetune protocol"):
        validate_settings(str(tmp_path), "finetune", clips_per_video=0)
    # One clip per video is a valid fine-tuning evaluation (no retrieval there).
    assert validate_settings(str(tmp_path), "finetune", clips_per_video=1) == tmp_path
