"""The survey's Table 9 protocol for point-cloud encoders: a linear SVM on frozen features.

After self-supervised training, the encoder's features of labelled shapes train a linear SVM
and its test accuracy measures them (survey §7.3, Table 9; Achlioptas et al. 2018 and FoldingNet
probe their 128-D / 512-D bottlenecks this way on ModelNet40). Features: the ``pool``
endpoint, and each per-point endpoint max-pooled over the points (the encoder's own symmetric
function), so every layer can be compared. The SVM is :func:`selfsup.tasks.svm_probe.svm_probe`
(L2-normalised features, cost by stratified cross-validation, then refitted).

``selfsup-eval`` on a point-cloud run or export (:func:`evaluate_point_run`,
:func:`evaluate_point_saved_model`) runs this protocol (``svm``) — or ``linear``, ``knn`` and
``lowshot`` on the same features — on every endpoint of the trained encoder beside a
random-init twin (or of the export), with the classifiers and the results file and table of
the image protocols (:mod:`selfsup.tasks.frozen_eval`). The data is the run's point dataset
(``shapes`` or ``mesh_folder:<root>``) at the run's ``num_points``: its ``train`` split trains
the classifier, its ``test`` split scores it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from selfsup.datasets.point_clouds import (
    GENERATED_SHAPES,
    PointCloudSource,
    is_point_dataset,
    open_point_source,
)
from selfsup.models import FEATURE_ENDPOINT
from selfsup.models.registry import ConfigError
from selfsup.tasks.svm_probe import DEFAULT_COSTS, SvmResult, svm_probe

FEATURE_BATCH = 64
# selfsup-eval's protocols that read frozen point features (pictures and finetune are for
# image and video encoders).
POINT_PROTOCOLS = ("svm", "linear", "knn", "lowshot")
# Test clouds drawn from an endless generated split when no count is given (our choice: the
# accuracy's binomial standard error is then at most 1.1 points).
GENERATED_TEST_EXAMPLES = 2000
TRAIN_SPLIT, TEST_SPLIT = "train", "test"


def point_features(encoder: Callable[..., dict], points: np.ndarray,
                   endpoints: Sequence[str] | None = (FEATURE_ENDPOINT,),
                   batch_size: int = FEATURE_BATCH) -> dict[str, np.ndarray]:
    """Endpoint → float32 ``[count, channels]`` features of ``points`` ``[count, n, 3]``
    (inference mode; per-point endpoints max-pooled over the points). ``endpoints=None``
    takes every endpoint, in encoder order. ``encoder`` is a Keras point backbone or any
    callable ``encoder(points, training=False) -> {endpoint: tensor}`` (a loaded export)."""
    # One trace for every batch size (the last batch is smaller).
    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.float32)])
    def extract(batch):
        outputs = encoder(batch, training=False)
        names = list(outputs) if endpoints is None else endpoints
        return {name: (outputs[name] if len(outputs[name].shape) == 2
                       else tf.reduce_max(outputs[name], axis=1)) for name in names}

    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(points), batch_size):
        for name, value in extract(tf.constant(points[start:start + batch_size])).items():
            parts.setdefault(name, []).append(value.numpy())
    if not parts:
        raise ValueError("no points to encode")
    return {name: np.concatenate(values) for name, values in parts.items()}


def point_svm_probe(encoder: keras.Model, source: PointCloudSource, *, num_points: int,
                    train_examples: int | None, test_examples: int | None,
                    endpoints: Sequence[str] = (FEATURE_ENDPOINT,),
                    costs: Sequence[float] = DEFAULT_COSTS, seed: int = 0
                    ) -> dict[str, SvmResult]:
    """Endpoint → linear-SVM result on ``source``'s ``train`` / ``test`` shapes (counts: None
    takes a whole finite split)."""
    train_points, train_labels = source.examples("train", train_examples, num_points, seed)
    test_points, test_labels = source.examples("test", test_examples, num_points, seed)
    train = point_features(encoder, train_points, endpoints)
    test = point_features(encoder, test_points, endpoints)
    return {name: svm_probe(train[name], train_labels, test[name], test_labels, costs=costs,
                            seed=seed)
            for name in endpoints}


def check_point_protocol(protocol: str) -> None:
    """ConfigError (one line naming the valid ones) unless point encoders have ``protocol``."""
    if protocol not in POINT_PROTOCOLS:
        raise ConfigError(f"protocol {protocol!r} is not available for point-cloud encoders; "
                          f"valid: {', '.join(POINT_PROTOCOLS)}")


def is_point_run(run_config: Mapping[str, Any]) -> bool:
    """Whether a run's config trained on a point-cloud dataset (``shapes``, ``mesh_folder:``)."""
    return is_point_dataset(str(run_config.get("dataset") or ""))


