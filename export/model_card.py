"""Model cards written next to an export: ``assets.extra/model_card.json`` and ``model_card.md``.

The JSON card is for programs (what the model is, how to feed it, what it scored); the markdown
card follows the tfhub.dev documentation format, whose ``<!-- key: value -->`` lines carry the
metadata (format, task, fine-tunable, dataset, network-architecture).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

CARD_DIR = "assets.extra"
JSON_NAME = "model_card.json"
MARKDOWN_NAME = "model_card.md"
HUB_TASK = "image-feature-vector"
HUB_VIDEO_TASK = "video-feature-vector"
# Not one of tfhub.dev's task names (it has none for point clouds): named like its siblings.
HUB_POINT_TASK = "point-cloud-feature-vector"
IMAGE_INPUT = {
    "hub_call": "float32 [batch, height, width, 3], RGB in [0, 1], any height/width",
    "serving_default": "uint8 [batch, height, width, 3] 'images', RGB in [0, 255]",
    "serving_bytes": "string [batch] 'image_bytes', encoded PNG/JPEG/GIF/BMP",
    "representation": "uint8 [batch, height, width, 3] 'images', RGB in [0, 255]",
}
VIDEO_INPUT = {
    "hub_call": "float32 [batch, time, height, width, 3], RGB clips in [0, 1], any length/size",
    "serving_default": "uint8 [batch, time, height, width, 3] 'frames', RGB in [0, 255]",
    "representation": "uint8 [batch, time, height, width, 3] 'frames', RGB in [0, 255]",
}
POINT_INPUT = {
    "hub_call": "float32 [batch, points, 3] xyz, any number of points",
    "serving_default": "float32 [batch, points, 3] 'points', xyz",
    "representation": "float32 [batch, points, 3] 'points', xyz",
}


def point_preparation(dataset: str | None) -> str:
    """How the training clouds of ``dataset`` were prepared: the contract an export's inputs
    should follow (:mod:`selfsup.datasets.point_clouds`)."""
    from selfsup.datasets.point_clouds import GENERATED_SHAPES, MESH_FOLDER_PREFIX, SCALE_RANGE

    if dataset == GENERATED_SHAPES:
        low, high = SCALE_RANGE
        return (f"generated closed surfaces centred at the origin and fitting the unit ball, "
                f"scaled by a random factor in [{low:g}, {high:g}] and randomly rotated (points "
                "uniform by area; not re-normalised, so the farthest point is at radius "
                f"{low:g} to {high:g}); selfsup.datasets.point_clouds.normalize_to_unit_ball "
                "puts other clouds in that ball")
    if dataset and dataset.startswith(MESH_FOLDER_PREFIX):
        return ("points sampled uniformly by area on each mesh, then centred on their centroid "
                "and scaled so the farthest point is at radius 1 "
                "(selfsup.datasets.point_clouds.normalize_to_unit_ball)")
    return "as the training data was prepared (dataset not recorded)"


def jsonable(value: Any) -> Any:
    """``value`` with tuples as lists and anything JSON cannot hold as its ``str``."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "item"):  # numpy scalars
        return jsonable(value.item())
    return str(value)


