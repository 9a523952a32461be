"""Pictures of a frozen encoder: the survey's qualitative evaluations plus two plots.

Jing & Tian (survey §3.3.5, "Qualitative Evaluation") list three ways to look at what a
self-supervised encoder learned besides probe numbers: the first layer's kernels (Krizhevsky
et al. 2012, Fig. 3 shows AlexNet's conv1 filters as small colour tiles; the survey compares
such first-layer kernels across pretext tasks), feature maps (which channels fire where on an
image) and nearest-neighbour retrieval (images ranked by cosine similarity of their features).
This module draws those three, a 2-D t-SNE (van der Maaten & Hinton 2008) of test features
coloured by class, and the per-layer probe curve (top-1 % per endpoint, the survey's Table-4
view).

Every picture is a uint8 RGB array ``[h, w, 3]``; :func:`write_pictures` saves them as PNGs and
TensorBoard image summaries, and :func:`make_pictures` draws them all for one encoder and
dataset (``selfsup-eval --protocol=pictures``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from selfsup.datasets import ImageSource, raw_image_label_dataset, to_float_rgb
from selfsup.models.registry import ConfigError
from selfsup.tasks.features import extract_features
from selfsup.tasks.linear_probe import seeded_subset, select_examples
from selfsup.tasks.pictures import GRID_PADDING, image_grid, write_png

# A kernel tile is upsampled (nearest) by the smallest integer factor that makes it at least
# this many pixels wide: 3×3 kernels ×8 (24 px), 7×7 ×4 (28 px), 11×11 ×3 (33 px).
MIN_KERNEL_PIXELS = 24
# Colours (RGB in [0, 1]) of the neighbour borders: same class as the query / another class.
SAME_CLASS_COLOUR = (0.0, 0.75, 0.0)
OTHER_CLASS_COLOUR = (0.9, 0.0, 0.0)
# Matplotlib pictures are drawn at this many dots per inch; the sizes below are in pixels.
PLOT_DPI = 100
EMBEDDING_PLOT_SIZE = (800, 800)  # (width, height)
PROBE_PLOT_SIZE = (900, 600)
# t-SNE's usual defaults (van der Maaten & Hinton 2008 suggest perplexity 5–50; scikit-learn
# uses 30): reduce to 50 dimensions with PCA first, as their paper and most tutorials do, which
# removes noise dimensions and makes the O(n·d) distance computations cheap.
TSNE_PERPLEXITY = 30.0
TSNE_PCA_DIMS = 50
# scikit-learn's Barnes-Hut t-SNE runs its gradient in OpenMP threads that spin while they wait.
# Next to TensorFlow's thread pools (or other processes) on 2 busy cores, 200 points took 79 s
# with 2 OpenMP threads and 1.9 s with 1; one thread does 2000 points in well under a minute.
TSNE_OPENMP_THREADS = 1
EMBEDDING_METHODS = ("tsne", "pca")
METHOD_TITLES = {"tsne": "t-SNE", "pca": "PCA"}
# Feature maps are coloured with a perceptually uniform colormap (low = dark blue, high =
# yellow) rather than gray, so a map is not mistaken for an input image.
FEATURE_MAP_COLORMAP = "viridis"
# Picture names (file stems and TensorBoard tags) of make_pictures.
KERNELS, FEATURE_MAPS, NEIGHBOURS, EMBEDDING, PROBE_CURVE = (
    "kernels", "feature_maps", "nearest_neighbours", "embedding", "probe_curve")


# --- first-layer kernels -----------------------------------------------------------------------

def _layers_depth_first(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """Every sublayer of ``layer`` in pre-order (a layer, then its own sublayers, in the order
    they were assigned). Keras 3 has no public recursive layer list; ``_layers`` is the tracked
    list it builds ``Model.layers`` from."""
    found = []
    for child in getattr(layer, "_layers", []):
        found.append(child)
        found.extend(_layers_depth_first(child))
    return found


def first_conv_kernel(encoder: keras.layers.Layer) -> tuple[str, np.ndarray]:
    """The first ``Conv2D``/``Conv3D`` of ``encoder`` (depth-first, in assignment order, which is
    the stem for every backbone of the zoo): its name and kernel as a numpy array
    (``[kh, kw, in, out]`` or ``[kt, kh, kw, in, out]``)."""
    for layer in _layers_depth_first(encoder):
        if isinstance(layer, keras.layers.Conv2D | keras.layers.Conv3D) and not isinstance(
                layer, keras.layers.Conv2DTranspose | keras.layers.Conv3DTranspose):
            if not layer.built:
                raise ConfigError(f"layer {layer.name} is not built: call the encoder once")
            return layer.name, np.asarray(layer.kernel)
    raise ConfigError(f"{encoder.name} has no Conv2D or Conv3D layer to show kernels of")


def kernel_tiles(kernel: np.ndarray) -> np.ndarray:
    """Kernel ``[kh, kw, in, out]`` (or 3-D ``[kt, kh, kw, in, out]``: the middle time slice
    ``kt // 2``) → float tiles in [0, 1], one per output channel.

    Each kernel (all its input channels together, so the colour balance within a kernel
    survives) is min-max normalised on its own, mapping its smallest weight to 0 and its
    largest to 1 (a constant kernel becomes 0.5 gray): the per-kernel scaling of Krizhevsky
    et al.'s and the survey's kernel figures, which shows each kernel's pattern regardless of its
    norm. 3-input-channel kernels are RGB tiles ``[out, kh, kw, 3]``; 1-channel ones gray;
    any other count (e.g. an ab-channel encoder) gives one gray tile per (kernel, input channel),
    kernel-major: ``[out · in, kh, kw, 3]`` (:func:`kernel_grid` keeps each kernel's channels
    side by side in one row).
    """
    kernel = np.asarray(kernel, np.float64)
    if kernel.ndim == 5:
        kernel = kernel[kernel.shape[0] // 2]
    if kernel.ndim != 4:
        raise ValueError(f"expected a conv kernel [kh, kw, in, out], got shape {kernel.shape}")
    tiles = kernel.transpose(3, 0, 1, 2)  # [out, kh, kw, in]
    low = tiles.min(axis=(1, 2, 3), keepdims=True)
    span = tiles.max(axis=(1, 2, 3), keepdims=True) - low
    tiles = np.where(span > 0, (tiles - low) / np.where(span > 0, span, 1.0), 0.5)
    channels = tiles.shape[-1]
    if channels == 3:
        return tiles.astype(np.float32)
    if channels != 1:
        # [out, kh, kw, in] → [out, in, kh, kw, 1] → one gray tile per input channel.
        tiles = tiles.transpose(0, 3, 1, 2)[..., None].reshape(-1, *tiles.shape[1:3], 1)
    return np.repeat(tiles, 3, axis=-1).astype(np.float32)


def upsample(images: np.ndarray, factor: int) -> np.ndarray:
    """``[n, h, w, c]`` → ``[n, h·factor, w·factor, c]`` by pixel repetition (nearest)."""
    return np.repeat(np.repeat(images, factor, axis=1), factor, axis=2)


def kernel_grid(encoder: keras.layers.Layer, scale: int | None = None,
                padding: int = GRID_PADDING) -> np.ndarray:
    """The first convolution's kernels as a grid of tiles (the survey's §3.3.5 kernel
    visualisation, after Krizhevsky et al. 2012, Fig. 3).

    Tiles come from :func:`kernel_tiles` (per-kernel min-max, 3-D kernels' middle time slice),
    are upsampled by ``scale`` (default: the smallest integer making a tile at least
    ``MIN_KERNEL_PIXELS`` wide) and laid out by :func:`~selfsup.tasks.pictures.image_grid`
    (``ceil(sqrt(n))`` columns, ``padding`` px of white). For ``n`` kernels of width ``k`` and a
    factor ``s`` the picture is ``rows·(k·s + p) + p`` by ``cols·(k·s + p) + p``, ``cols =
    ceil(sqrt(n))``, ``rows = ceil(n / cols)``; gray tiles of an ``in``-channel kernel (``in``
    not 1 or 3) take ``in`` adjacent columns each: ``cols = in · ceil(sqrt(n))``.
    """
    _, kernel = first_conv_kernel(encoder)
    tiles = kernel_tiles(kernel)
    if scale is None:
        scale = math.ceil(MIN_KERNEL_PIXELS / max(tiles.shape[1:3]))
    if scale < 1:
        raise ConfigError(f"kernel scale must be a positive integer, got {scale}")
    kernels = kernel.shape[-1]
    columns = len(tiles) // kernels * math.ceil(math.sqrt(kernels))
    return image_grid(upsample(tiles, scale), columns=columns, padding=padding)


# --- nearest neighbours ------------------------------------------------------------------------

def l2_normalize(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    features = np.asarray(features, np.float64)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.where(norms > 0, norms, 1.0)


def nearest_neighbours(query_features: np.ndarray, bank_features: np.ndarray, k: int,
                       query_bank_indices: Sequence[int] | np.ndarray | None = None,
                       ) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` bank rows most cosine-similar to each query: (int64 indices ``[q, k]``,
    similarities ``[q, k]``), best first; ties go to the lower bank index.

    ``query_bank_indices[i]`` is the bank row holding query ``i`` itself (−1 when it is not in
    the bank): that row is excluded from query ``i``'s ranking, so a query never retrieves
    itself. Pixel-identical copies at other bank rows are kept (they are real neighbours).
    """
    queries, bank = l2_normalize(query_features), l2_normalize(bank_features)
    if queries.ndim != 2 or bank.ndim != 2 or queries.shape[1] != bank.shape[1]:
        raise ValueError(f"need features [q, d] and [b, d], got {queries.shape} and "
                         f"{bank.shape}")
    similarity = queries @ bank.T
    available = bank.shape[0]
    if query_bank_indices is not None:
        own = np.asarray(query_bank_indices, np.int64)
        if own.shape != (len(queries),) or own.max(initial=-1) >= available:
            raise ValueError(f"need one bank index (or -1) per query, got {own}")
        rows = np.flatnonzero(own >= 0)
        similarity[rows, own[rows]] = -np.inf
        available -= int(len(rows) > 0)
    if not 1 <= k <= available:
        raise ConfigError(f"k must lie in [1, {available}] for a bank of {bank.shape[0]}, "
                          f"got {k}")
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(similarity, order, axis=1)


def _as_rgb(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected images [n, h, w, 1 or 3], got shape {images.shape}")
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def _draw_borders(images: np.ndarray, colours: np.ndarray, width: int) -> np.ndarray:
    """Paints a ``width``-px frame of colour ``colours[i]`` (RGB) inside image ``i``."""
    _, height, image_width, _ = images.shape
    rows, cols = np.arange(height)[:, None], np.arange(image_width)[None, :]
    frame = ((rows < width) | (rows >= height - width)
             | (cols < width) | (cols >= image_width - width))
    return np.where(frame[None, :, :, None], np.asarray(colours)[:, None, None, :], images)


def nearest_neighbour_grid(query_images: np.ndarray, bank_images: np.ndarray,
                           query_features: np.ndarray, bank_features: np.ndarray, k: int = 8,
                           *, query_labels: np.ndarray | None = None,
                           bank_labels: np.ndarray | None = None,
                           query_bank_indices: Sequence[int] | np.ndarray | None = None,
                           scale: int = 1, border: int = 2,
                           padding: int = GRID_PADDING) -> np.ndarray:
    """Nearest-neighbour retrieval (survey §3.3.5): one row per query, the query first, then
    its ``k`` nearest bank images by cosine similarity of L2-normalised features, best first
    (see :func:`nearest_neighbours`, which also explains ``query_bank_indices``).

    Images are float ``[n, h, w, 1 or 3]`` in [0, 1], upsampled ×``scale`` (nearest). With labels,
    each neighbour gets a ``border``-px frame drawn inside its cell: green when it shares the
    query's class, red otherwise. The picture is ``q·(h·s + p) + p`` by ``(k+1)·(w·s + p) + p``.
    """
    queries, bank = _as_rgb(query_images), _as_rgb(bank_images)
    if len(queries) != len(query_features) or len(bank) != len(bank_features):
        raise ValueError("need one feature row per image")
    if (query_labels is None) != (bank_labels is None):
        raise ValueError("give both query_labels and bank_labels, or neither")
    if scale < 1:
        raise ConfigError(f"scale must be a positive integer, got {scale}")
    indices, _ = nearest_neighbours(query_features, bank_features, k, query_bank_indices)
    # The neighbours' cells are gathered (q·k images), then upsampled: the bank is never copied.
    neighbours = upsample(bank[indices.reshape(-1)], scale)  # [q·k, h·s, w·s, 3]
    if query_labels is not None:
        same = np.asarray(bank_labels)[indices] == np.asarray(query_labels)[:, None]
        colours = np.where(same.reshape(-1, 1), SAME_CLASS_COLOUR, OTHER_CLASS_COLOUR)
        neighbours = _draw_borders(neighbours, colours, border)
    cells = np.concatenate([upsample(queries, scale)[:, None],
                            neighbours.reshape(len(queries), k, *neighbours.shape[1:])], axis=1)
    return image_grid(cells.reshape(-1, *cells.shape[2:]), columns=k + 1, padding=padding)


# --- feature maps ------------------------------------------------------------------------------

def feature_map_grid(encoder: keras.Model | Callable, images: np.ndarray,
                     endpoints: Sequence[str] | None = None, channels: int = 8,
                     scale: int = 1, padding: int = GRID_PADDING) -> np.ndarray:
    """Feature maps of a few images (survey §3.3.5): one row per (image, endpoint), image-major,
    the input image first, then the endpoint's ``channels`` channels with the highest mean
    activation on that image (strongest first).

    ``encoder(images, training=False)`` returns a dict of endpoints; ``endpoints`` (default:
    every 4-D ``[b, h, w, c]`` endpoint, in encoder order) picks some. Each map is min-max
    normalised on its own (a constant map shows as the colormap's low end), resized (nearest)
    to the image size and coloured with ``FEATURE_MAP_COLORMAP``; an endpoint with fewer than
    ``channels`` channels leaves the rest of its row white. Cells are upsampled ×``scale``. The
    picture is ``n·E·(h·s + p) + p`` by ``(channels + 1)·(w·s + p) + p``.
    """
    from matplotlib import colormaps

    images = _as_rgb(images)
    if channels < 1 or scale < 1:
        raise ConfigError(f"channels and scale must be positive, got {channels} and {scale}")
    outputs = encoder(tf.constant(images), training=False)
    maps = [name for name, value in outputs.items() if len(value.shape) == 4]
    if endpoints is None:
        endpoints = maps
    unknown = [name for name in endpoints if name not in maps]
    if unknown or not endpoints:
        raise ConfigError(f"feature maps need 4-D endpoints; got {', '.join(unknown) or 'none'}"
                          f", valid: {', '.join(maps) or 'none'}")
    count, height, width, _ = images.shape
    colormap = colormaps[FEATURE_MAP_COLORMAP]
    rows = []
    for name in endpoints:  # one vectorised pass per endpoint
        value = np.asarray(outputs[name], np.float32)  # [n, fh, fw, c]
        shown = min(channels, value.shape[-1])
        strongest = np.argsort(-value.mean(axis=(1, 2)), axis=1, kind="stable")[:, :shown]
        chosen = np.take_along_axis(value, strongest[:, None, None, :], axis=3)
        low = chosen.min(axis=(1, 2), keepdims=True)
        span = chosen.max(axis=(1, 2), keepdims=True) - low
        chosen = np.where(span > 0, (chosen - low) / np.where(span > 0, span, 1.0), 0.0)
        resized = tf.image.resize(chosen, [height, width], method="nearest").numpy()
        coloured = colormap(resized.transpose(0, 3, 1, 2))[..., :3]  # [n, shown, h, w, 3]
        blank = np.ones((count, channels - shown, height, width, 3), np.float32)
        rows.append(np.concatenate([images[:, None], coloured, blank], axis=1))
    cells = np.stack(rows, axis=1)  # [n, endpoints, channels + 1, h, w, 3]
    return image_grid(upsample(cells.reshape(-1, height, width, 3), scale),
                      columns=channels + 1, padding=padding)


# --- plots -------------------------------------------------------------------------------------

def _figure(size: tuple[int, int]):
    """A matplotlib Figure of ``size`` = (width, height) pixels on its own Agg canvas (no
    display, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(size[0] / PLOT_DPI, size[1] / PLOT_DPI), dpi=PLOT_DPI)
    FigureCanvasAgg(figure)
    return figure


def _render(figure) -> np.ndarray:
    """The figure's pixels as uint8 RGB ``[height, width, 3]``."""
    figure.canvas.draw()
    return np.array(figure.canvas.buffer_rgba())[..., :3]


def _class_colours(count: int) -> np.ndarray:
    """``count`` distinct RGB colours: tab10 / tab20 for up to 10 / 20 classes, else turbo."""
    from matplotlib import colormaps

    if count <= 10:
        return np.asarray(colormaps["tab10"].colors)[:count]
    if count <= 20:
        return np.asarray(colormaps["tab20"].colors)[:count]
    return colormaps["turbo"](np.linspace(0.0, 1.0, count))[:, :3]


def embed_2d(features: np.ndarray, seed: int = 0, method: str = "tsne") -> np.ndarray:
    """``[n, d]`` features → ``[n, 2]`` coordinates.

    ``tsne``: scikit-learn's t-SNE (van der Maaten & Hinton 2008), seeded, PCA-initialised,
    perplexity ``min(30, (n − 1) / 3)`` (scikit-learn needs it below n; a third keeps the
    neighbourhoods meaningful for small n); features with d > 50 are first reduced to 50 PCA
    dimensions (``TSNE_PCA_DIMS``). ``pca``: the first two principal components.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    if method not in EMBEDDING_METHODS:
        raise ConfigError(f"embedding method must be one of {', '.join(EMBEDDING_METHODS)}, "
                          f"got {method!r}")
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or len(features) < 4:
        raise ConfigError(f"an embedding needs at least 4 feature rows [n, d], got shape "
                          f"{features.shape}")
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(features)
    if features.shape[1] > TSNE_PCA_DIMS:
        dims = min(TSNE_PCA_DIMS, len(features))
        features = PCA(n_components=dims, random_state=seed).fit_transform(features)
    perplexity = min(TSNE_PERPLEXITY, (len(features) - 1) / 3)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                random_state=seed)
    with threadpool_limits(limits=TSNE_OPENMP_THREADS, user_api="openmp"):
        return tsne.fit_transform(features)


def embedding_plot(features: np.ndarray, labels: np.ndarray,
                   class_names: Sequence[str] | None = None, seed: int = 0,
                   method: str = "tsne", title: str | None = None,
                   size: tuple[int, int] = EMBEDDING_PLOT_SIZE) -> np.ndarray:
    """A 2-D embedding of features (:func:`embed_2d`) drawn as a scatter, one colour per class,
    with a legend (``class_names[label]`` or the label number); uint8 RGB of ``size`` = (width,
    height) pixels, default 800 × 800 (8 × 8 inches at ``PLOT_DPI``)."""
    labels = np.asarray(labels)
    if labels.shape != (len(features),):
        raise ValueError(f"need one label per feature row, got {labels.shape} for "
                         f"{len(features)} rows")
    points = embed_2d(features, seed, method)
    classes = np.unique(labels)
    colours = _class_colours(len(classes))
    figure = _figure(size)
    axes = figure.add_subplot()
    for colour, label in zip(colours, classes, strict=True):  # one scatter call per class
        name = ("unlabelled" if label < 0 else class_names[label] if class_names is not None
                else str(label))
        chosen = labels == label
        axes.scatter(points[chosen, 0], points[chosen, 1], s=12, color=colour, label=name,
                     alpha=0.8, linewidths=0)
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_title(title or f"{METHOD_TITLES[method]} of {len(labels)} test features")
    axes.legend(loc="best", fontsize="small", markerscale=1.5, framealpha=0.8)
    figure.tight_layout()
    return _render(figure)


def probe_curve_plot(curves: Mapping[str, Mapping[str, float]],
                     title: str = "Linear probe accuracy per layer",
                     size: tuple[int, int] = PROBE_PLOT_SIZE) -> np.ndarray:
    """Per-layer probe curves (the survey's Table-4 view as a plot): one line with markers per
    column (e.g. ``pretrained``, ``random init``, ``supervised``); x = endpoints in encoder order
    (the order of first appearance over the columns; a column missing an endpoint has a gap),
    y = top-1 %. uint8 RGB of ``size`` = (width, height) pixels, default 900 × 600."""
    if not curves or not any(curves.values()):
        raise ConfigError("probe_curve_plot needs at least one column with one endpoint")
    endpoints = list(dict.fromkeys(name for curve in curves.values() for name in curve))
    figure = _figure(size)
    axes = figure.add_subplot()
    positions = np.arange(len(endpoints))
    for column, curve in curves.items():
        values = [curve.get(name, np.nan) for name in endpoints]
        axes.plot(positions, values, marker="o", label=column)
    axes.set_xticks(positions, endpoints, rotation=30 if len(endpoints) > 6 else 0)
    axes.set_xlabel("endpoint (input → output)")
    axes.set_ylabel("top-1 (%)")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best")
    figure.tight_layout()
    return _render(figure)


# --- writing -----------------------------------------------------------------------------------

def write_pictures(out_dir: str | Path, pictures: Mapping[str, np.ndarray],
                   summary_dir: str | Path | None = None, step: int = 0) -> dict[str, Path]:
    """Writes each picture as ``<out_dir>/<name>.png`` (atomically) and, with ``summary_dir``,
    as a TensorBoard image summary tagged ``name`` at ``step``. Returns name → PNG path."""
    for name, image in pictures.items():
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise ConfigError(f"picture name {name!r} must be a plain file name")
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"picture {name!r} must be uint8 [h, w, 3], got {image.dtype} "
                             f"{image.shape}")
    paths = {name: write_png(Path(out_dir) / f"{name}.png", image)
             for name, image in pictures.items()}
    if summary_dir is not None:
        writer = tf.summary.create_file_writer(str(summary_dir))
        with writer.as_default():
            for name, image in pictures.items():
                tf.summary.image(name, image[None], step=step)
        writer.close()
    return paths


# --- the driver --------------------------------------------------------------------------------

# Small images are shown enlarged (nearest) to at least this many pixels per cell: Fashion-MNIST
# and CIFAR ×2.
MIN_CELL_PIXELS = 56


def _examples_at(raw: tf.data.Dataset, total: int, indices: np.ndarray) -> tf.data.Dataset:
    """``(float RGB image, label)`` of the ``total``-example raw uint8 dataset at sorted
    ``indices``; only the chosen images are converted to float."""
    return select_examples(raw, total, indices).map(
        lambda image, label: (to_float_rgb(image), label), num_parallel_calls=tf.data.AUTOTUNE)


def _images_at(raw: tf.data.Dataset, total: int, indices: np.ndarray) -> np.ndarray:
    """The float RGB images at sorted ``indices``, stacked ``[len(indices), s, s, 3]``."""
    chosen = _examples_at(raw, total, indices).map(lambda image, label: image)
    return np.concatenate([batch.numpy() for batch in chosen.batch(256)])


def kernel_picture(kernel_source: object, log: Callable[[str], None] = logging.info
                   ) -> np.ndarray | None:
    """:func:`kernel_grid` of ``kernel_source`` when it is a Keras layer with a convolution;
    else None and a log line saying why (e.g. a SavedModel's encoder has no Keras layers)."""
    if not isinstance(kernel_source, keras.layers.Layer):
        log(f"pictures: {KERNELS} skipped: the encoder is a {type(kernel_source).__name__}, "
            f"not a Keras model (e.g. a SavedModel); pass kernels_from to draw them")
        return None
    try:
        name = first_conv_kernel(kernel_source)[0]
        grid = kernel_grid(kernel_source)
    except ConfigError as error:
        log(f"pictures: {KERNELS} skipped: {error}")
        return None
    log(f"pictures: {KERNELS} of {name}")
    return grid


def _feature_endpoint(names: Sequence[str], requested: str | None) -> str:
    """``requested``, else the ``pool`` endpoint (also ``<column>/pool``), else the last."""
    if requested is not None:
        if requested not in names:
            raise ConfigError(f"unknown feature endpoint {requested!r}; valid: "
                              f"{', '.join(names)}")
        return requested
    pools = [name for name in names if name == "pool" or name.endswith("/pool")]
    return pools[0] if pools else names[-1]


def make_pictures(encoder: keras.Model | Callable, source: ImageSource, *, image_size: int,
                  kernels_from: keras.Model | None = None,
                  probe_curves: Mapping[str, Mapping[str, float]] | None = None,
                  queries: int = 8, neighbours: int = 8, bank_examples: int = 2000,
                  embedding_examples: int = 500, feature_map_images: int = 3,
                  feature_map_channels: int = 8, feature_endpoint: str | None = None,
                  embedding_method: str = "tsne", seed: int = 0, batch_size: int = 256,
                  log: Callable[[str], None] = logging.info) -> dict[str, np.ndarray]:
    """Every picture of this module for the frozen ``encoder`` on ``source``, by name.

    ``encoder(images, training=False)`` maps float RGB ``[b, s, s, 3]`` in [0, 1] to a dict of
    endpoints. Examples:
      * test: a seeded subset (seed + 1, as the linear probe's) of ``max(embedding_examples,
        queries)`` images of the eval split; ``queries`` of them (seeded) are the retrieval
        queries, the first ``feature_map_images`` queries also show their feature maps;
      * bank: a seeded subset (seed) of ``bank_examples`` train images. Queries come from
        another split, so a query is never its own neighbour;
      * features for retrieval and the embedding: ``feature_endpoint``, default the ``pool``
        endpoint (else the last), via :func:`~selfsup.tasks.features.extract_features` (a 4-D
        endpoint is pooled to 3 × 3 and flattened there).
    Pictures: ``kernels`` (from ``kernels_from``, else from ``encoder`` when it is a Keras
    layer; skipped with a log line for e.g. a SavedModel), ``feature_maps``,
    ``nearest_neighbours`` (green / red borders: same / other class), ``embedding`` and, when
    ``probe_curves`` (column → endpoint → top-1 %) is given, ``probe_curve``. Images smaller
    than ``MIN_CELL_PIXELS`` are enlarged by an integer factor in the grids.
    """
    for name, value in (("queries", queries), ("neighbours", neighbours),
                        ("bank_examples", bank_examples),
                        ("feature_map_images", feature_map_images),
                        ("feature_map_channels", feature_map_channels)):
        if value < 1:
            raise ConfigError(f"{name} must be positive, got {value}")
    if feature_map_images > queries:
        raise ConfigError(f"feature_map_images ({feature_map_images}) must not exceed queries "
                          f"({queries}): the feature maps are drawn for the first queries")
    if neighbours >= bank_examples:
        raise ConfigError(f"neighbours ({neighbours}) must be below bank_examples "
                          f"({bank_examples})")
    if embedding_method not in EMBEDDING_METHODS:
        raise ConfigError(f"embedding method must be one of {', '.join(EMBEDDING_METHODS)}, "
                          f"got {embedding_method!r}")
    labelled = source.num_classes is not None
    class_names = source.builder.info.features[source.label_key].names if labelled else None
    scale = max(1, math.ceil(MIN_CELL_PIXELS / image_size))
    pictures: dict[str, np.ndarray] = {}

    kernels = kernel_picture(kernels_from if kernels_from is not None else encoder, log)
    if kernels is not None:
        pictures[KERNELS] = kernels

    test_split = source.eval_split
    source.check_split(test_split)
    test_total = source.num_examples(test_split)
    if queries > test_total:
        raise ConfigError(f"queries ({queries}) exceed the {test_total} {test_split} images")
    test_count = min(max(embedding_examples, queries), test_total)
    test_indices = seeded_subset(test_total, test_count, seed + 1)
    test_indices = np.arange(test_total) if test_indices is None else test_indices
    rng = np.random.default_rng(seed)
    query_rows = np.sort(rng.choice(len(test_indices), size=queries, replace=False))
    # One uint8 pipeline per split, read twice: its in-memory cache serves the second pass.
    test_all = raw_image_label_dataset(source, test_split, image_size)
    query_images = _images_at(test_all, test_total, test_indices[query_rows])

    start = time.perf_counter()
    pictures[FEATURE_MAPS] = feature_map_grid(encoder, query_images[:feature_map_images],
                                              channels=feature_map_channels, scale=scale)
    endpoint = _feature_endpoint(list(encoder(tf.constant(query_images[:1]),
                                              training=False)), feature_endpoint)
    log(f"pictures: {FEATURE_MAPS} of {feature_map_images} images "
        f"({time.perf_counter() - start:.1f} s); retrieval and embedding use {endpoint}")

    def endpoint_only(images: tf.Tensor, training: bool = False) -> dict[str, tf.Tensor]:
        return {endpoint: encoder(images, training=training)[endpoint]}

    test_dataset = _examples_at(test_all, test_total, test_indices)
    test_features, test_labels = extract_features(
        endpoint_only, test_dataset, batch_size=batch_size, num_examples=len(test_indices),
        log=log, description=f"pictures: test features ({test_split})")
    source.check_split("train")
    bank_total = source.num_examples("train")
    bank_indices = seeded_subset(bank_total, bank_examples, seed)
    bank_indices = np.arange(bank_total) if bank_indices is None else bank_indices
    bank_all = raw_image_label_dataset(source, "train", image_size)
    bank_dataset = _examples_at(bank_all, bank_total, bank_indices)
    bank_features, bank_labels = extract_features(
        endpoint_only, bank_dataset, batch_size=batch_size, num_examples=len(bank_indices),
        log=log, description="pictures: bank features (train)")
    test_x, bank_x = test_features[endpoint], bank_features[endpoint]

    # Only the retrieved bank images are decoded again. Restricting the bank to the rows that
    # were retrieved (kept in bank order) leaves every query's top-k and its ties unchanged.
    found, _ = nearest_neighbours(test_x[query_rows], bank_x, neighbours)
    kept = np.unique(found)
    pictures[NEIGHBOURS] = nearest_neighbour_grid(
        query_images, _images_at(bank_all, bank_total, bank_indices[kept]),
        test_x[query_rows], bank_x[kept], neighbours,
        query_labels=test_labels[query_rows] if labelled else None,
        bank_labels=bank_labels[kept] if labelled else None, scale=scale)
    if labelled:
        same = float(np.mean(bank_labels[found] == test_labels[query_rows][:, None]))
        log(f"pictures: {NEIGHBOURS}: {queries} queries × {neighbours} from {len(bank_x)} "
            f"train images, {100 * same:.1f}% of the neighbours share the query's class")

    start = time.perf_counter()
    pictures[EMBEDDING] = embedding_plot(
        test_x, test_labels, class_names, seed=seed, method=embedding_method,
        title=f"{METHOD_TITLES[embedding_method]} of {len(test_x)} test images ({endpoint})")
    log(f"pictures: {EMBEDDING} ({embedding_method}, {time.perf_counter() - start:.1f} s)")
    if probe_curves:
        pictures[PROBE_CURVE] = probe_curve_plot(probe_curves)
    return pictures
