"""``selfsup-eval --protocol=pictures``: the qualitative views, drawn for each evaluated encoder.

For every column (a run's ``trained`` and ``random_init`` encoders, or a ``saved_model``) the
pictures of :func:`selfsup.tasks.eval_pictures.make_pictures` (first-layer kernels, feature
maps, nearest-neighbour retrieval, a 2D embedding of test features) go to
``<out_dir>/pictures/<column>/<name>.png`` and to TensorBoard (``<out_dir>/tensorboard/<column>``,
one run per column, so TensorBoard shows them side by side under the same tags). The per-layer
probe curve (pretrained, random init and, given a supervised run, supervised) is drawn once
from linear-probe results, ``<out_dir>/pictures/probe_curve.png``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from selfsup.models.registry import ConfigError

PICTURES_DIR, TENSORBOARD_DIR = "pictures", "tensorboard"
CURVE_LABELS = {"trained": "pretrained", "random_init": "random init",
                "saved_model": "saved model", "supervised": "supervised"}


@dataclasses.dataclass(frozen=True)
class PictureSettings:
    """How many images each picture shows (see ``make_pictures``)."""

    queries: int = 8
    neighbours: int = 8
    bank_examples: int = 2000
    embedding_examples: int = 500
    embedding_method: str = "tsne"
    feature_endpoint: str | None = None
    seed: int = 0


def linear_curves(results: Mapping[str, Any], columns: dict[str, str] | None = None
                  ) -> dict[str, dict[str, float]]:
    """Curve label → endpoint → top-1 % from ``linear_probe.json`` results; ``columns`` maps
    the results' columns to curve labels (default: every column, labelled as in the table)."""
    columns = columns or {column: CURVE_LABELS.get(column, column)
                          for column in results.get("columns", ("trained", "random_init"))
                          if column in results}
    return {label: {name: entry["top1"] for name, entry in results[column].items()}
            for column, label in columns.items()}


def read_linear_results(model_dir: str | Path, log: Callable[[str], None],
                        **probe_settings: Any) -> dict[str, Any]:
    """The run's ``eval/linear_probe.json`` if it was made with ``probe_settings`` and has the
    random-init column, else :func:`evaluate_linear` now (which rewrites it)."""
    from selfsup.tasks.linear_eval import RESULTS_FILE, evaluate_linear

    path = Path(model_dir) / "eval" / RESULTS_FILE
    if path.is_file():
        results = json.loads(path.read_text())
        protocol = results.get("protocol", {})
        same = all(protocol.get(name) == value for name, value in probe_settings.items()
                   if name != "data_dir")
        if same and "random_init" in results:
            log(f"probe curve from {path}")
            return results
    log(f"running the linear protocol for the probe curve ({path})")
    return evaluate_linear(model_dir, log=log, **probe_settings)


def evaluate_pictures(encoders: Mapping[str, Callable], settings: PictureSettings, *,
                      dataset: str, image_size: int, data_dir: str | None,
                      out_dir: str | Path, probe_curves: Mapping[str, Mapping[str, float]]
                      | None = None, step: int = 0,
                      log: Callable[[str], None] = print) -> dict[str, Path]:
    """Draws and writes every picture for each encoder (``column → encoder``) and the probe
    curve; returns picture name (``<column>/<name>`` or ``probe_curve``) → PNG path."""
    import keras

    from selfsup.datasets import open_source
    from selfsup.tasks.eval_pictures import make_pictures, probe_curve_plot, write_pictures

    if isinstance(image_size, (tuple, list)):
        if image_size[0] != image_size[1]:
            raise ConfigError(f"pictures need square images, got {image_size}")
        image_size = image_size[0]
    source = open_source(dataset, data_dir)
    out_dir = Path(out_dir)
    written: dict[str, Path] = {}
    for column, encoder in encoders.items():
        log(f"-- pictures of the {CURVE_LABELS.get(column, column)} encoder")
        pictures = make_pictures(
            encoder, source, image_size=image_size,
            kernels_from=encoder if isinstance(encoder, keras.Model) else None,
            queries=settings.queries, neighbours=settings.neighbours,
            bank_examples=settings.bank_examples,
            embedding_examples=settings.embedding_examples,
            embedding_method=settings.embedding_method,
            feature_endpoint=settings.feature_endpoint, seed=settings.seed, log=log)
        paths = write_pictures(out_dir / PICTURES_DIR / column, pictures,
                               summary_dir=out_dir / TENSORBOARD_DIR / column, step=step)
        written.update({f"{column}/{name}": path for name, path in paths.items()})
    if probe_curves:
        paths = write_pictures(out_dir / PICTURES_DIR,
                               {"probe_curve": probe_curve_plot(probe_curves)},
                               summary_dir=out_dir / TENSORBOARD_DIR / "probe", step=step)
        written.update(paths)
    for name, path in written.items():
        log(f"picture {name}: {path}")
    return written