def build_model_card(
    model_name: str,
    version: int,
    image_size: tuple[int, int],
    num_features: int,
    metadata: dict[str, Any],
    backbone_config: dict[str, Any] | None = None,
    video: bool = False,
    endpoint_shapes: dict[str, list] | None = None,
    num_points: int | None = None,
) -> dict[str, Any]:
    """The card as a dict: identity, input/output contract, signatures, and ``metadata``
    (``video``: the encoder takes clips; ``num_points`` given: it takes point clouds, built at
    that many points, and ``image_size`` is unused). ``endpoint_shapes`` (name → ``[None,
    ...]`` at the image size, encoder order) documents ``endpoints`` and the
    ``representation`` signature: ``representation`` maps each name to ``[None, channels]``."""
    endpoint_shapes = endpoint_shapes or {}
    known = ("task", "backbone", "dataset", "metrics")
    if num_points is not None:
        hub_task = HUB_POINT_TASK
        model_input = {**POINT_INPUT, "num_points": int(num_points),
                       "preparation": point_preparation(metadata.get("dataset"))}
    else:
        hub_task = HUB_VIDEO_TASK if video else HUB_TASK
        model_input = {**(VIDEO_INPUT if video else IMAGE_INPUT),
                       "image_size": list(image_size), "value_range": [0.0, 1.0]}
    return jsonable({
        "model_name": model_name,
        "version": version,
        "hub_task": hub_task,
        "format": "saved_model_2",
        "fine_tunable": True,
        "pretext_task": metadata.get("task"),
        "backbone": metadata.get("backbone"),
        "dataset": metadata.get("dataset"),
        "metrics": metadata.get("metrics", {}),
        "input": model_input,
        "output": {"name": "features", "dtype": "float32", "shape": [None, num_features]},
        "endpoints": [{"name": name, "shape": list(shape), "representation": [None, shape[-1]]}
                      for name, shape in endpoint_shapes.items()],
        "backbone_config": backbone_config or {},
        "metadata": {k: v for k, v in metadata.items() if k not in known},
    })


def card_markdown(card: dict[str, Any]) -> str:
    """The card rendered as a tfhub.dev-style markdown document."""
    if card["hub_task"] == HUB_POINT_TASK:
        return _point_card_markdown(card)
    lines = [
        f"# Module selfsup/{card['model_name']}/{card['version']}",
        "",
        f"<!-- task: {card['hub_task']} -->",
        f"<!-- format: {card['format']} -->",
        f"<!-- fine-tunable: {str(card['fine_tunable']).lower()} -->",
        f"<!-- network-architecture: {card['backbone']} -->",
        f"<!-- dataset: {card['dataset']} -->",
        "",
        f"{'Video' if card['hub_task'] == HUB_VIDEO_TASK else 'Image'} feature vector from a "
        f"`{card['backbone']}` encoder pretrained with the "
        f"self-supervised `{card['pretext_task']}` task on `{card['dataset']}`.",
        "",
        "## Usage",
        "",
        f"- Hub `__call__(images, training=False)`: {card['input']['hub_call']}; "
        f"returns float32 `[batch, {card['output']['shape'][1]}]`.",
        f"- `serving_default`: {card['input']['serving_default']} → `features`.",
        *([f"- `serving_bytes`: {card['input']['serving_bytes']} → `features`."]
          if "serving_bytes" in card["input"] else []),
        *([f"- `representation`: {card['input']['representation']} → every endpoint "
           "below, global-average-pooled to `[batch, channels]`."]
          if "representation" in card["input"] else []),
        "- `endpoints(images, training=False)`: the Hub `__call__` input → every endpoint "
        "below, unpooled (float32).",
        "- `pooled.<name>(images)` (e.g. `pooled.pool`): the Hub `__call__` input → endpoint "
        "`<name>` below, global-average-pooled (a named sub-object per endpoint).",
        f"- Serving signatures resize to {card['input']['image_size'][0]}×"
        f"{card['input']['image_size'][1]}.",
        "",
        *_endpoint_table(card),
        "## Metrics",
        "",
    ]
    lines += _metrics_lines(card["metrics"] or {})
    return "\n".join(lines) + "\n"


