"""Point-cloud datasets: generated primitive shapes, and points sampled from mesh files.

``shapes`` (generated, offline, endless): five classes of closed surfaces (:data:`SHAPE_CLASSES`)
with points drawn uniformly by area on the surface, then scaled by a random factor and turned by
a uniformly random rotation. Every surface fits the unit ball before scaling:
  * sphere of radius 1;
  * cube surface, half side 1/√3 (its corners on the unit sphere);
  * closed cylinder, radius 0.6, height 1.6 (rim on the unit sphere);
  * closed cone, base radius 0.8 at z = −0.6, apex at z = 0.6;
  * torus, major radius 0.7, tube radius 0.3.
Uniform by area: each part of a surface gets points in proportion to its area (cylinder caps
vs side, cone base vs side, the six cube faces), and curved parts use their area element (the
sphere's normalised Gaussian vectors; the cone side's distance from the apex ∝ √u; the torus's
tube angle θ has density ∝ R + r·cos θ, inverted by Newton's method). Sampling is vectorised
TensorFlow with stateless seeds, so a batch is a pure function of its seed.

``mesh_folder:<root>`` (ModelNet's layout, ``<root>/<class>/<split>/*.off|obj|ply|stl``): each
mesh is read with trimesh, ``num_points`` points are sampled uniformly by area (seeded, once
per mesh) and centred and scaled into the unit ball, as ModelNet and ShapeNet point clouds are
usually prepared. The survey's Table 9 trains and probes on ModelNet40 this way.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import tensorflow as tf

from selfsup.models.registry import ConfigError

GENERATED_SHAPES = "shapes"
MESH_FOLDER_PREFIX = "mesh_folder:"
MESH_EXTENSIONS = (".off", ".obj", ".ply", ".stl")
SHAPE_CLASSES = ("sphere", "cube", "cylinder", "cone", "torus")

CUBE_HALF_SIDE = 1.0 / math.sqrt(3.0)
CYLINDER_RADIUS, CYLINDER_HALF_HEIGHT = 0.6, 0.8
CONE_RADIUS, CONE_HALF_HEIGHT = 0.8, 0.6
TORUS_MAJOR_RADIUS, TORUS_MINOR_RADIUS = 0.7, 0.3
# Random isotropic scale of each generated shape (our choice: sizes vary, shapes stay apart).
SCALE_RANGE = (0.7, 1.0)
# Newton steps inverting the torus's tube-angle CDF; the error falls quadratically and 8 steps
# leave it below float32 rounding from the start θ = 2πu (its derivative is ≥ R − r > 0).
TORUS_NEWTON_STEPS = 8
# Stateless-seed streams of the generated splits (the train split is endless; the test split
# is a fixed draw from another stream, so no test shape appears in training).
SPLIT_STREAMS = {"train": 1, "test": 2}
# Shapes generated per call by GeneratedShapes.examples: canonical_shapes builds every class
# for every example, so 10,000 clouds of 1,024 points in one call peaked at 2.8 GB.
EXAMPLES_CHUNK = 1000


def _angles(uniform: tf.Tensor) -> tf.Tensor:
    return 2.0 * math.pi * uniform


def _sphere(normal: tf.Tensor) -> tf.Tensor:
    return normal / tf.norm(normal, axis=-1, keepdims=True)


def _cube(uniform: tf.Tensor) -> tf.Tensor:
    # Six faces of equal area: face k holds coordinate k mod 3 at sign(k < 3 ? + : −).
    face = tf.minimum(tf.cast(uniform[..., 0] * 6.0, tf.int32), 5)
    coordinates = (2.0 * uniform[..., 1:4] - 1.0) * CUBE_HALF_SIDE
    fixed = tf.one_hot(face % 3, 3)
    sign = tf.where(face < 3, 1.0, -1.0)[..., None]
    return coordinates * (1.0 - fixed) + fixed * sign * CUBE_HALF_SIDE


def _cylinder(uniform: tf.Tensor) -> tf.Tensor:
    radius, half_height = CYLINDER_RADIUS, CYLINDER_HALF_HEIGHT
    # Side area 2πr·2h against two caps of πr² each.
    side_fraction = 2.0 * half_height / (2.0 * half_height + radius)
    on_side = uniform[..., 0] < side_fraction
    angle = _angles(uniform[..., 1])
    cap_radius = radius * tf.sqrt(uniform[..., 2])
    cap_z = tf.where(uniform[..., 3] < 0.5, half_height, -half_height)
    side_z = (2.0 * uniform[..., 2] - 1.0) * half_height
    ring = tf.where(on_side, radius, cap_radius)
    z = tf.where(on_side, side_z, cap_z)
    return tf.stack([ring * tf.cos(angle), ring * tf.sin(angle), z], axis=-1)


def _cone(uniform: tf.Tensor) -> tf.Tensor:
    radius, half_height = CONE_RADIUS, CONE_HALF_HEIGHT
    slant = math.hypot(radius, 2.0 * half_height)
    # Side area πR·slant against the base's πR².
    on_side = uniform[..., 0] < slant / (slant + radius)
    angle = _angles(uniform[..., 1])
    # Side: the circle at distance t·slant from the apex has length ∝ t, so t = √u; the
    # base disc's circle at radius t·R likewise.
    from_apex = tf.sqrt(uniform[..., 2])
    ring = from_apex * radius
    z = tf.where(on_side, half_height - from_apex * 2.0 * half_height, -half_height)
    return tf.stack([ring * tf.cos(angle), ring * tf.sin(angle), z], axis=-1)


def torus_tube_angles(uniform: tf.Tensor) -> tf.Tensor:
    """Tube angles θ with density ∝ R + r·cos θ on [0, 2π) (the torus's area element) from
    uniforms ``u``: solves F(θ) = (Rθ + r·sin θ) / (2πR) = u by Newton's method."""
    major, minor = TORUS_MAJOR_RADIUS, TORUS_MINOR_RADIUS
    target = 2.0 * math.pi * major * uniform
    theta = 2.0 * math.pi * uniform
    for _ in range(TORUS_NEWTON_STEPS):
        theta -= (major * theta + minor * tf.sin(theta) - target) / (major + minor * tf.cos(theta))
    return theta


def _torus(uniform: tf.Tensor) -> tf.Tensor:
    theta = torus_tube_angles(uniform[..., 0])
    phi = _angles(uniform[..., 1])
    ring = TORUS_MAJOR_RADIUS + TORUS_MINOR_RADIUS * tf.cos(theta)
    return tf.stack([ring * tf.cos(phi), ring * tf.sin(phi), TORUS_MINOR_RADIUS * tf.sin(theta)],
                    axis=-1)


def canonical_shapes(labels: tf.Tensor, num_points: int, seed: tf.Tensor) -> tf.Tensor:
    """``[b]`` class indices into :data:`SHAPE_CLASSES` → ``[b, num_points, 3]`` points drawn
    uniformly by area on each unrotated, unscaled surface (module docstring)."""
    labels = tf.cast(labels, tf.int32)
    uniform_seed, normal_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    shape = tf.stack([tf.size(labels), num_points])
    uniform = tf.random.stateless_uniform(tf.concat([shape, [4]], 0), uniform_seed)
    normal = tf.random.stateless_normal(tf.concat([shape, [3]], 0), normal_seed)
    # Every class for every example, then the labelled one: 5× the arithmetic of one class,
    # but no per-example branching.
    candidates = tf.stack([_sphere(normal), _cube(uniform), _cylinder(uniform), _cone(uniform),
                           _torus(uniform)], axis=1)
    return tf.gather(candidates, labels, axis=1, batch_dims=1)


def random_rotations(count: tf.Tensor | int, seed: tf.Tensor) -> tf.Tensor:
    """``[count, 3, 3]`` rotation matrices drawn uniformly from SO(3): unit quaternions from
    normalised 4-D Gaussian vectors (uniform on the 3-sphere, which covers SO(3) twice)."""
    quaternion = tf.random.stateless_normal(tf.stack([count, 4]), seed)
    w, x, y, z = tf.unstack(quaternion / tf.norm(quaternion, axis=-1, keepdims=True), axis=-1)
    rows = [[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]]
    return tf.stack([tf.stack(row, axis=-1) for row in rows], axis=-2)


def generated_shapes(labels: tf.Tensor, num_points: int, seed: tf.Tensor,
                     scale_range: tuple[float, float] = SCALE_RANGE,
                     rotate: bool = True) -> tf.Tensor:
    """Generated shapes of classes ``labels`` ``[b]``: :func:`canonical_shapes`, scaled by a
    uniform factor in ``scale_range`` and turned by :func:`random_rotations` → ``[b, n, 3]``."""
    points_seed, scale_seed, rotation_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 3))
    points = canonical_shapes(labels, num_points, points_seed)
    count = tf.shape(points)[0]
    low, high = scale_range
    scales = tf.random.stateless_uniform(tf.stack([count, 1, 1]), scale_seed, low, high)
    points *= scales
    if rotate:
        points = tf.einsum("bij,bnj->bni", random_rotations(count, rotation_seed), points)
    return points


