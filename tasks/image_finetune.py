"""``selfsup-eval --protocol=finetune`` for image runs: fine-tune the run's encoder with a new
classifier on the dataset's labels and score it, beside the same from random init.

The survey's fine-tuning protocol (Jing & Tian §7, the transfer to classification: the
pretrained network initialises a supervised one and every layer is trained):
:mod:`selfsup.tasks.supervised` from the run's encoder (same backbone, image size and dataset
unless told otherwise) and from random init (the "from scratch" row), both scored by top-1 on
the eval split. Video runs go to :mod:`selfsup.tasks.video_finetune`.

Encoder learning-rate scale, default 1 (everything at the head's rate, as the video protocol).
A lower rate for pretrained layers than for a new head is the classic transfer recipe (R-CNN
fine-tunes at a tenth of the pre-training rate so as not to destroy the initialisation,
Girshick et al. 2014 §2.3) and is one setting away (``encoder_learning_rate_scale=0.1``), but
at this protocol's budgets it keeps the encoder from adapting: after 300 RotNet steps
(resnet_small, Fashion-MNIST) and 300 fine-tuning steps of 64 images, the pretrained encoder
reached 81.75 % top-1 at scale 1 and 76.10 % at 0.1, against 79.60 % from scratch (2,000 test
images; the slow test). RotNet's top layers are tuned to rotations, so they must move. 0
freezes the encoder's weights (a linear probe on ``pool`` whose BatchNorm statistics adapt).
The from-scratch baseline always trains its encoder at the full rate.
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
    RANDOM_INIT,
    TRAINED,
    FinetuneRecipe,
    finetune_columns,
    write_finetune_results,
)
from selfsup.tasks.linear_eval import COLUMNS
from selfsup.tasks.supervised import AUGMENTATIONS, EVAL_BATCH_SIZE, split_size

# Measured against 0.1 (module docstring).
DEFAULT_ENCODER_LEARNING_RATE_SCALE = 1.0


@dataclasses.dataclass(frozen=True)
class ImageFinetuneSettings(FinetuneRecipe):
    """How ``selfsup-eval --protocol=finetune`` trains an image encoder (see
    :func:`evaluate_image_finetune`; the shared fields: :class:`FinetuneRecipe`).

    ``train_split``: the labelled images to fine-tune on (e.g. ``train[:10%]`` for a low-label
    setting); ``eval_split``: the images to score (None: the dataset's test split, else its
    validation split); ``augmentation``: the supervised task's (``pad_crop_flip`` by default).
    """

    batch_size: int = 64
    encoder_learning_rate_scale: float = DEFAULT_ENCODER_LEARNING_RATE_SCALE
    train_split: str = "train"
    eval_split: str | None = None
    augmentation: str = "pad_crop_flip"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.augmentation not in AUGMENTATIONS:
            raise ConfigError(f"unknown finetune augmentation {self.augmentation!r}; valid: "
                              f"{', '.join(AUGMENTATIONS)}")


def evaluate_image_finetune(model_dir: str | Path,
                            settings: ImageFinetuneSettings = ImageFinetuneSettings(), *,
                            test_examples: int | None = None, seed: int = 0,
                            data_dir: str | None = None,
                            log: Callable[[str], None] = logging.info) -> dict[str, Any]:
    """Fine-tunes the image run in ``model_dir`` on labels and reports top-1 (%).

    Trains ``supervised`` (same backbone, kwargs and image size; the run's dataset unless
    ``settings.dataset``) for ``settings.steps`` steps on one device from the run's encoder
    into ``<model_dir>/eval/finetune/trained`` and, with ``settings.from_scratch``, from
    random init into ``.../random_init`` (same seed, so the heads start equal); a dir holding a
    finished run is only scored again. Scores both on the eval split (``test_examples``: a
    seeded subset, as the linear probe's), writes ``<model_dir>/eval/finetune.json``
    atomically and returns its content: ``protocol`` (every setting), ``model_dir``,
    ``checkpoint``, ``task``, ``backbone``, per column ``{top1, examples,
    encoder_learning_rate_scale, final_loss, model_dir}``, ``seconds``.
    """
    from selfsup.datasets import open_source
    from selfsup.tasks.checkpoints import latest_checkpoint, read_run_config
    from selfsup.tasks.linear_eval import is_video_run
    from selfsup.tasks.linear_probe import seeded_subset
    from selfsup.tasks.supervised import SupervisedConfig

    model_dir = Path(model_dir)
    start = time.perf_counter()
    run_config = read_run_config(model_dir)
    dataset = settings.dataset or run_config["dataset"]
    data_dir = data_dir if data_dir is not None else run_config.get("data_dir")
    if is_video_run({**run_config, "dataset": dataset}, data_dir):
        raise ConfigError(f"image fine-tuning needs a labelled image dataset; {dataset!r} is a "
                          "video dataset (video runs: selfsup.tasks.video_finetune)")
    checkpoint = latest_checkpoint(model_dir)
    source = open_source(dataset, data_dir)
    if source.num_classes is None:
        raise ConfigError(f"dataset {dataset!r} has no labels to fine-tune on")
    source.check_split(settings.train_split)
    eval_split = settings.eval_split or source.eval_split
    source.check_split(eval_split)
    test_indices = seeded_subset(split_size(source, eval_split), test_examples, seed + 1)
    image_size = run_config["image_size"]
    results: dict[str, Any] = {
        "protocol": {**dataclasses.asdict(settings), "name": "finetune", "dataset": dataset,
                     "eval_split": eval_split, "test_examples": test_examples, "seed": seed,
                     "image_size": image_size},
        "model_dir": str(model_dir), "checkpoint": checkpoint, "task": run_config.get("task"),
        "backbone": run_config.get("backbone"),
    }

    def make_config(init_from: str | None, scale: float) -> SupervisedConfig:
        return SupervisedConfig(
            backbone=run_config["backbone"],
            backbone_kwargs=run_config.get("backbone_kwargs") or {}, dataset=dataset,
            data_dir=data_dir, train_split=settings.train_split, image_size=image_size,
            global_batch_size=settings.batch_size, seed=seed, init_from=init_from,
            encoder_learning_rate_scale=scale, dropout=settings.dropout,
            augmentation=settings.augmentation)

    def score(task, model) -> dict[str, Any]:
        scores = task.evaluate(model, split=eval_split, examples=test_indices,
                               batch_size=EVAL_BATCH_SIZE)
        column = TRAINED if task.config.init_from else RANDOM_INIT
        log(f"fine-tuned ({column}): top-1 {scores['top1']:.2f}% on {scores['examples']} "
            f"{eval_split} images")
        return scores

    results.update(finetune_columns(model_dir, settings, "supervised", make_config, score,
                                    log))
    write_finetune_results(model_dir, results, start, log)
    return results


def format_image_finetune_table(results: dict[str, Any]) -> str:
    """The image fine-tuning results as text: top-1 per starting point."""
    protocol = results["protocol"]
    lines = [f"classification after {protocol['steps']} fine-tuning steps on "
             f"{protocol['dataset']} (top-1 % on {protocol['eval_split']})",
             f"{'start':<14}{'top-1':>10}{'encoder lr':>12}"]
    for key, label in COLUMNS:
        if key in results:
            row = results[key]
            lines.append(f"{label:<14}{row['top1']:>10.2f}"
                         f"{'×' + format(row['encoder_learning_rate_scale'], 'g'):>12}")
    return "\n".join(lines)