def _point_card_markdown(card: dict[str, Any], asset_path: str | None = None,
                         publisher: str = "selfsup") -> str:
    """The card of a point-cloud encoder as markdown (tfhub.dev-style header); with
    ``asset_path``, the tfhub.dev model doc of its tar.gz (asset-path line, load example)."""
    model_input = card["input"]
    features = card["output"]["shape"][1]
    usage = [] if asset_path is None else [
        "```python", "import numpy as np", "import tensorflow_hub as hub", "",
        f'module = hub.load("{asset_path}")',
        f"features = module(np.random.normal(size=(2, {model_input['num_points']}, 3))"
        f".astype(np.float32))  # [2, {features}]", "```", ""]
    description = [
        f"Point-cloud feature vector from a `{card['backbone']}` encoder pretrained with the "
        f"self-supervised `{card['pretext_task']}` task on `{card['dataset']}`.", ""]
    tags = [f"<!-- task: {card['hub_task']} -->",
            f"<!-- format: {card['format']} -->",
            f"<!-- fine-tunable: {str(card['fine_tunable']).lower()} -->",
            f"<!-- network-architecture: {card['backbone']} -->",
            f"<!-- dataset: {card['dataset']} -->", ""]
    # tfhub.dev's model doc: title, description, then metadata (the card: metadata first).
    head = (tags + description if asset_path is None
            else description + [f"<!-- asset-path: {asset_path} -->", *tags])
    lines = [
        f"# Module {publisher}/{card['model_name']}/{card['version']}",
        "",
        *head,
        "## Input",
        "",
        f"Clouds of xyz points, {model_input['preparation']}. Trained with "
        f"{model_input['num_points']} points per cloud; any number works (the encoder "
        "max-pools over the points), nothing is resized or rescaled by the model.",
        "",
        "## Usage",
        "",
        f"- Hub `__call__(points, training=False)`: {model_input['hub_call']}; "
        f"returns float32 `[batch, {card['output']['shape'][1]}]`.",
        f"- `serving_default`: {model_input['serving_default']} → `features`.",
        f"- `representation`: {model_input['representation']} → every endpoint below, "
        "max-pooled over the points to `[batch, channels]`.",
        "- `endpoints(points, training=False)`: the Hub `__call__` input → every endpoint "
        "below, unpooled (float32).",
        "- `pooled.<name>(points)` (e.g. `pooled.pool`): the Hub `__call__` input → endpoint "
        "`<name>` below, max-pooled over the points (a named sub-object per endpoint).",
        "",
        *usage,
        *_endpoint_table(card),
        "## Metrics",
        "",
    ]
    lines += _metrics_lines(card["metrics"] or {})
    return "\n".join(lines) + "\n"


def _endpoint_table(card: dict[str, Any]) -> list[str]:
    """Markdown lines of the endpoints section (empty when the card lists none)."""
    endpoints = card.get("endpoints") or []
    if not endpoints:
        return []
    points = card["hub_task"] == HUB_POINT_TASK
    if points:
        where = f"any cloud size (built at {card['input']['num_points']} points)"
    else:
        height, width = card["input"]["image_size"]
        where = f"{height}×{width} inputs"
    lines = ["## Endpoints", "",
             f"In encoder order; `endpoints` shapes for {where}.", "",
             "| name | `endpoints` shape | `representation` shape |", "|---|---|---|"]
    second = "points" if points else "time"
    lines += [f"| {e['name']} | {_shape(e['shape'], second)} | "
              f"{_shape(e['representation'], second)} |" for e in endpoints]
    return [*lines, ""]


def _shape(shape: list, second: str = "time") -> str:
    """``[None, None, 7, 7, 64]`` as ``[batch, time, 7, 7, 64]`` (only clips and point clouds
    have a second unknown dimension: ``second`` names it)."""
    names = ("batch", second)
    return "[" + ", ".join(names[min(i, 1)] if d is None else str(d)
                           for i, d in enumerate(shape)) + "]"


def write_model_card(version_dir: str | pathlib.Path, card: dict[str, Any]) -> pathlib.Path:
    """Writes the JSON and markdown cards under ``assets.extra/``; returns the JSON path."""
    card_dir = pathlib.Path(version_dir) / CARD_DIR
    card_dir.mkdir(parents=True, exist_ok=True)
    json_path = card_dir / JSON_NAME
    json_path.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    (card_dir / MARKDOWN_NAME).write_text(card_markdown(card))
    return json_path


