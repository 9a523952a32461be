"""DPC: block splitting, the score matrix and loss against numpy loops, the paper's negative
kinds, the ConvGRU step, causality of the predictions, replicas, training and restoring."""

import math

import numpy as np
import pytest
import tensorflow as tf

from helpers import (
    VIDEO_TINY,
    VIDEO_TWO_STAGE,
    assert_encoder_restores,
    assert_two_replicas_match_one_device,
    initial_weights,
    train_in_process,
)
from selfsup.models import build_backbone
from selfsup.models.conv_lstm import ConvGRUCell
from selfsup.models.registry import ConfigError
from selfsup.tasks.dpc import (
    EASY_NEGATIVE,
    POSITIVE,
    SPATIAL_NEGATIVE,
    TEMPORAL_NEGATIVE,
    DPCConfig,
    DPCTask,
    block_feature_maps,
    candidate_kind,
    dpc_loss,
    dpc_scores,
    final_map_endpoints,
    split_blocks,
)

SMALL_DPC = dict(VIDEO_TINY, image_size=16, frame_size=20, backbone_kwargs=VIDEO_TWO_STAGE,
                 num_blocks=3, clip_length=2, predicted_blocks=2, frame_stride=1)


def numpy_dpc(predictions: np.ndarray, targets: np.ndarray) -> tuple:
    """Han et al. 2019's loss written out: every predicted vector (video n, block t, position
    i, j) scored by a dot product against every target vector of the batch; the positive is
    the target at the same (n, t, i, j). Returns (scores, positive columns, mean loss)."""
    batch, blocks, height, width, _ = predictions.shape
    keys = [(n, t, i, j) for n in range(batch) for t in range(blocks) for i in range(height)
            for j in range(width)]
    scores = np.zeros((len(keys), len(keys)))
    positives, losses = [], []
    for row, (n, t, i, j) in enumerate(keys):
        query = predictions[n, t, i, j].astype(np.float64)
        for column, key in enumerate(keys):
            scores[row, column] = query @ targets[key].astype(np.float64)
        positive = keys.index((n, t, i, j))
        top = scores[row].max()
        log_norm = top + math.log(sum(math.exp(s - top) for s in scores[row]))
        positives.append(positive)
        losses.append(log_norm - scores[row, positive])
    return scores, np.array(positives), float(np.mean(losses))


def test_blocks_are_consecutive_slices_of_the_window():
    clips = np.random.default_rng(0).uniform(size=(2, 12, 4, 5, 3)).astype(np.float32)
    blocks = split_blocks(tf.constant(clips), num_blocks=3, block_frames=4).numpy()
    assert blocks.shape == (2, 3, 4, 4, 5, 3)
    for t in range(3):
        np.testing.assert_array_equal(blocks[:, t], clips[:, 4 * t:4 * (t + 1)])
    with pytest.raises(ValueError, match="not 5 blocks of 2"):
        split_blocks(tf.constant(clips), num_blocks=5, block_frames=2)


def test_block_maps_average_each_blocks_time_axis_and_join_the_streams():
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(6, 2, 3, 3, 4)).astype(np.float32)
    pooled = block_feature_maps([tf.constant(maps)], num_blocks=3).numpy()
    assert pooled.shape == (2, 3, 3, 3, 4)
    for n in range(2):
        for t in range(3):
            np.testing.assert_allclose(pooled[n, t], maps[3 * n + t].mean(axis=0), rtol=1e-6)
    # A second stream with another time length and width: its channels follow the first's.
    other = rng.normal(size=(6, 1, 3, 3, 2)).astype(np.float32)
    joined = block_feature_maps([tf.constant(maps), tf.constant(other)], num_blocks=3).numpy()
    assert joined.shape == (2, 3, 3, 3, 6)
    np.testing.assert_array_equal(joined[..., :4], pooled)
    np.testing.assert_allclose(joined[1, 2, ..., 4:], other[5, 0], rtol=1e-6)


def test_final_maps_are_the_last_map_of_each_stream():
    r3d = build_backbone("r3d_18", input_size=16, **VIDEO_TWO_STAGE)
    assert final_map_endpoints(r3d, 2, 16) == (("res3",), (8, 8, 16))
    two_stream = build_backbone("two_stream", input_size=16,
                                stream_backbone_kwargs=VIDEO_TWO_STAGE)
    assert final_map_endpoints(two_stream, 2, 16) == (("rgb_res3", "motion_res3"), (8, 8, 32))


