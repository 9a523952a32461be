"""Frozen-feature protocols of ``selfsup-eval``: linear, kNN, SVM and low-shot, per endpoint.

Every protocol reads the same features: each encoder being evaluated (a run's trained and
random-init encoders, or an exported SavedModel) runs once over a seeded subset of the train
split and the eval split (:func:`selfsup.tasks.linear_probe.frozen_features`: maps pooled to
``pool_size × pool_size``, or to about ``feature_dims`` features per layer), then each
endpoint's features go to the protocol's classifier:

* ``linear``: softmax regression on standardised features, L2 strength (and learning rate)
  chosen on a held-out share of the train subset (:mod:`selfsup.tasks.linear_probe`; the
  survey's Table 4);
* ``knn``: temperature-weighted kNN on L2-normalised features (Wu et al. 2018;
  :mod:`selfsup.tasks.knn_probe`);
* ``svm``: linear SVMs with the cost chosen by cross-validation (Goyal et al. 2019's VOC07
  protocol; :mod:`selfsup.tasks.svm_probe`);
* ``lowshot``: k labelled train examples per class, several seeds, mean ± std
  (:mod:`selfsup.tasks.lowshot`).

Results go to ``<out_dir>/<protocol file>`` (``linear_probe.json``, ``knn.json``, ``svm.json``,
``lowshot.json``) with every setting, and print as a table: endpoints × columns.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from selfsup.models.registry import ConfigError
from selfsup.tasks.atomic_files import write_json_atomically

FROZEN_PROTOCOLS = ("linear", "knn", "svm", "lowshot")
RESULTS_FILES = {"linear": "linear_probe.json", "knn": "knn.json", "svm": "svm.json",
                 "lowshot": "lowshot.json"}
COLUMN_LABELS = {"trained": "trained", "random_init": "random init",
                 "saved_model": "saved model"}
LOWSHOT_CLASSIFIERS = ("svm", "linear", "knn")


@dataclasses.dataclass(frozen=True)
class FrozenEvalSettings:
    """Every setting of a frozen-feature evaluation (recorded with its results)."""

    protocol: str = "linear"
    train_examples: int | None = 10_000
    test_examples: int | None = None
    pool_size: int = 3
    feature_dims: int | None = None
    seed: int = 0
    standardize: bool = True
    learning_rates: tuple[float, ...] | None = None  # None: the linear probe's default
    knn_ks: tuple[int, ...] = (20, 200)
    knn_temperature: float = 0.07
    svm_costs: tuple[float, ...] | None = None  # None: the SVM probe's default grid
    svm_folds: int = 3
    lowshot_shots: tuple[int, ...] = (1, 5, 10, 50)
    lowshot_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    lowshot_classifier: str = "svm"

    def __post_init__(self) -> None:
        if self.protocol not in FROZEN_PROTOCOLS:
            raise ConfigError(f"unknown frozen-feature protocol {self.protocol!r}; valid: "
                              f"{', '.join(FROZEN_PROTOCOLS)}")
        for name in ("train_examples", "test_examples", "feature_dims"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be positive, got {value}")
        if self.pool_size < 1:
            raise ConfigError(f"pool_size must be positive, got {self.pool_size}")
        if not self.knn_ks or min(self.knn_ks) < 1:
            raise ConfigError(f"knn k values must be positive, got {self.knn_ks}")
        if self.knn_temperature <= 0:
            raise ConfigError(f"knn temperature must be positive, got {self.knn_temperature}")
        if self.svm_folds < 2:
            raise ConfigError(f"svm folds must be at least 2, got {self.svm_folds}")
        if not self.lowshot_shots or min(self.lowshot_shots) < 1:
            raise ConfigError(f"low-shot k values must be positive, got {self.lowshot_shots}")
        if not self.lowshot_seeds:
            raise ConfigError("low-shot needs at least one seed")
        if self.lowshot_classifier not in LOWSHOT_CLASSIFIERS:
            raise ConfigError(f"unknown low-shot classifier {self.lowshot_classifier!r}; "
                              f"valid: {', '.join(LOWSHOT_CLASSIFIERS)}")
        if self.learning_rates is not None and min(self.learning_rates, default=0) <= 0:
            raise ConfigError(f"learning rates must be positive, got {self.learning_rates}")
        if self.svm_costs is not None and min(self.svm_costs, default=0) <= 0:
            raise ConfigError(f"SVM costs must be positive, got {self.svm_costs}")

    def protocol_settings(self) -> dict[str, Any]:
        """The settings that shape this protocol's numbers (for the results file)."""
        common = {"train_examples": self.train_examples, "test_examples": self.test_examples,
                  "pool_size": self.pool_size, "feature_dims": self.feature_dims,
                  "seed": self.seed}
        if self.protocol == "linear":
            config = self.linear_config()
            return {**common, "standardize": config.standardize, "steps": config.steps,
                    "learning_rates": list(config.learning_rates),
                    "weight_decays": list(config.weight_decays),
                    "validation_fraction": config.validation_fraction}
        if self.protocol == "knn":
            return {**common, "ks": list(self.knn_ks), "temperature": self.knn_temperature}
        if self.protocol == "svm":
            return {**common, "costs": list(self.costs()), "folds": self.svm_folds}
        return {**common, "shots": list(self.lowshot_shots), "seeds": list(self.lowshot_seeds),
                "classifier": self.lowshot_classifier}

    def linear_config(self):
        from selfsup.tasks.linear_probe import LinearClassifierConfig

        overrides: dict[str, Any] = {"standardize": self.standardize}
        if self.learning_rates is not None:
            overrides["learning_rates"] = tuple(self.learning_rates)
        return LinearClassifierConfig(**overrides)

    def costs(self) -> tuple[float, ...]:
        from selfsup.tasks.svm_probe import DEFAULT_COSTS

        return tuple(self.svm_costs) if self.svm_costs is not None else DEFAULT_COSTS


