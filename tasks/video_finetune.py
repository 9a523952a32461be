"""``selfsup-eval --protocol=finetune``: fine-tune a pretrained video encoder for action
recognition and score it (the survey's Table 6 protocol), beside the same from random init.

Trains :mod:`selfsup.tasks.action_recognition` (same backbone, clip geometry and dataset as the
pretraining run unless told otherwise) and reports clip- and video-level top-1 on the eval split
(clip probabilities averaged per video, :mod:`selfsup.tasks.video_eval`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from absl import logging

from selfsup.models.registry import ConfigError
from selfsup.tasks.finetuning import (
    FINETUNE_DIR,  # noqa: F401  (re-exported)
    FINETUNE_RESULTS_FILE,  # noqa: F401  (re-exported)
    FinetuneRecipe,
    finetune_columns,
    write_finetune_results,
)
from selfsup.tasks.video_eval import (
    COLUMNS,
    DEFAULT_BATCH_SIZE,
    DEFAULT_CLIPS_PER_VIDEO,
    clip_settings,
)


@dataclasses.dataclass(frozen=True)
class FinetuneSettings(FinetuneRecipe):
    """How ``selfsup-eval --protocol=finetune`` trains a video encoder (see
    :func:`evaluate_finetune`; the shared fields: :class:`FinetuneRecipe`)."""

    clips_per_video: int = DEFAULT_CLIPS_PER_VIDEO

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.clips_per_video < 1:
            raise ConfigError(f"finetune clips_per_video must be positive, got "
                              f"{self.clips_per_video}")


def evaluate_finetune(model_dir: str | Path, settings: FinetuneSettings = FinetuneSettings(),
                      *, test_examples: int | None = None, seed: int = 0,
                      data_dir: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                      log: Callable[[str], None] = logging.info) -> dict[str, Any]:
    """Fine-tunes the video run in ``model_dir`` for action recognition and reports.

    Trains ``action_recognition`` (same backbone, clip geometry and dataset unless
    ``settings.dataset``) from the run's encoder into ``<model_dir>/eval/finetune/trained``
    and, with ``settings.from_scratch``, from random init into ``.../random_init`` (the same
    seed, so the heads start equal; the random encoder at the full learning rate); each
    resumes if its dir holds a finished run. Then scores clip- and video-level top-1 on the
    eval split (``test_examples``: a seeded subset of its videos, as the linear probe's) and
    writes ``<model_dir>/eval/finetune.json``.
    """
    from selfsup.datasets.video_sources import is_video_dataset, open_video_source
    from selfsup.tasks.action_recognition import ActionRecognitionConfig
    from selfsup.tasks.checkpoints import latest_checkpoint, read_run_config
    from selfsup.tasks.linear_probe import seeded_subset

    model_dir = Path(model_dir)
    start = time.perf_counter()
    run_config = read_run_config(model_dir)
    dataset = settings.dataset or run_config["dataset"]
    data_dir = data_dir if data_dir is not None else run_config.get("data_dir")
    if not is_video_dataset(dataset, data_dir):
        raise ConfigError(f"the finetune protocol fine-tunes video encoders on a labelled video "
                          f"dataset; {dataset!r} is not one")
    checkpoint = latest_checkpoint(model_dir)
    source = open_video_source(dataset, data_dir)
    test_videos = seeded_subset(source.num_videos(source.eval_split), test_examples, seed + 1)
    geometry = clip_settings(run_config)
    results: dict[str, Any] = {
        "protocol": {**dataclasses.asdict(settings), "name": "finetune", "dataset": dataset,
                     "seed": seed, "test_videos": test_examples, **geometry},
        "model_dir": str(model_dir), "checkpoint": checkpoint, "task": run_config.get("task"),
        "backbone": run_config.get("backbone"),
    }

    def make_config(init_from: str | None, scale: float) -> ActionRecognitionConfig:
        return ActionRecognitionConfig(
            backbone=run_config["backbone"], backbone_kwargs=run_config.get("backbone_kwargs")
            or {}, dataset=dataset, data_dir=data_dir, global_batch_size=settings.batch_size,
            seed=seed, init_from=init_from, encoder_learning_rate_scale=scale,
            dropout=settings.dropout, eval_clips_per_video=settings.clips_per_video,
            **geometry)

    def score(task, model) -> dict[str, Any]:
        scores = task.evaluate(model, videos=test_videos, batch_size=batch_size, log=log)
        start_from = "trained" if task.config.init_from else "random_init"
        log(f"fine-tuned ({start_from}): clip top-1 {scores['clip_top1']:.2f}%, video top-1 "
            f"{scores['video_top1']:.2f}%")
        return scores

    results.update(finetune_columns(model_dir, settings, "action_recognition", make_config,
                                    score, log))
    write_finetune_results(model_dir, results, start, log)
    return results


def format_finetune_table(results: dict[str, Any]) -> str:
    """The fine-tuning results as text: clip / video top-1 per starting point."""
    protocol = results["protocol"]
    lines = [f"action recognition after {protocol['steps']} fine-tuning steps on "
             f"{protocol['dataset']} (top-1 %, {protocol['clips_per_video']} clips per video)",
             f"{'start':<14}{'clip':>10}{'video':>10}"]
    for key, label in COLUMNS:
        if key in results:
            lines.append(f"{label:<14}{results[key]['clip_top1']:>10.2f}"
                         f"{results[key]['video_top1']:>10.2f}")
    return "\n".join(lines)