def _seed(*parts: int) -> tf.Tensor:
    """A stateless seed ``[2]`` from integers (hashed together: any number of parts)."""
    return tf.constant([parts[0], hash(tuple(parts)) & 0x7FFFFFFF], tf.int64)


class PointCloudSource:
    """A labelled point-cloud dataset: its ``name``, ``classes`` and ``splits``."""

    name: str
    classes: tuple[str, ...]
    splits: tuple[str, ...]

    def check_split(self, split: str) -> None:
        """ConfigError unless ``split`` exists."""
        if split not in self.splits:
            raise ConfigError(f"point-cloud dataset {self.name!r} has no split {split!r}; "
                              f"splits: {', '.join(self.splits)}")

    def training_batches(self, split: str, batch_size: int, num_points: int, seed: int,
                         stream: int = 0) -> tf.data.Dataset:
        """Endless seeded batches ``(points [batch, num_points, 3], labels [batch])``."""
        raise NotImplementedError

    def examples(self, split: str, count: int | None, num_points: int, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray]:
        """A fixed labelled set: float32 ``[count, num_points, 3]`` and int64 ``[count]``
        (``count=None``: all of a finite split)."""
        raise NotImplementedError


class GeneratedShapes(PointCloudSource):
    """The ``shapes`` dataset (module docstring); both splits are generated on the fly."""

    name = GENERATED_SHAPES
    classes = SHAPE_CLASSES
    splits = tuple(SPLIT_STREAMS)

    def training_batches(self, split: str, batch_size: int, num_points: int, seed: int,
                         stream: int = 0) -> tf.data.Dataset:
        self.check_split(split)
        base = _seed(seed, SPLIT_STREAMS[split], stream)

        def batch(index: tf.Tensor):
            label_seed, shape_seed = tf.unstack(tf.random.experimental.stateless_split(
                tf.stack([base[0], base[1] + index]), 2))
            labels = tf.random.stateless_uniform([batch_size], label_seed, 0,
                                                 len(SHAPE_CLASSES), dtype=tf.int64)
            return generated_shapes(labels, num_points, shape_seed), labels

        return tf.data.Dataset.counter(dtype=tf.int64).map(
            batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    def examples(self, split: str, count: int | None, num_points: int, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray]:
        """``count`` shapes (classes in turn, so balanced), a pure function of the seed, made
        :data:`EXAMPLES_CHUNK` at a time (chunk ``i > 0`` has its own seed; the first chunk is
        the same for every ``count``)."""
        self.check_split(split)
        if count is None or count <= 0:
            raise ConfigError("generated shapes need a positive example count")
        labels = np.arange(count, dtype=np.int64) % len(SHAPE_CLASSES)
        chunks = []
        for index, start in enumerate(range(0, count, EXAMPLES_CHUNK)):
            chunk_seed = (_seed(seed, SPLIT_STREAMS[split], -1) if index == 0
                          else _seed(seed, SPLIT_STREAMS[split], -1, index))
            chunks.append(generated_shapes(labels[start:start + EXAMPLES_CHUNK], num_points,
                                           chunk_seed).numpy())
        return np.concatenate(chunks), labels


def normalize_to_unit_ball(points: np.ndarray) -> np.ndarray:
    """``[n, 3]`` points moved to their centroid and scaled so the farthest is at radius 1."""
    centred = points - points.mean(axis=0)
    return centred / max(float(np.linalg.norm(centred, axis=1).max()), 1e-12)


def sample_mesh_file(path: str | Path, num_points: int, seed: int,
                     normalize: bool = True) -> np.ndarray:
    """``num_points`` points uniform by area on the mesh in ``path`` (trimesh reads OFF, OBJ,
    PLY, STL), float32 ``[n, 3]``, moved into the unit ball (:func:`normalize_to_unit_ball`)
    unless ``normalize`` is False."""
    import trimesh

    try:
        mesh = trimesh.load(str(path), force="mesh")
    except Exception as error:  # trimesh raises many types for unreadable files
        raise ConfigError(f"cannot read mesh {path}: {error}") from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0 or mesh.area <= 0:
        raise ConfigError(f"{path} holds no triangles with area")
    points, _ = trimesh.sample.sample_surface(mesh, num_points, seed=seed)
    points = np.asarray(points, np.float64)
    return (normalize_to_unit_ball(points) if normalize else points).astype(np.float32)


class MeshFolder(PointCloudSource):
    """``mesh_folder:<root>``: ``<root>/<class>/<split>/`` folders of mesh files (ModelNet's
    layout); points are sampled once per mesh and kept in memory."""

    def __init__(self, root: str) -> None:
        self.root = Path(root).expanduser()
        self.name = f"{MESH_FOLDER_PREFIX}{root}"
        if not self.root.is_dir():
            raise ConfigError(f"mesh folder {self.root} does not exist")
        files = [path for path in self.root.glob("*/*/*")
                 if path.suffix.lower() in MESH_EXTENSIONS]
        if not files:
            raise ConfigError(f"mesh folder {self.root} holds no <class>/<split>/ mesh files "
                              f"({', '.join(MESH_EXTENSIONS)})")
        self.classes = tuple(sorted({path.parent.parent.name for path in files}))
        self.splits = tuple(sorted({path.parent.name for path in files}))
        self._files = {split: sorted((path for path in files if path.parent.name == split),
                                     key=lambda path: (path.parent.parent.name, path.name))
                       for split in self.splits}
        self._cache: dict[tuple[str, int, int], tuple[np.ndarray, np.ndarray]] = {}

    def _all(self, split: str, num_points: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        self.check_split(split)
        key = (split, num_points, seed)
        if key not in self._cache:
            files = self._files[split]
            points = np.stack([sample_mesh_file(path, num_points, seed=seed * 1_000_003 + i)
                               for i, path in enumerate(files)])
            labels = np.array([self.classes.index(path.parent.parent.name) for path in files],
                              np.int64)
            self._cache[key] = points, labels
        return self._cache[key]

    def training_batches(self, split: str, batch_size: int, num_points: int, seed: int,
                         stream: int = 0) -> tf.data.Dataset:
        points, labels = self._all(split, num_points, seed)
        return (tf.data.Dataset.from_tensor_slices((points, labels))
                .shuffle(len(labels), seed=seed + stream, reshuffle_each_iteration=True)
                .repeat().batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE))

    def examples(self, split: str, count: int | None, num_points: int, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray]:
        """The first ``count`` meshes of a seeded shuffle of ``split`` (None: all of them)."""
        points, labels = self._all(split, num_points, seed)
        order = np.random.default_rng(seed).permutation(len(labels))[:count]
        return points[order], labels[order]


def is_point_dataset(dataset: str) -> bool:
    """Whether ``dataset`` names a point-cloud dataset (``shapes`` or ``mesh_folder:``)."""
    return dataset == GENERATED_SHAPES or dataset.startswith(MESH_FOLDER_PREFIX)


def open_point_source(dataset: str, data_dir: str | None = None) -> PointCloudSource:
    """The point-cloud dataset ``dataset`` (``data_dir`` is unused: both kinds need none)."""
    if dataset == GENERATED_SHAPES:
        return GeneratedShapes()
    if dataset.startswith(MESH_FOLDER_PREFIX):
        return MeshFolder(dataset[len(MESH_FOLDER_PREFIX):])
    raise ConfigError(f"unknown point-cloud dataset {dataset!r}; valid: {GENERATED_SHAPES}, "
                      f"{MESH_FOLDER_PREFIX}<root> (<root>/<class>/<split>/*.off|obj|ply|stl)")