def hub_tag(value: Any) -> str:
    """A metadata value as a tfhub.dev tag: lower case, ``_`` and spaces as ``-``."""
    return "-".join(str(value).lower().replace("_", " ").split())


def hub_model_doc(card: dict[str, Any], asset_path: str, publisher: str = "selfsup") -> str:
    """The tfhub.dev model documentation of an exported encoder (from its JSON ``card``).

    tfhub.dev's model-doc format: first line ``# Module <publisher>/<name>/<version>``, then a
    one-sentence description, then metadata as ``<!-- key: value -->`` lines (``asset-path``:
    where the tar.gz is hosted, ``task``, ``network-architecture``, ``dataset``, ``format``,
    ``fine-tunable``), then free markdown: overview, inputs, outputs, usage, metrics.
    """
    if card["hub_task"] == HUB_POINT_TASK:
        return _point_card_markdown(card, asset_path, publisher)
    video = card["hub_task"] == HUB_VIDEO_TASK
    height, width = card["input"]["image_size"]
    low, high = card["input"]["value_range"]
    features = card["output"]["shape"][1]
    kind = "Video" if video else "Image"
    shape = "[batch, time, height, width, 3]" if video else "[batch, height, width, 3]"
    example = (f"np.random.rand(2, 8, {height}, {width}, 3)" if video
               else f"np.random.rand(2, {height}, {width}, 3)")
    lines = [
        f"# Module {publisher}/{card['model_name']}/{card['version']}",
        "",
        f"{kind} feature vector from a `{card['backbone']}` encoder pretrained with the "
        f"self-supervised `{card['pretext_task']}` task on `{card['dataset']}`.",
        "",
        f"<!-- asset-path: {asset_path} -->",
        f"<!-- task: {card['hub_task']} -->",
        f"<!-- network-architecture: {hub_tag(card['backbone'])} -->",
        f"<!-- dataset: {hub_tag(card['dataset'])} -->",
        f"<!-- format: {card['format']} -->",
        f"<!-- fine-tunable: {str(card['fine_tunable']).lower()} -->",
        "",
        "## Overview",
        "",
        f"A TF2 SavedModel (reusable SavedModel API) mapping {'clips' if video else 'images'} "
        f"to `[batch, {features}]` float32 feature vectors, the encoder's globally pooled "
        f"output. Trained at {height}×{width} pixels.",
        "",
        "### Input",
        "",
        f"- `__call__(inputs, training=False)`: float32 `{shape}`, RGB, values in "
        f"[{low:g}, {high:g}]; input size {height}×{width} (other sizes work; the encoder "
        "pools globally)" + (", any number of frames" if video else "") + ".",
        f"- `serving_default` signature: {card['input']['serving_default']}, resized to "
        f"{height}×{width}.",
        "",
        "### Output",
        "",
        f"- float32 `[batch, {features}]` (signature output `features`); the `representation` "
        "signature returns every endpoint, globally average-pooled:",
        "",
        *_endpoint_table(card),
        "### Usage",
        "",
        "```python",
        "import numpy as np",
        "import tensorflow_hub as hub",
        "",
        f'module = hub.load("{asset_path}")',
        f"features = module({example}.astype(np.float32))  # [2, {features}]",
        "```",
        "",
        "Fine-tuning: `hub.KerasLayer(handle, trainable=True)` under tf-keras, or "
        "`selfsup.export.HubEncoderLayer(handle, trainable=True)` in Keras 3.",
        "",
        "### Metrics",
        "",
    ]
    lines += _metrics_lines(card.get("metrics") or {})
    return "\n".join(lines) + "\n"


def _metrics_lines(metrics: Any) -> list[str]:
    """A card's metrics as a markdown table ("None recorded." when there are none)."""
    if isinstance(metrics, dict) and metrics:
        return ["| metric | value |", "|---|---|",
                *(f"| {name} | {value} |" for name, value in metrics.items())]
    return ["None recorded." if not metrics else f"{metrics}"]