def score_endpoint(settings: FrozenEvalSettings, train_x: np.ndarray, train_y: np.ndarray,
                   test_x: np.ndarray, test_y: np.ndarray, num_classes: int
                   ) -> dict[str, Any]:
    """One endpoint's numbers under ``settings.protocol`` (JSON-ready)."""
    protocol = settings.protocol
    if protocol == "linear":
        from selfsup.tasks.linear_probe import probe_features

        result = probe_features(train_x, train_y, test_x, test_y, num_classes, settings.seed,
                                settings.linear_config())
        validation = result.validation_top1
        return {"top1": round(result.top1, 4), "weight_decay": result.weight_decay,
                "learning_rate": result.learning_rate,
                "validation_top1": None if np.isnan(validation) else round(validation, 4),
                "num_features": result.num_features}
    if protocol == "knn":
        from selfsup.tasks.knn_probe import knn_probe

        top1 = knn_probe(train_x, train_y, test_x, test_y, num_classes, ks=settings.knn_ks,
                         temperature=settings.knn_temperature)
        return {**{f"top1_k{k}": round(value, 4) for k, value in top1.items()},
                "num_features": int(train_x.shape[1])}
    if protocol == "svm":
        from selfsup.tasks.svm_probe import svm_probe

        result = svm_probe(train_x, train_y, test_x, test_y, costs=settings.costs(),
                           folds=settings.svm_folds, seed=settings.seed)
        return {"top1": round(result.top1, 4), "cost": result.cost,
                "cv_top1": {f"{cost:g}": round(value, 4)
                            for cost, value in result.cv_top1.items()},
                "num_features": result.num_features}
    from selfsup.tasks.lowshot import lowshot_probe

    shots = lowshot_probe(train_x, train_y, test_x, test_y, num_classes,
                          shots=settings.lowshot_shots, seeds=settings.lowshot_seeds,
                          classifier=settings.lowshot_classifier)
    return {**{f"k{k}": {"mean": round(result.mean, 4), "std": round(result.std, 4),
                         "per_seed": [round(value, 4) for value in result.per_seed]}
               for k, result in shots.items()},
            "num_features": int(train_x.shape[1])}


def headline_metrics(settings: FrozenEvalSettings) -> list[tuple[str, str]]:
    """``(key, label)`` of the numbers shown per column in the table."""
    if settings.protocol == "knn":
        return [(f"top1_k{k}", f"k={k}") for k in settings.knn_ks]
    if settings.protocol == "lowshot":
        return [(f"k{k}", f"{k}-shot") for k in settings.lowshot_shots]
    return [("top1", "top-1")]


def _headline_value(entry: dict[str, Any], key: str) -> float:
    value = entry[key]
    return value["mean"] if isinstance(value, Mapping) else value