def test_scores_positives_and_loss_match_a_numpy_loop():
    rng = np.random.default_rng(2)
    predictions = rng.normal(size=(2, 3, 2, 2, 5)).astype(np.float32)
    targets = rng.normal(size=(2, 3, 2, 2, 5)).astype(np.float32)
    scores, positive_index = dpc_scores(tf.constant(predictions), tf.constant(targets))
    want_scores, want_positives, want_loss = numpy_dpc(predictions, targets)
    np.testing.assert_allclose(scores.numpy(), want_scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(positive_index.numpy(), want_positives)
    loss = float(dpc_loss(tf.constant(predictions), tf.constant(targets)))
    assert loss == pytest.approx(want_loss, rel=1e-5)


def test_equal_scores_give_log_of_the_candidate_count():
    targets = tf.constant(np.random.default_rng(3).normal(size=(3, 2, 2, 3, 4)), tf.float32)
    # Zero predictions score 0 against every one of the 3 · 2 · 2 · 3 = 36 candidates.
    assert float(dpc_loss(tf.zeros_like(targets), targets)) == pytest.approx(math.log(36),
                                                                             rel=1e-6)


def test_candidate_kinds_are_the_papers_negatives():
    """Han et al. 2019: easy = another video; spatial = same video, other position;
    temporal = same video and position, another block."""
    batch, blocks, positions = 3, 2, 4
    keys = [(n, t, p) for n in range(batch) for t in range(blocks) for p in range(positions)]
    want = np.zeros((len(keys), len(keys)), np.int32)
    for row, (n, t, p) in enumerate(keys):
        for column, (n2, t2, p2) in enumerate(keys):
            if n != n2:
                want[row, column] = EASY_NEGATIVE
            elif p != p2:
                want[row, column] = SPATIAL_NEGATIVE
            elif t != t2:
                want[row, column] = TEMPORAL_NEGATIVE
            else:
                want[row, column] = POSITIVE
    index = tf.range(len(keys))
    kinds = candidate_kind(index[:, None], index[None, :], blocks, positions).numpy()
    np.testing.assert_array_equal(kinds, want)
    # Per row: one positive, blocks − 1 temporal, blocks · (positions − 1) spatial negatives.
    counts = [(kinds == kind).sum(axis=1) for kind in (POSITIVE, TEMPORAL_NEGATIVE,
                                                       SPATIAL_NEGATIVE, EASY_NEGATIVE)]
    assert [set(c.tolist()) for c in counts] == [{1}, {1}, {6}, {16}]


def numpy_conv_same(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """'same' 2-D convolution (cross-correlation, odd kernel) as loops over the kernel."""
    k = kernel.shape[0]
    pad = k // 2
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = np.zeros((*x.shape[:3], kernel.shape[-1])) + bias
    for di in range(k):
        for dj in range(k):
            window = padded[:, di:di + x.shape[1], dj:dj + x.shape[2], :]
            out += window @ kernel[di, dj]
    return out


def test_conv_gru_step_matches_the_equations():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 5, 4, 3)).astype(np.float32)
    h = rng.normal(size=(2, 5, 4, 6)).astype(np.float32)
    cell = ConvGRUCell(6, kernel_size=3)
    cell(tf.constant(x), tf.constant(h))
    for variable in cell.variables:
        variable.assign(rng.normal(scale=0.3, size=variable.shape).astype(np.float32))
    got = cell(tf.constant(x), tf.constant(h)).numpy()

    def sigmoid(v):
        return 1 / (1 + np.exp(-v))

    gates = sigmoid(numpy_conv_same(np.concatenate([x, h], -1), cell.gates.kernel.numpy(),
                                    cell.gates.bias.numpy()))
    z, r = gates[..., :6], gates[..., 6:]
    candidate = np.tanh(numpy_conv_same(np.concatenate([x, r * h], -1),
                                        cell.candidate.kernel.numpy(),
                                        cell.candidate.bias.numpy()))
    np.testing.assert_allclose(got, z * h + (1 - z) * candidate, atol=1e-5)


def test_config_defaults_are_the_papers_and_bad_values_are_refused():
    config = DPCConfig()
    # A block is the encoder's clip: 5 frames.
    assert (config.num_blocks, config.clip_length, config.predicted_blocks) == (8, 5, 3)
    assert config.frame_stride == 3 and config.aggregator_kernel == 1
    with pytest.raises(ConfigError, match="predicted_blocks must be below"):
        DPCConfig(num_blocks=3, predicted_blocks=3)
    with pytest.raises(ConfigError, match="num_blocks must be positive"):
        DPCConfig(num_blocks=0)
    assert DPCTask(DPCConfig()).window_length() == 40


