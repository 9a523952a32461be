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
) -> dict[str, Any]:
    """The card as a dict: identity, input/output contract, signatures, and ``metadata``
    (``video``: the encoder takes clips). ``endpoint_shapes`` (name → ``[None, ...]`` at the
    image size, encoder order) documents ``endpoints`` and the ``representation`` signature:
    ``representation`` maps each name to ``[None, channels]``."""
    endpoint_shapes = endpoint_shapes or {}
    known = ("task", "backbone", "dataset", "metrics")
    return jsonable({
        "model_name": model_name,
        "version": version,
        "hub_task": HUB_VIDEO_TASK if video else HUB_TASK,
        "format": "saved_model_2",
        "fine_tunable": True,
        "pretext_task": metadata.get("task"),
        "backbone": metadata.get("backbone"),
        "dataset": metadata.get("dataset"),
        "metrics": metadata.get("metrics", {}),
        "input": {
            **(VIDEO_INPUT if video else IMAGE_INPUT),
            "image_size": list(image_size),
            "value_range": [0.0, 1.0],
        },
        "output": {"name": "features", "dtype": "float32", "shape": [None, num_features]},
        "endpoints": [{"name": name, "shape": list(shape), "representation": [None, shape[-1]]}
                      for name, shape in endpoint_shapes.items()],
        "backbone_config": backbone_config or {},
        "metadata": {k: v for k, v in metadata.items() if k not in known},
    })


def card_markdown(card: dict[str, Any]) -> str:
    """The card rendered as a tfhub.dev-style markdown document."""
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


def _endpoint_table(card: dict[str, Any]) -> list[str]:
    """Markdown lines of the endpoints section (empty when the card lists none)."""
    endpoints = card.get("endpoints") or []
    if not endpoints:
        return []
    height, width = card["input"]["image_size"]
    lines = ["## Endpoints", "",
             f"In encoder order; `endpoints` shapes for {height}×{width} inputs.", "",
             "| name | `endpoints` shape | `representation` shape |", "|---|---|---|"]
    lines += [f"| {e['name']} | {_shape(e['shape'])} | {_shape(e['representation'])} |"
              for e in endpoints]
    return [*lines, ""]


def _shape(shape: list) -> str:
    """``[None, None, 7, 7, 64]`` as ``[batch, time, 7, 7, 64]`` (only clips have a second
    unknown dimension)."""
    names = ("batch", "time")
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