def evaluate_frozen(encoders: Mapping[str, Callable], settings: FrozenEvalSettings, *,
                    dataset: str, image_size: int | tuple[int, int] | None,
                    data_dir: str | None, out_dir: str | Path,
                    description: dict[str, Any] | None = None,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs ``settings.protocol`` on every endpoint of every encoder (``column → encoder``);
    writes ``<out_dir>/<protocol file>`` and returns the results.

    The results hold ``protocol`` (name, dataset, eval split and every setting), ``columns``,
    ``endpoints`` (encoder order), per column endpoint → numbers (see :func:`score_endpoint`),
    ``best``: column → the endpoint with the best first headline number, and ``description``.
    """
    from selfsup.datasets import open_source
    from selfsup.tasks.linear_probe import frozen_features

    start = time.perf_counter()
    source = open_source(dataset, data_dir)
    columns = list(encoders)

    def all_encoders(images, training=False):
        # One pass over the data feeds every encoder (the data reading is shared).
        return {f"{column}/{name}": value for column, encoder in encoders.items()
                for name, value in encoder(images, training=training).items()}

    log(f"-- {settings.protocol}: features of {', '.join(columns)} on {dataset}")
    features = frozen_features(
        all_encoders, source, train_examples=settings.train_examples,
        test_examples=settings.test_examples, image_size=image_size, seed=settings.seed,
        pool_size=settings.pool_size, feature_dims=settings.feature_dims, log=log)
    results: dict[str, Any] = {
        "protocol": {"name": settings.protocol, "dataset": dataset, "train_split": "train",
                     "eval_split": source.eval_split, "image_size": image_size,
                     **settings.protocol_settings()},
        "columns": columns, **(description or {}),
    }
    return score_features(results, settings, features.train, features.train_labels,
                          features.test, features.test_labels, features.num_classes,
                          extra={name: {"pool_size": features.pool_sizes.get(name)}
                                 for name in features.train},
                          out_dir=out_dir, start=start, log=log)


def score_features(results: dict[str, Any], settings: FrozenEvalSettings,
                   train: Mapping[str, np.ndarray], train_labels: np.ndarray,
                   test: Mapping[str, np.ndarray], test_labels: np.ndarray, num_classes: int,
                   *, out_dir: str | Path, start: float,
                   extra: Mapping[str, Mapping[str, Any]] | None = None,
                   log: Callable[[str], None] = print) -> dict[str, Any]:
    """Scores every ``"<column>/<endpoint>"`` feature array of ``train``/``test`` with the
    protocol's classifier (:func:`score_endpoint`) into ``results[column][endpoint]`` (plus
    ``extra[name]``), adds ``endpoints``, ``best`` and ``seconds`` (since ``start``), writes
    ``<out_dir>/<protocol file>`` and returns ``results``. Shared by the image and the
    point-cloud drivers."""
    columns = results["columns"]
    metrics = headline_metrics(settings)
    for column in columns:
        results[column] = {}
    for name, train_x in train.items():
        column, endpoint = name.split("/", 1)
        began = time.perf_counter()
        entry = score_endpoint(settings, train_x, train_labels, test[name], test_labels,
                               num_classes)
        results[column][endpoint] = {**entry, **((extra or {}).get(name) or {})}
        shown = ", ".join(f"{label} {_headline_value(entry, key):.2f}%"
                          for key, label in metrics)
        log(f"{settings.protocol} {name} ({entry['num_features']} features): {shown} "
            f"({time.perf_counter() - began:.1f} s)")
    results["endpoints"] = list(results[columns[0]])
    key = metrics[0][0]
    results["best"] = {column: max(results[column],
                                   key=lambda name, c=column: _headline_value(
                                       results[c][name], key))
                       for column in columns}
    results["seconds"] = round(time.perf_counter() - start, 1)
    path = Path(out_dir) / RESULTS_FILES[settings.protocol]
    write_json_atomically(path, results)
    log(f"wrote {path} ({results['seconds']:.0f} s)")
    return results


def format_frozen_table(results: dict[str, Any]) -> str:
    """The results as a text table: endpoints × (column, headline number); the best endpoint
    of each column marked ``*``."""
    protocol = results["protocol"]
    name = protocol["name"]
    settings = FrozenEvalSettings(
        protocol=name, knn_ks=tuple(protocol.get("ks", (20, 200))),
        lowshot_shots=tuple(protocol.get("shots", (1, 5, 10, 50))))
    metrics = headline_metrics(settings)
    if protocol.get("feature_dims"):
        pooling = f"about {protocol['feature_dims']} features per layer"
    else:
        pooling = f"features pooled to {protocol['pool_size']}×{protocol['pool_size']}"
    detail = {"linear": "linear probe top-1 (%)",
              "knn": f"weighted kNN top-1 (%), k = "
                     f"{', '.join(str(k) for k in protocol.get('ks', ()))}, "
                     f"τ = {protocol.get('temperature')}",
              "svm": f"linear SVM top-1 (%), cost by {protocol.get('folds')}-fold CV",
              "lowshot": f"low-shot {protocol.get('classifier')} top-1 (%), mean ± std over "
                         f"{len(protocol.get('seeds', ()))} seeds"}[name]
    pool = "train pool" if name == "lowshot" else "train examples"
    header = (f"{detail} on {protocol['dataset']} {protocol['eval_split']}: "
              f"{protocol['train_examples']} {pool}, {pooling}")
    columns = results["columns"]
    width = 16 if name == "lowshot" else 14
    labels = [f"{COLUMN_LABELS.get(column, column)} {label}" if len(metrics) > 1
              else COLUMN_LABELS.get(column, column)
              for column in columns for _, label in metrics]
    lines = [header, f"{'endpoint':<12}{'features':>9}"
             + "".join(f"{label:>{max(width, len(label) + 2)}}" for label in labels)]
    for endpoint in results["endpoints"]:
        row = f"{endpoint:<12}{results[columns[0]][endpoint]['num_features']:>9}"
        index = 0
        for column in columns:
            entry = results[column][endpoint]
            for key, _ in metrics:
                cell_width = max(width, len(labels[index]) + 2) - 1
                index += 1
                value = entry[key]
                text = (f"{value['mean']:.2f}±{value['std']:.2f}" if isinstance(value, Mapping)
                        else f"{value:.2f}")
                mark = "*" if key == metrics[0][0] and results["best"][column] == endpoint else " "
                row += f"{text:>{cell_width}}{mark}"
        lines.append(row)
    lines.append("* best layer of each encoder")
    return "\n".join(lines)


def evaluate_run(model_dir: str | Path, settings: FrozenEvalSettings, *,
                 data_dir: str | None = None, with_random_init: bool = True,
                 dataset: str | None = None,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """``settings.protocol`` on the trained encoder of the run in ``model_dir`` and (with
    ``with_random_init``) a random-init twin seeded with ``settings.seed``, on ``dataset``
    (default: the run's); results in ``<model_dir>/eval/``."""
    from selfsup.tasks.eval_subjects import run_encoders

    encoders, info = run_encoders(model_dir, seed=settings.seed,
                                  with_random_init=with_random_init, dataset=dataset)
    if info.video:
        raise ConfigError(f"{model_dir} is a video run: its frozen-feature protocol is "
                          "--protocol=linear (clip and video top-1, clip retrieval)")
    return evaluate_frozen(
        encoders, settings, dataset=info.dataset, image_size=info.image_size,
        data_dir=data_dir if data_dir is not None else info.data_dir,
        out_dir=Path(model_dir) / "eval", description=info.description(), log=log)


def evaluate_saved_model(handle: str, settings: FrozenEvalSettings, *, output_dir: str | Path,
                         dataset: str | None = None, image_size: int | None = None,
                         data_dir: str | None = None,
                         log: Callable[[str], None] = print) -> dict[str, Any]:
    """``settings.protocol`` on an exported SavedModel (a local dir or an http(s) URL; column
    ``saved_model``), on ``dataset`` at ``image_size`` (default: what the export records);
    results in ``output_dir``."""
    from selfsup.tasks.eval_subjects import SAVED_MODEL, saved_model_encoder

    encoder, info = saved_model_encoder(handle)
    if info.video:
        raise ConfigError(f"{handle} is a video encoder; evaluate its training run "
                          "(--model_dir) for the video protocols")
    dataset, image_size = info.data_settings(dataset, image_size)
    return evaluate_frozen(
        {SAVED_MODEL: encoder}, settings, dataset=dataset, image_size=image_size,
        data_dir=data_dir, out_dir=output_dir, description=info.description(), log=log)
