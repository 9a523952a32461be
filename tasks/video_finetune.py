"""``selfsup-eval --protocol=finetune``: fine-tune a pretrained video encoder for action
recognition and score it (the survey's Table 6 protocol), beside the same from random init.

Trains :mod:`selfsup.tasks.action_recognition` (same backbone, clip geometry and dataset as the
pretraining run unless told otherwise) and reports clip- and video-level top-1 on the eval split
(clip probabilities averaged per video, :mod:`selfsup.tasks.video_eval`).
"""

from __future__ import annotations

import dataclasses
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from absl import logging

from selfsup.models.registry import ConfigError
from selfsup.tasks.video_eval import (
    COLUMNS,
    DEFAULT_BATCH_SIZE,
    DEFAULT_CLIPS_PER_VIDEO,
    clip_settings,
    write_json,
)

FINETUNE_RESULTS_FILE = "finetune.json"
FINETUNE_DIR = "finetune"


class _LineLog(io.TextIOBase):
    """A text stream that hands each complete line to ``log`` (the trainer's progress)."""

    def __init__(self, log: Callable[[str], None]) -> None:
        super().__init__()
        self._log, self._partial = log, ""

    def write(self, text: str) -> int:
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            if line:
                self._log(line)
        return len(text)


@dataclasses.dataclass(frozen=True)
class FinetuneSettings:
    """How ``selfsup-eval --protocol=finetune`` trains (see :func:`evaluate_finetune`)."""

    steps: int = 1000
    batch_size: int = 16
    learning_rate: float = 0.05
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    encoder_learning_rate_scale: float = 1.0
    dropout: float = 0.0
    clips_per_video: int = DEFAULT_CLIPS_PER_VIDEO
    from_scratch: bool = True
    dataset: str | None = None  # None: the pretrained run's

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "clips_per_video"):
            if getattr(self, name) < 1:
                raise ConfigError(f"finetune {name} must be positive, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            raise ConfigError(f"finetune learning_rate must be positive, got "
                              f"{self.learning_rate}")


def evaluate_finetune(model_dir: str | Path, settings: FinetuneSettings = FinetuneSettings(),
                      *, test_examples: int | None = None, seed: int = 0,
                      data_dir: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                      log: Callable[[str], None] = logging.info) -> dict[str, Any]:
    """Fine-tunes the video run in ``model_dir`` for action recognition and reports.

    Trains ``action_recognition`` (same backbone, clip geometry and dataset unless
    ``settings.dataset``) from the run's encoder into ``<model_dir>/eval/finetune/trained``
    and, with ``settings.from_scratch``, from random init into ``.../random_init`` (the same
    seed, so the heads start equal); each resumes if its dir holds a finished run. Then scores
    clip- and video-level top-1 on the eval split (``test_examples``: a seeded subset of its
    videos, as the linear probe's) and writes ``<model_dir>/eval/finetune.json``.
    """
    from selfsup.datasets.video_sources import is_video_dataset, open_video_source
    from selfsup.tasks.action_recognition import (
        ActionRecognitionConfig,
        ActionRecognitionTask,
        restore_model,
    )
    from selfsup.tasks.checkpoints import latest_checkpoint, read_run_config
    from selfsup.tasks.linear_probe import seeded_subset
    from selfsup.tasks.trainer import TrainerConfig
    from selfsup.tasks.training import run_training

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
    runs = [("trained", str(model_dir))] + ([("random_init", None)]
                                            if settings.from_scratch else [])
    for key, init_from in runs:
        config = ActionRecognitionConfig(
            backbone=run_config["backbone"], backbone_kwargs=run_config.get("backbone_kwargs")
            or {}, dataset=dataset, data_dir=data_dir, global_batch_size=settings.batch_size,
            seed=seed, init_from=init_from,
            encoder_learning_rate_scale=settings.encoder_learning_rate_scale,
            dropout=settings.dropout, eval_clips_per_video=settings.clips_per_video,
            **geometry)
        trainer = TrainerConfig(
            model_dir=str(model_dir / "eval" / FINETUNE_DIR / key), train_steps=settings.steps,
            learning_rate=settings.learning_rate, optimizer=settings.optimizer,
            weight_decay=settings.weight_decay, log_every=max(settings.steps // 10, 1),
            checkpoint_every=settings.steps)
        start_from = "the trained encoder" if init_from else "random init"
        log(f"-- fine-tuning action_recognition from {start_from} into {trainer.model_dir}")
        logs = run_training("action_recognition", config, trainer, "one_device",
                            out=_LineLog(log))
        task = ActionRecognitionTask(config)
        model = restore_model(task, trainer.model_dir)
        scores = task.evaluate(model, videos=test_videos, batch_size=batch_size, log=log)
        log(f"fine-tuned ({key}): clip top-1 {scores['clip_top1']:.2f}%, video top-1 "
            f"{scores['video_top1']:.2f}%")
        results[key] = {**scores, "final_loss": logs.get("loss"), "model_dir": trainer.model_dir}
    results["seconds"] = round(time.perf_counter() - start, 1)
    path = model_dir / "eval" / FINETUNE_RESULTS_FILE
    write_json(path, results)
    log(f"wrote {path} ({results['seconds']:.0f} s)")
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
