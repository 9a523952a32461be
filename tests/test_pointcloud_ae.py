"""The point-cloud autoencoder: generated shapes, mesh files, PointNet, the decoders, training
through the real trainer, and the linear-SVM probe of the survey's Table 9."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import (
    assert_encoder_restores,
    assert_two_replicas_match_one_device,
    initial_weights,
    train_in_process,
)
from selfsup.datasets.point_clouds import (
    CONE_HALF_HEIGHT,
    CONE_RADIUS,
    CUBE_HALF_SIDE,
    CYLINDER_HALF_HEIGHT,
    CYLINDER_RADIUS,
    EXAMPLES_CHUNK,
    SHAPE_CLASSES,
    TORUS_MAJOR_RADIUS,
    TORUS_MINOR_RADIUS,
    MeshFolder,
    canonical_shapes,
    generated_shapes,
    normalize_to_unit_ball,
    open_point_source,
    random_rotations,
    sample_mesh_file,
    torus_tube_angles,
)
from selfsup.models import build_backbone
from selfsup.models.point_decoders import FoldingDecoder, FullyConnectedPointDecoder
from selfsup.models.registry import ConfigError
from selfsup.tasks import TaskConfig, task_class
from selfsup.tasks.chamfer import approximate_emd
from selfsup.tasks.checkpoints import build_encoder, restore_encoder
from selfsup.tasks.point_probe import point_features, point_svm_probe
from selfsup.tasks.pointcloud_ae import PointCloudAEConfig, PointCloudAETask
from selfsup.tasks.video_base import VideoTaskConfig, check_task_modality

SEED = tf.constant([7, 11], tf.int64)


def _canonical(shape: str, count: int = 20_000) -> np.ndarray:
    label = SHAPE_CLASSES.index(shape)
    return canonical_shapes(tf.constant([label]), count, SEED).numpy()[0].astype(np.float64)


def _within(fraction: float, expected: float, count: int) -> bool:
    """``fraction`` of ``count`` draws is within 4.5 binomial standard deviations."""
    return abs(fraction - expected) < 4.5 * math.sqrt(expected * (1 - expected) / count)


def test_generated_points_lie_on_their_surfaces():
    tolerance = 1e-5
    sphere = _canonical("sphere")
    np.testing.assert_allclose(np.linalg.norm(sphere, axis=1), 1.0, atol=tolerance)
    cube = _canonical("cube")
    np.testing.assert_allclose(np.abs(cube).max(axis=1), CUBE_HALF_SIDE, atol=tolerance)

    cylinder = _canonical("cylinder")
    radial, z = np.hypot(cylinder[:, 0], cylinder[:, 1]), cylinder[:, 2]
    on_side = (np.abs(radial - CYLINDER_RADIUS) < tolerance) & (
        np.abs(z) <= CYLINDER_HALF_HEIGHT + tolerance)
    on_cap = (np.abs(np.abs(z) - CYLINDER_HALF_HEIGHT) < tolerance) & (
        radial <= CYLINDER_RADIUS + tolerance)
    assert (on_side | on_cap).all()

    cone = _canonical("cone")
    radial, z = np.hypot(cone[:, 0], cone[:, 1]), cone[:, 2]
    # The side's radius shrinks linearly from R at the base to 0 at the apex.
    side_radius = CONE_RADIUS * (CONE_HALF_HEIGHT - z) / (2 * CONE_HALF_HEIGHT)
    on_side = np.abs(radial - side_radius) < tolerance
    on_base = (np.abs(z + CONE_HALF_HEIGHT) < tolerance) & (radial <= CONE_RADIUS + tolerance)
    assert (on_side | on_base).all()

    torus = _canonical("torus")
    tube = np.hypot(np.hypot(torus[:, 0], torus[:, 1]) - TORUS_MAJOR_RADIUS, torus[:, 2])
    np.testing.assert_allclose(tube, TORUS_MINOR_RADIUS, atol=tolerance)


def test_generated_points_are_uniform_by_area():
    count = 20_000
    # Archimedes: a sphere's zone has area ∝ its height, so z > 0.5 holds 1/4 of the area.
    assert _within(np.mean(_canonical("sphere")[:, 2] > 0.5), 0.25, count)
    cube = _canonical("cube")
    faces = np.argmax(np.abs(cube), axis=1) + 3 * (cube[np.arange(count),
                                                        np.argmax(np.abs(cube), axis=1)] < 0)
    for face in range(6):
        assert _within(np.mean(faces == face), 1 / 6, count)
    # Cylinder: side 2πr·2h against caps 2πr².
    cylinder = _canonical("cylinder")
    side = np.abs(np.abs(cylinder[:, 2]) - CYLINDER_HALF_HEIGHT) > 1e-5
    r, h = CYLINDER_RADIUS, CYLINDER_HALF_HEIGHT
    assert _within(np.mean(side), (4 * math.pi * r * h) / (4 * math.pi * r * h
                                                           + 2 * math.pi * r * r), count)
    # Cone: side πR·s against base πR²; the upper half of the side's height holds 1/4 of it.
    cone = _canonical("cone")
    base = np.abs(cone[:, 2] + CONE_HALF_HEIGHT) < 1e-5
    slant = math.hypot(CONE_RADIUS, 2 * CONE_HALF_HEIGHT)
    assert _within(np.mean(~base), slant / (slant + CONE_RADIUS), count)
    assert _within(np.mean(cone[~base, 2] > 0), 0.25, int((~base).sum()))
    # Torus: the outer half (x² + y² > R²) has area (πR + 2r)·2πr against 2πR·2πr in all.
    torus = _canonical("torus")
    outer = np.hypot(torus[:, 0], torus[:, 1]) > TORUS_MAJOR_RADIUS
    major, minor = TORUS_MAJOR_RADIUS, TORUS_MINOR_RADIUS
    assert _within(np.mean(outer), (math.pi * major + 2 * minor) / (2 * math.pi * major), count)


def test_torus_tube_angles_invert_their_distribution_function():
    uniform = np.linspace(0.0, 0.999, 500)
    theta = torus_tube_angles(tf.constant(uniform, tf.float32)).numpy().astype(np.float64)
    major, minor = TORUS_MAJOR_RADIUS, TORUS_MINOR_RADIUS
    cdf = (major * theta + minor * np.sin(theta)) / (2 * math.pi * major)
    np.testing.assert_allclose(cdf, uniform, atol=1e-5)


def test_random_rotations_are_proper_uniform_and_keep_distances_to_the_centre():
    rotations = random_rotations(4000, SEED).numpy().astype(np.float64)
    np.testing.assert_allclose(rotations @ rotations.transpose(0, 2, 1),
                               np.broadcast_to(np.eye(3), rotations.shape), atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(rotations), 1.0, atol=1e-5)
    # Haar measure: every entry averages 0 (its standard deviation is 1/√3).
    assert np.abs(rotations.mean(axis=0)).max() < 4.5 / math.sqrt(3 * 4000)
    labels = tf.constant([0, 1, 2, 3, 4])
    turned = generated_shapes(labels, 300, SEED).numpy()
    unturned = generated_shapes(labels, 300, SEED, rotate=False).numpy()
    np.testing.assert_allclose(np.linalg.norm(turned, axis=-1),
                               np.linalg.norm(unturned, axis=-1), rtol=1e-5)
    assert not np.allclose(turned, unturned, atol=1e-2)


def test_generated_splits_are_seeded_balanced_and_differ():
    source = open_point_source("shapes")
    points, labels = source.examples("test", 10, 64)
    again, _ = source.examples("test", 10, 64)
    train, _ = source.examples("train", 10, 64)
    np.testing.assert_array_equal(points, again)
    assert labels.tolist() == [0, 1, 2, 3, 4] * 2 and points.shape == (10, 64, 3)
    assert not np.allclose(points, train)
    # Big sets are made a chunk at a time: the first chunk is the small set's, later chunks
    # are new shapes (not copies of the first), labels still go round the classes.
    many, many_labels = source.examples("test", 2 * EXAMPLES_CHUNK + 5, 8)
    few, _ = source.examples("test", EXAMPLES_CHUNK, 8)
    assert many.shape == (2 * EXAMPLES_CHUNK + 5, 8, 3)
    np.testing.assert_array_equal(many[:EXAMPLES_CHUNK], few)
    assert not np.allclose(many[EXAMPLES_CHUNK:2 * EXAMPLES_CHUNK], few)
    np.testing.assert_array_equal(many_labels, np.arange(2 * EXAMPLES_CHUNK + 5) % 5)
    first = [batch[0].numpy() for batch in source.training_batches("train", 4, 32, 0).take(2)]
    replay = [batch[0].numpy() for batch in source.training_batches("train", 4, 32, 0).take(2)]
    np.testing.assert_array_equal(first, replay)
    assert not np.allclose(first[0], first[1])
    with pytest.raises(ConfigError, match="no split 'validation'"):
        source.check_split("validation")
    with pytest.raises(ConfigError, match="unknown point-cloud dataset"):
        open_point_source("fashion_mnist")


def _write_meshes(root, classes=("box", "ball"), splits=("train", "test"), per_split=3):
    import trimesh

    makers = {"box": lambda: trimesh.creation.box(extents=(2.0, 2.0, 2.0)),
              "ball": lambda: trimesh.creation.icosphere(subdivisions=2)}
    suffixes = (".off", ".obj", ".ply")
    for name in classes:
        for split in splits:
            folder = root / name / split
            folder.mkdir(parents=True)
            for i in range(per_split):
                makers[name]().export(folder / f"{name}_{i}{suffixes[i % 3]}")
    return root


def test_mesh_files_are_sampled_on_their_surface_and_read_as_a_modelnet_folder(tmp_path):
    root = _write_meshes(tmp_path / "meshes")
    for suffix in (".off", ".obj", ".ply"):
        path = next((root / "box" / "train").glob(f"*{suffix}"))
        # Every point of the 2 × 2 × 2 box's surface has a coordinate at ±1.
        raw = sample_mesh_file(path, 500, seed=0, normalize=False)
        np.testing.assert_allclose(np.abs(raw).max(axis=1), 1.0, atol=1e-5)
    cloud = np.random.default_rng(0).normal(size=(100, 3)) * 3 + 7
    normalized = normalize_to_unit_ball(cloud)
    np.testing.assert_allclose(normalized.mean(axis=0), 0.0, atol=1e-12)
    assert np.linalg.norm(normalized, axis=1).max() == pytest.approx(1.0)

    source = open_point_source(f"mesh_folder:{root}")
    assert isinstance(source, MeshFolder)
    assert source.classes == ("ball", "box") and source.splits == ("test", "train")
    points, labels = source.examples("train", None, 128)
    assert points.shape == (6, 128, 3) and sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]
    np.testing.assert_allclose(np.linalg.norm(points, axis=-1).max(axis=1), 1.0, atol=1e-5)
    batch_points, batch_labels = next(iter(source.training_batches("train", 4, 128, 0)))
    assert batch_points.shape == (4, 128, 3) and set(batch_labels.numpy()) <= {0, 1}
    with pytest.raises(ConfigError, match="holds no <class>/<split>/ mesh files"):
        open_point_source(f"mesh_folder:{tmp_path}")


def test_pointnet_pool_ignores_point_order_and_has_the_papers_layers():
    keras.utils.set_random_seed(0)
    encoder = build_backbone("pointnet", synchronized_bn=False)
    points = np.random.default_rng(1).normal(size=(2, 50, 3)).astype(np.float32)
    endpoints = encoder(points, training=False)
    assert [(name, value.shape[-1]) for name, value in endpoints.items()] == [
        ("mlp1", 64), ("mlp2", 128), ("mlp3", 128), ("mlp4", 256), ("mlp5", 128), ("pool", 128)]
    # Achlioptas et al.'s encoder by hand: bias-free 1×1 convolutions 3→64→128→128→256→128
    # and 4 BatchNorm values (γ, β, moving mean and variance) per channel.
    kernels = 3 * 64 + 64 * 128 + 128 * 128 + 128 * 256 + 256 * 128
    assert encoder.count_params() == kernels + 4 * (64 + 128 + 128 + 256 + 128)
    shuffled = points[:, np.random.default_rng(2).permutation(50)]
    np.testing.assert_allclose(encoder(shuffled, training=False)["pool"].numpy(),
                               endpoints["pool"].numpy(), rtol=1e-6)
    # The pool is the max over the points of the last per-point layer.
    np.testing.assert_array_equal(endpoints["pool"].numpy(), endpoints["mlp5"].numpy().max(1))
    assert build_backbone("pointnet_qi", synchronized_bn=False)(points)["pool"].shape == (2, 1024)


def test_point_and_image_backbones_refuse_each_others_data():
    encoder = build_backbone("pointnet", synchronized_bn=False)
    with pytest.raises(ConfigError, match="takes point clouds"):
        encoder(tf.zeros([1, 28, 28, 3]))
    # (Point encoders export as point-cloud feature vectors: tests/test_point_export.py.)
    with pytest.raises(ConfigError, match="point backbones: pointnet, pointnet_qi"):
        PointCloudAEConfig(backbone="resnet_small")
    # The trainer's check, before anything is built (image backbones listed without them).
    with pytest.raises(ConfigError, match="takes point clouds, this task takes images") as error:
        check_task_modality(task_class("rotnet"), TaskConfig(backbone="pointnet"))
    assert "resnet18" in str(error.value) and "pointnet" not in str(error.value).split(";")[1]
    with pytest.raises(ConfigError, match="takes point clouds, this task takes video"):
        check_task_modality(task_class("rotnet3d"), VideoTaskConfig(backbone="pointnet_qi"))
    check_task_modality(PointCloudAETask, PointCloudAEConfig())
    rotnet = task_class("rotnet")(TaskConfig(backbone="pointnet", synchronized_bn=False))
    with pytest.raises(ConfigError, match="takes point clouds"):
        rotnet.build_model()(rotnet.dummy_inputs())
    with pytest.raises(ConfigError, match="takes point clouds"):
        PointCloudAEConfig(dataset="fashion_mnist")


def test_decoders_output_point_clouds_of_their_size():
    codes = tf.random.stateless_normal([3, 16], SEED)
    assert FullyConnectedPointDecoder(100)(codes).shape == (3, 100, 3)
    folding = FoldingDecoder(grid_side=6, width=8)
    assert folding(codes).shape == (3, 36, 3) and folding.num_points == 36
    grid = folding.grid.numpy()
    assert grid.min() == -1.0 and grid.max() == 1.0 and len(np.unique(grid, axis=0)) == 36
    assert FoldingDecoder().num_points == 45 * 45  # FoldingNet's m = 2025


def test_pointcloud_ae_trains_with_the_trainer_and_its_encoder_restores(tmp_path):
    task = PointCloudAETask(PointCloudAEConfig(num_points=128, global_batch_size=16,
                                               synchronized_bn=False))
    losses, trainer = train_in_process(task, "pointcloud_ae", tmp_path, train_steps=40,
                                       log_every=10, checkpoint_every=40, optimizer="adam",
                                       learning_rate=1e-3, weight_decay=0.0)
    # Measured: 0.132, 0.071, 0.061, 0.061 (means over each 10 steps).
    assert len(losses) == 4 and losses[-1] < 0.6 * losses[0], losses
    encoder = assert_encoder_restores(tmp_path, trainer, "pointcloud_ae")
    points, _ = task.source.examples("test", 4, 128)
    np.testing.assert_allclose(point_features(encoder, points)["pool"],
                               trainer.model.backbone(points, training=False)["pool"].numpy(),
                               rtol=1e-5, atol=1e-6)
    # The probe's plumbing (features and labels stay paired): far above the 20 % of chance.
    results = point_svm_probe(encoder, task.source, num_points=128, train_examples=100,
                              test_examples=100, endpoints=("mlp3", "pool"), costs=(1.0,))
    assert list(results) == ["mlp3", "pool"]
    assert all(result.top1 > 40.0 for result in results.values()), results


@pytest.mark.slow
def test_trained_encoder_beats_random_init_under_the_shape_svm(tmp_path):
    """The survey's Table 9 protocol on generated shapes: linear SVM on the ``pool`` bottleneck
    of the trained encoder against the same architecture at random initialisation."""
    num_points = 256
    task = PointCloudAETask(PointCloudAEConfig(num_points=num_points, global_batch_size=32,
                                               synchronized_bn=False))
    losses, _ = train_in_process(task, "pointcloud_ae", tmp_path, train_steps=1000,
                                 log_every=100, checkpoint_every=1000, optimizer="adam",
                                 learning_rate=1e-3, weight_decay=0.0)
    trained, run_config = restore_encoder(tmp_path)
    random_init = build_encoder(run_config, seed=10)
    settings = dict(num_points=num_points, train_examples=250, test_examples=2000, seed=0)
    ours = point_svm_probe(trained, task.source, **settings)["pool"].top1
    baseline = point_svm_probe(random_init, task.source, **settings)["pool"].top1
    print("pointcloud_ae svm", losses, ours, baseline)
    # Measured (this training, probe seeds 0/1/2; random init seed 10+probe seed): 89.0 / 89.2 /
    # 88.6 against 83.8 / 85.5 / 84.2, margins 3.7–5.2 points. Training is not bitwise
    # reproducible on CPU and moved one probe by 1.7 points between two identical runs (at
    # Adam 5e-4), so the bound leaves that much room below the smallest margin.
    assert ours > baseline + 2.0, (ours, baseline)


def test_two_replicas_with_synchronized_batch_norm_match_one_device(two_replica_strategy):
    task = PointCloudAETask(PointCloudAEConfig(num_points=32, global_batch_size=8))
    _, weights = initial_weights(task)
    points, _ = task.source.examples("train", 8, 32)
    assert_two_replicas_match_one_device(task, weights, (points, points), two_replica_strategy,
                                         learning_rate=0.1)


def test_emd_loss_is_the_sinkhorn_distance_and_falls_on_one_batch():
    task = PointCloudAETask(PointCloudAEConfig(num_points=64, global_batch_size=8,
                                               synchronized_bn=False, reconstruction_loss="emd"))
    keras.utils.set_random_seed(0)
    model = task.build_model()
    points, targets = next(iter(task.build_inputs()))
    outputs = model(points, training=False)
    expected = np.mean(approximate_emd(targets, outputs["reconstruction"]).numpy())
    assert float(task.build_losses(targets, outputs)) == pytest.approx(expected, rel=1e-6)
    optimizer = keras.optimizers.Adam(1e-3)
    metrics = task.build_metrics()
    step = tf.function(lambda inputs: task.train_step(inputs, model, optimizer, metrics))
    losses = [float(step((points, targets))["loss"]) for _ in range(5)]
    # Measured: 0.86, 0.39, 0.34, 0.31, 0.29.
    assert losses[-1] < 0.5 * losses[0], losses
    with pytest.raises(ConfigError, match="reconstruction_loss must be one of chamfer, emd"):
        PointCloudAEConfig(reconstruction_loss="l2")


def test_folding_decoder_trains_on_one_batch():
    task = PointCloudAETask(PointCloudAEConfig(num_points=128, global_batch_size=8,
                                               synchronized_bn=False, decoder="folding",
                                               folding_grid_side=10))
    keras.utils.set_random_seed(0)
    model = task.build_model()
    # Adam at 1e-3 (fine for the fully connected decoder) overshoots here: 0.95 → 98 at step 2.
    optimizer = keras.optimizers.Adam(1e-4)
    metrics = task.build_metrics()
    batch = next(iter(task.build_inputs()))
    step = tf.function(lambda inputs: task.train_step(inputs, model, optimizer, metrics))
    losses = [float(step(batch)["loss"]) for _ in range(12)]
    assert model(batch[0])["reconstruction"].shape == (8, 100, 3)
    # Measured: 0.95 → 0.66–0.68 over the last three steps.
    assert min(losses[-3:]) < 0.8 * losses[0], losses