def test_predictions_never_see_the_blocks_they_predict():
    """Changing the frames of the predicted blocks changes their targets, not the predictions
    (inference mode: in training mode BatchNorm's batch statistics mix all blocks)."""
    task = DPCTask(DPCConfig(**SMALL_DPC))
    model, _ = initial_weights(task)
    rng = np.random.default_rng(5)
    # φ's last convolution starts at zero: give it weights so predictions depend on the input.
    kernel = model.predictor_out.kernel
    kernel.assign(rng.normal(scale=0.1, size=kernel.shape).astype(np.float32))
    blocks = rng.uniform(size=(2, 3, 2, 16, 16, 3)).astype(np.float32)
    changed = blocks.copy()
    changed[:, 1:] = rng.uniform(size=changed[:, 1:].shape)
    first, second = model(blocks, training=False), model(changed, training=False)
    np.testing.assert_allclose(second["predictions"].numpy(), first["predictions"].numpy(),
                               atol=1e-6)
    assert np.abs(first["predictions"].numpy()).max() > 1e-3
    assert np.abs(second["targets"].numpy() - first["targets"].numpy()).max() > 1e-3
    # Observed blocks do reach the predictions.
    changed[:, 0] = rng.uniform(size=changed[:, 0].shape)
    third = model(changed, training=False)
    assert np.abs(third["predictions"].numpy() - first["predictions"].numpy()).max() > 1e-4


def test_two_replicas_match_one_device_with_negatives_from_both(two_replica_strategy):
    """Same global batch of 4 windows: the same loss (every prediction scored against the
    targets of both replicas) and the same weights after a step (synchronized BatchNorm)."""
    task = DPCTask(DPCConfig(global_batch_size=4, **SMALL_DPC))
    _, weights = initial_weights(task)
    blocks = np.random.default_rng(6).uniform(size=(4, 3, 2, 16, 16, 3)).astype(np.float32)
    loss = assert_two_replicas_match_one_device(
        task, weights, (blocks, np.zeros(4, np.int64)), two_replica_strategy)
    # Zero-initialised predictor: the first loss is log(4 videos · 2 blocks · 8 · 8 positions).
    assert loss == pytest.approx(math.log(4 * 2 * 64), rel=1e-5)


def test_trainer_lowers_the_loss_on_real_clips_and_restores_the_encoder(tmp_path):
    """The real Trainer (Adam, as the paper) on windows of the real sample clips (seeded;
    measured means of 4 steps: 6.12, 5.79, 5.55)."""
    task = DPCTask(DPCConfig(global_batch_size=4, synchronized_bn=False, seed=1, **SMALL_DPC))
    losses, trainer = train_in_process(task, "dpc", tmp_path, train_steps=12, log_every=4,
                                       checkpoint_every=12, optimizer="adam",
                                       learning_rate=1e-2, weight_decay=0.0)
    assert len(losses) == 3
    # Chance level: log(4 · 2 · 64) ≈ 6.24; the means of 4 steps fall.
    assert losses[0] > 5.5 and losses[-1] < losses[0] - 0.3, losses
    assert_encoder_restores(tmp_path, trainer, "dpc")


@pytest.mark.slow
def test_short_pretrain_against_random_init_in_the_video_probe(tmp_path):
    """The CPU-sized recipe of the module docstring (4 blocks of 4 frames, 2 predicted, every
    2nd frame, 32 px, r3d_18 at 1/8 width), 300 Adam steps (1e-3, weight decay 1e-5), batch 8,
    then the video probe (4 clips per video) and the clip-retrieval check on the sample
    videos' test split, trained vs random init: 3 min wall on a loaded 2-core machine.

    Measured: loss (means of 50 steps; chance log 256 = 5.55) 2.83, 1.15, 0.92, 0.84, 0.80,
    0.80. The 8-scene probe is saturated for both encoders (video top-1 100 % from ``stem`` to
    ``res5``); on ``pool`` trained vs random init: clip top-1 93.8 vs 87.5 %, video top-1
    87.5 vs 87.5 %, triplet retrieval 0.996 vs 0.957, nearest neighbour 0.969 vs 0.938. So
    only the retrieval gain on ``pool`` is asserted."""
    from selfsup.tasks.linear_probe import LinearClassifierConfig
    from selfsup.tasks.video_eval import evaluate_video_linear

    config = DPCConfig(**dict(VIDEO_TINY, num_blocks=4, clip_length=4, predicted_blocks=2,
                              frame_stride=2, global_batch_size=8, seed=0))
    losses, _ = train_in_process(DPCTask(config), "dpc", tmp_path, train_steps=300,
                                 log_every=50, checkpoint_every=300, optimizer="adam",
                                 learning_rate=1e-3, weight_decay=1e-5)
    results = evaluate_video_linear(
        tmp_path, clips_per_video=4, log=lambda message: None,
        classifier=LinearClassifierConfig(steps=200, weight_decays=(1e-3, 1e-1)))
    summary = {column: {name: (entry["top1"], entry["video_top1"],
                               round(entry["triplet_retrieval"], 3),
                               round(entry["nearest_neighbour"], 3))
                        for name, entry in results[column].items()}
               for column in ("trained", "random_init")}
    print("dpc losses", losses, "probe", summary)
    assert losses[-1] < losses[0] - 0.5, losses
    assert (results["trained"]["pool"]["triplet_retrieval"]
            > results["random_init"]["pool"]["triplet_retrieval"]), summary
