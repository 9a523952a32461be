"""Linear evaluation of a training run: its encoder and a random-init twin, probed per layer.

Restores the encoder of a run (latest checkpoint), builds a random-init encoder of the same
architecture, probes every endpoint of both with the protocol of
:mod:`selfsup.tasks.linear_probe` (the survey's Table 4), and writes
``<model_dir>/eval/linear_probe.json``. Used by ``selfsup-eval`` and the demo.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from selfsup.models.registry import ConfigError

# linear, knn, svm, lowshot: classifiers on frozen features per layer (linear also for video;
# selfsup.tasks.frozen_eval); finetune: the whole encoder trained with a new head
# (image: selfsup.tasks.image_finetune, video: selfsup.tasks.video_finetune); pictures: the
# qualitative views (selfsup.tasks.eval_pictures).
PROTOCOLS = ("linear", "knn", "svm", "lowshot", "finetune", "pictures")
RESULTS_FILE = "linear_probe.json"
COLUMNS = (("trained", "trained"), ("random_init", "random init"))

def print_progress(message: str) -> None:
    """Progress lines of a long evaluation, on stdout like the trainer's."""
    print(message, flush=True)


def validate_settings(model_dir: str | None, protocol: str = "linear",
                      train_examples: int = 10_000, test_examples: int | None = None,
                      pool_size: int = 3, clips_per_video: int | None = None, *,
                      require_model_dir: bool = True) -> Path | None:
    """Checks every user setting before any work; returns the model dir as a Path (None when
    ``require_model_dir`` is off and there is none: a SavedModel is evaluated instead)."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    if not model_dir and require_model_dir:
        raise ConfigError("--model_dir (a run) or --saved_model (an export) is required")
    if train_examples < 1:
        raise ConfigError(f"train_examples must be positive, got {train_examples}")
    if test_examples is not None and test_examples < 1:
        raise ConfigError(f"test_examples must be positive, got {test_examples}")
    if pool_size < 1:
        raise ConfigError(f"pool_size must be positive, got {pool_size}")
    # The linear protocol's clip retrieval compares clips of one video: at least 2 per video.
    fewest_clips = 2 if protocol == "linear" else 1
    if clips_per_video is not None and clips_per_video < fewest_clips:
        raise ConfigError(f"clips_per_video must be at least {fewest_clips} for the {protocol} "
                          f"protocol, got {clips_per_video}")
    if not model_dir:
        return None
    path = Path(model_dir)
    if not path.is_dir():
        raise ConfigError(f"model dir {model_dir} does not exist")
    return path


def is_video_run(run_config: dict[str, Any], data_dir: str | None = None) -> bool:
    """Whether the run trained on a video dataset (its evaluation takes clips)."""
    from selfsup.datasets.video_sources import is_video_dataset

    data_dir = data_dir if data_dir is not None else run_config.get("data_dir")
    return is_video_dataset(run_config["dataset"], data_dir)


def evaluate_linear(model_dir: str | Path, *, train_examples: int = 10_000,
                    test_examples: int | None = None, pool_size: int = 3, seed: int = 0,
                    data_dir: str | None = None, clips_per_video: int | None = None,
                    feature_dims: int | None = None,
                    learning_rates: tuple[float, ...] | None = None, standardize: bool = True,
                    dataset: str | None = None,
                    log: Callable[[str], None] = print_progress) -> dict[str, Any]:
    """Probes the trained and a random-init encoder of ``model_dir``; writes and returns the
    results (``<model_dir>/eval/linear_probe.json``).

    The result holds ``protocol`` (every setting), ``endpoints`` (in encoder order), per column
    (``trained``, ``random_init``) endpoint → {top1 (%), weight_decay, learning_rate,
    validation_top1, num_features, pool_size}, and ``best``: column → best endpoint (see
    :func:`selfsup.tasks.frozen_eval.evaluate_frozen`). A video run goes to the video protocol
    (:func:`selfsup.tasks.video_eval.evaluate_video_linear`: the examples count videos, each
    seen as ``clips_per_video`` clips; clip and video top-1 and clip retrieval per endpoint).
    """
    model_dir = validate_settings(str(model_dir), "linear", train_examples, test_examples,
                                  pool_size, clips_per_video)
    from selfsup.tasks.checkpoints import read_run_config

    if dataset is None and is_video_run(read_run_config(model_dir), data_dir):
        from selfsup.tasks.video_eval import DEFAULT_CLIPS_PER_VIDEO, evaluate_video_linear

        return evaluate_video_linear(
            model_dir, train_examples=train_examples, test_examples=test_examples,
            clips_per_video=clips_per_video or DEFAULT_CLIPS_PER_VIDEO, pool_size=pool_size,
            seed=seed, data_dir=data_dir, log=log)
    from selfsup.tasks.frozen_eval import FrozenEvalSettings, evaluate_run

    settings = FrozenEvalSettings(
        protocol="linear", train_examples=train_examples, test_examples=test_examples,
        pool_size=pool_size, feature_dims=feature_dims, seed=seed, standardize=standardize,
        learning_rates=learning_rates)
    return evaluate_run(model_dir, settings, data_dir=data_dir, dataset=dataset, log=log)


def format_table(results: dict[str, Any]) -> str:
    """The probe results as a text table: endpoints × (trained, random init), best marked *."""
    protocol = results["protocol"]
    if protocol["name"] == "video_linear":
        from selfsup.tasks.video_eval import format_video_table

        return format_video_table(results)
    from selfsup.tasks.frozen_eval import format_frozen_table

    return format_frozen_table(results)


def probe_metrics(results: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of a linear evaluation, for model cards: top-1 per endpoint (for
    video: video-level top-1 and ``pool``'s clip retrieval, trained vs random init)."""
    if results["protocol"]["name"] == "video_linear":
        trained, random_init = results["trained"], results["random_init"]
        metrics = {f"video probe video top-1 % ({name})": trained[name]["video_top1"]
                   for name in results["endpoints"]}
        best = results["best"]["random_init"]
        metrics[f"random-init best video top-1 % ({best})"] = random_init[best]["video_top1"]
        if "pool" in trained:
            metrics["clip retrieval triplet (pool)"] = trained["pool"]["triplet_retrieval"]
            metrics["random-init clip retrieval triplet (pool)"] = (
                random_init["pool"]["triplet_retrieval"])
        return metrics
    metrics = {f"linear probe top-1 % ({name})": results["trained"][name]["top1"]
               for name in results["endpoints"]}
    best = results["best"]["random_init"]
    metrics[f"random-init best top-1 % ({best})"] = results["random_init"][best]["top1"]
    return metrics


def read_probe_metrics(model_dir: str | Path) -> dict[str, float]:
    """:func:`probe_metrics` of the run's saved linear evaluation; empty if it has none."""
    path = Path(model_dir) / "eval" / RESULTS_FILE
    return probe_metrics(json.loads(path.read_text())) if path.is_file() else {}