def point_export_info(handle: str | os.PathLike) -> dict[str, Any] | None:
    """The ``selfsup_encoder.json`` of a point-cloud ``selfsup-export`` at ``handle`` (a dir or
    an http(s) URL), read from its assets without loading the graph; None for other models."""
    from selfsup.export.saved_model import ENCODER_INFO_FILE, MODALITY_POINTS
    from selfsup.tasks.eval_subjects import resolve_saved_model

    path = os.path.join(resolve_saved_model(handle), "assets", ENCODER_INFO_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as file:
        info = json.load(file)
    return info if info.get("modality") == MODALITY_POINTS else None


def _split_counts(source: PointCloudSource, settings: Any) -> tuple[int | None, int | None]:
    """Train and test cloud counts: the settings', a generated split's test default
    (:data:`GENERATED_TEST_EXAMPLES`), None = all of a finite split."""
    for split in (TRAIN_SPLIT, TEST_SPLIT):
        source.check_split(split)
    test = settings.test_examples
    if test is None and source.name == GENERATED_SHAPES:
        test = GENERATED_TEST_EXAMPLES
    return settings.train_examples, test


def _drop_repeated_endpoints(train: dict[str, np.ndarray], test: dict[str, np.ndarray],
                             columns: Sequence[str], log: Callable[[str], None]) -> None:
    """Removes (in place) each endpoint whose features equal ``pool``'s in every column —
    PointNet's last per-point layer max-pooled *is* ``pool`` — so no SVM is fitted twice."""
    endpoints = [name.split("/", 1)[1] for name in train if name.startswith(f"{columns[0]}/")]
    for endpoint in endpoints:
        if endpoint == FEATURE_ENDPOINT or FEATURE_ENDPOINT not in endpoints:
            continue
        keys = [(f"{column}/{endpoint}", f"{column}/{FEATURE_ENDPOINT}") for column in columns]
        if all(np.array_equal(train[key], train[pool]) and np.array_equal(test[key], test[pool])
               for key, pool in keys):
            log(f"{endpoint}: max over the points equals {FEATURE_ENDPOINT}; probed once as "
                f"{FEATURE_ENDPOINT}")
            for key, _ in keys:
                del train[key], test[key]


def evaluate_point_encoders(encoders: Mapping[str, Callable[..., dict]], settings: Any, *,
                            dataset: str, num_points: int, out_dir: str | Path,
                            data_dir: str | None = None,
                            description: dict[str, Any] | None = None,
                            log: Callable[[str], None] = print) -> dict[str, Any]:
    """``settings.protocol`` (a :class:`~selfsup.tasks.frozen_eval.FrozenEvalSettings`:
    svm, linear, knn or lowshot) on every endpoint of every point encoder (``column →
    encoder``), features max-pooled over the points; writes ``<out_dir>/<protocol file>`` and
    returns the results in the image protocols' layout (``protocol``, ``columns``,
    ``endpoints``, per column endpoint → numbers, ``best``), so
    :func:`~selfsup.tasks.frozen_eval.format_frozen_table` prints them."""
    from selfsup.tasks.frozen_eval import score_features

    check_point_protocol(settings.protocol)
    if num_points < 1:
        raise ConfigError(f"num_points must be positive, got {num_points}")
    start = time.perf_counter()
    source = open_point_source(dataset, data_dir)
    train_count, test_count = _split_counts(source, settings)
    columns = list(encoders)
    log(f"-- {settings.protocol}: features of {', '.join(columns)} on {dataset} "
        f"({num_points} points per cloud)")
    train_points, train_y = source.examples(TRAIN_SPLIT, train_count, num_points,
                                            settings.seed)
    test_points, test_y = source.examples(TEST_SPLIT, test_count, num_points, settings.seed)
    log(f"{len(train_y)} train and {len(test_y)} test clouds")
    train: dict[str, np.ndarray] = {}
    test: dict[str, np.ndarray] = {}
    for column, encoder in encoders.items():
        for split_points, target in ((train_points, train), (test_points, test)):
            target.update({f"{column}/{name}": value for name, value in
                           point_features(encoder, split_points, endpoints=None).items()})
    _drop_repeated_endpoints(train, test, columns, log)
    protocol_settings = {key: value for key, value in settings.protocol_settings().items()
                         if key not in ("pool_size", "feature_dims")}
    results: dict[str, Any] = {
        "protocol": {"name": settings.protocol, "dataset": dataset, "train_split": TRAIN_SPLIT,
                     "eval_split": TEST_SPLIT, "num_points": num_points,
                     "pooling": "max over points", "pool_size": None,
                     **protocol_settings, "train_examples": len(train_y),
                     "test_examples": len(test_y)},
        "columns": columns, **(description or {}),
    }
    return score_features(results, settings, train, train_y, test, test_y,
                          len(source.classes), out_dir=out_dir, start=start, log=log)


def format_point_table(results: dict[str, Any]) -> str:
    """:func:`~selfsup.tasks.frozen_eval.format_frozen_table` with a header saying how point
    features were read (max over the points, not pooled maps)."""
    from selfsup.tasks.frozen_eval import format_frozen_table

    protocol = results["protocol"]
    lines = format_frozen_table(results).split("\n")
    detail = lines[0].split(" on ", 1)[0]
    lines[0] = (f"{detail} on {protocol['dataset']} {protocol['eval_split']} "
                f"({protocol['test_examples']} clouds): {protocol['train_examples']} train "
                f"clouds of {protocol['num_points']} points, per-point endpoints max-pooled "
                "over the points")
    return "\n".join(lines)


def evaluate_point_run(model_dir: str | Path, settings: Any, *, data_dir: str | None = None,
                       with_random_init: bool = True, num_points: int | None = None,
                       log: Callable[[str], None] = print) -> dict[str, Any]:
    """``settings.protocol`` on the trained point encoder of the run in ``model_dir`` and (with
    ``with_random_init``) a random-init twin seeded with ``settings.seed``, on the run's
    dataset at ``num_points`` (default: the run's); results in ``<model_dir>/eval/``."""
    from selfsup.tasks.eval_subjects import run_encoders

    check_point_protocol(settings.protocol)
    encoders, info = run_encoders(model_dir, seed=settings.seed,
                                  with_random_init=with_random_init)
    run_config = info.run_config or {}
    if not is_point_run(run_config):
        raise ConfigError(f"{model_dir} did not train on point clouds (dataset "
                          f"{run_config.get('dataset')!r})")
    return evaluate_point_encoders(
        encoders, settings, dataset=info.dataset,
        num_points=int(num_points or run_config["num_points"]), out_dir=Path(model_dir) / "eval",
        data_dir=data_dir if data_dir is not None else info.data_dir,
        description=info.description(), log=log)


def evaluate_point_saved_model(handle: str, settings: Any, *, output_dir: str | Path,
                               dataset: str | None = None, num_points: int | None = None,
                               data_dir: str | None = None,
                               log: Callable[[str], None] = print) -> dict[str, Any]:
    """``settings.protocol`` on a point-cloud ``selfsup-export`` (column ``saved_model``) on
    ``dataset`` at ``num_points`` (defaults: what the export records); results in
    ``output_dir``. The export's ``endpoints`` give the checkpoint's features, so the numbers
    equal the run's ``trained`` column."""
    from selfsup.tasks.eval_subjects import SAVED_MODEL, read_encoder_info, saved_model_encoder

    check_point_protocol(settings.protocol)
    encoder, info = saved_model_encoder(handle)
    metadata = read_encoder_info(encoder.saved_model) or {}
    dataset = dataset or info.dataset
    if not dataset or not is_point_dataset(dataset):
        raise ConfigError(f"{handle} needs a point-cloud dataset: pass --dataset={GENERATED_SHAPES}"
                          f" or --dataset=mesh_folder:<root> (got {dataset!r})")
    return evaluate_point_encoders(
        {SAVED_MODEL: encoder}, settings, dataset=dataset,
        num_points=int(num_points or metadata.get("num_points") or 0), out_dir=output_dir,
        data_dir=data_dir, description=info.description(), log=log)


def point_probe_metrics(model_dir: str | Path) -> dict[str, float]:
    """The headline numbers of a point run's saved SVM evaluation (``eval/svm.json``), for
    model cards: top-1 per endpoint and the random-init column's best; empty without one."""
    from selfsup.tasks.frozen_eval import RESULTS_FILES

    path = Path(model_dir) / "eval" / RESULTS_FILES["svm"]
    if not path.is_file():
        return {}
    results = json.loads(path.read_text())
    metrics = {f"linear SVM top-1 % ({name})": results["trained"][name]["top1"]
               for name in results["endpoints"] if "trained" in results}
    if "random_init" in results:
        best = results["best"]["random_init"]
        metrics[f"random-init best linear SVM top-1 % ({best})"] = (
            results["random_init"][best]["top1"])
    return metrics
