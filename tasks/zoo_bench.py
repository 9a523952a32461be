"""The zoo table: every registered image task pretrained at one fixed CPU budget, then probed.

The survey's Table 4 (Jing & Tian, §7.1) compares methods by linear probes on each layer of one
architecture with random-init and supervised rows as the floor and the ceiling. This bench makes
that table for selfsup's own image tasks on the default dataset (Fashion-MNIST, ``resnet_small``):

1. Budget: each task trains for the number of steps that costs ``budget_seconds`` of process
   CPU time (all threads: the model and the input pipeline; on 2 idle cores 300 CPU-s is about
   2.5–3 minutes). CPU time per step is measured first in a short throwaway run of the same
   task and recipe (from step n to step 3n, so building and tracing are left out), and
   the real run is then given that many steps so its cosine learning-rate schedule ends where
   the budget does. CPU time rather than wall time, so other work on the machine does not
   change the step counts. Between-epoch work (DeepCluster's clustering) is inside the
   calibration runs' first epoch only, so it mostly comes on top. The chosen steps are stored,
   so a re-run resumes instead of re-calibrating.
2. Recipe: each task's optimiser, learning rate, batch and task options are the README's
   measured recipes (:data:`RECIPES`); only the step count comes from the budget.
3. Probe: :func:`selfsup.tasks.linear_probe.linear_probe_results` on every endpoint (the linear
   protocol of ``selfsup-eval``); the random-init row is the same architecture with the
   evaluation seed, probed once; the ``supervised`` row is the same budget spent on labels.

Results go to ``<out_dir>/zoo.json`` and ``<out_dir>/zoo.md`` (markdown, the survey's table
shape: rows are methods with their category, columns are layers); each run keeps its model dir
under ``<out_dir>/runs/<task>``.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import platform
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from selfsup.models.registry import ConfigError
from selfsup.tasks.atomic_files import write_json_atomically, write_text_atomically

DEFAULT_BUDGET_SECONDS = 300.0  # CPU seconds
DEFAULT_CALIBRATION_STEPS = 10
DEFAULT_BACKBONE = "resnet_small"
DEFAULT_DATASET = "fashion_mnist"
RESULTS_JSON, RESULTS_MARKDOWN = "zoo.json", "zoo.md"
# Per run: the step count chosen for the budget, and the finished row (a re-run reuses both).
PLAN_FILE, ROW_FILE = "bench_plan.json", "bench_row.json"
RANDOM_INIT_ROW, SUPERVISED_TASK = "random init", "supervised"


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How the bench trains one task: the README's measured recipe minus the step count.

    ``category`` follows the survey's taxonomy (§4–6: generation-based, context-based with its
    spatial-context and context-similarity families, free semantic labels), with contrastive
    methods, which postdate it, as their own family.
    """

    category: str
    batch_size: int = 64
    learning_rate: float = 0.1
    optimizer: str = "sgd"
    weight_decay: float = 5e-4
    task_params: Mapping[str, Any] = dataclasses.field(default_factory=dict)


_ADAM = dict(optimizer="adam", learning_rate=1e-3, weight_decay=0.0)
_GAN = dict(optimizer="adam", learning_rate=2e-4, weight_decay=0.0)
_TINT = {"tint_gray_images": True}
GENERATION, SPATIAL, SIMILARITY = "generation", "context: spatial", "context: similarity"
CONTRASTIVE, FREE_LABELS, SUPERVISED = "contrastive", "free semantic labels", "supervised"

# The README's recipes ("Train" table), measured on Fashion-MNIST with resnet_small.
RECIPES: dict[str, Recipe] = {
    "rotnet": Recipe(SPATIAL),
    "jigsaw": Recipe(SPATIAL),
    "relative_position": Recipe(SPATIAL),
    "counting": Recipe(SPATIAL, optimizer="adam", learning_rate=1e-3),
    "deepcluster": Recipe(SIMILARITY, learning_rate=0.05),
    "simclr": Recipe(CONTRASTIVE, batch_size=128, learning_rate=0.3),
    "moco": Recipe(CONTRASTIVE, batch_size=128, learning_rate=0.3,
                   task_params={"momentum": 0.99}),
    "cpc": Recipe(CONTRASTIVE, batch_size=32, **_ADAM),
    "cmc": Recipe(CONTRASTIVE, batch_size=128, task_params=_TINT),
    "autoencoder": Recipe(GENERATION, **_ADAM),
    "denoising_autoencoder": Recipe(GENERATION, **_ADAM),
    "vae": Recipe(GENERATION, **_ADAM),
    "colorization": Recipe(GENERATION, task_params={**_TINT, "prior_examples": 2000}),
    "colorization_regression": Recipe(GENERATION, optimizer="adam", learning_rate=1e-3,
                                      task_params=_TINT),
    "split_brain": Recipe(GENERATION, task_params=_TINT),
    "context_encoder": Recipe(GENERATION, optimizer="adam", learning_rate=2e-3,
                              weight_decay=0.0),
    "edges": Recipe(FREE_LABELS, **_ADAM),
    "dcgan": Recipe(GENERATION, **_GAN),
    "bigan": Recipe(GENERATION, **_GAN),
    "super_resolution": Recipe(GENERATION, **_GAN),
    SUPERVISED_TASK: Recipe(SUPERVISED),
}
# Registered image tasks the table leaves out, and why (shown by --tasks errors).
EXCLUDED = {"multitask": "a combination of the rows, not a method of its own",
            "pointcloud_ae": "point clouds, not images: probed by the shape SVM (point_probe)",
            "av_correspondence": "frames with sound (sample_av, av_folder:), not an image "
                                 "dataset"}


@dataclasses.dataclass(frozen=True)
class BenchSettings:
    """One zoo run: which tasks, the budget per task and the probe protocol."""

    out_dir: str
    tasks: tuple[str, ...] = tuple(RECIPES)
    budget_seconds: float = DEFAULT_BUDGET_SECONDS
    calibration_steps: int = DEFAULT_CALIBRATION_STEPS
    backbone: str = DEFAULT_BACKBONE
    backbone_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    dataset: str = DEFAULT_DATASET
    data_dir: str | None = None
    probe_train_examples: int = 10_000
    probe_test_examples: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [task for task in self.tasks if task not in RECIPES]
        if unknown:
            raise ConfigError(f"no bench recipe for {', '.join(unknown)}; valid: "
                              f"{', '.join(RECIPES)}")
        if not self.tasks:
            raise ConfigError("tasks must not be empty")
        if self.budget_seconds <= 0:
            raise ConfigError(f"budget_seconds must be positive, got {self.budget_seconds}")
        if self.calibration_steps < 2:
            raise ConfigError(f"calibration_steps must be at least 2, got "
                              f"{self.calibration_steps}")
        if self.probe_train_examples < 1:
            raise ConfigError("probe_train_examples must be positive")


def check_recipes_cover_tasks() -> list[str]:
    """Registered image tasks that have neither a recipe nor a reason to be left out."""
    from selfsup.tasks import TASKS, task_class
    from selfsup.tasks.video_base import VideoTask

    missing = []
    for name in TASKS.names():
        if issubclass(task_class(name), VideoTask):
            continue
        if name not in RECIPES and name not in EXCLUDED:
            missing.append(name)
    return missing


def _task_config(task: str, recipe: Recipe, settings: BenchSettings):
    from selfsup.tasks.base import task_class

    return task_class(task).config_class(
        backbone=settings.backbone, backbone_kwargs=dict(settings.backbone_kwargs),
        dataset=settings.dataset, data_dir=settings.data_dir,
        global_batch_size=recipe.batch_size, seed=settings.seed, **recipe.task_params)


def _trainer_config(model_dir: Path, recipe: Recipe, steps: int, log_every: int):
    from selfsup.tasks.trainer import TrainerConfig

    return TrainerConfig(model_dir=str(model_dir), train_steps=steps,
                         learning_rate=recipe.learning_rate, optimizer=recipe.optimizer,
                         weight_decay=recipe.weight_decay, log_every=log_every,
                         checkpoint_every=steps)


class StepClock(io.StringIO):
    """The trainer's progress stream, stamping each ``step N/...`` line with the process CPU
    time at which it was written (the line is written once step N's loss is computed)."""

    def __init__(self) -> None:
        super().__init__()
        self.cpu_seconds: dict[int, float] = {}

    def write(self, text: str) -> int:
        if text.startswith("step "):
            self.cpu_seconds[int(text.split()[1].split("/")[0])] = time.process_time()
        return super().write(text)


def measure_cpu_per_step(task: str, recipe: Recipe, settings: BenchSettings,
                         scratch_dir: Path) -> float:
    """Process CPU seconds (every thread: the model and the input pipeline) per training step
    of ``task`` with ``recipe``: a throwaway run of 3n steps (n = ``calibration_steps``), timed
    from step n to step 3n, so building, tracing and the first batches are left out."""
    import shutil

    from selfsup.tasks.training import run_training

    steps = settings.calibration_steps
    clock = StepClock()
    shutil.rmtree(scratch_dir, ignore_errors=True)
    try:
        run_training(task, _task_config(task, recipe, settings),
                     _trainer_config(scratch_dir, recipe, 3 * steps, steps), "one_device",
                     out=clock)
    finally:
        shutil.rmtree(scratch_dir, ignore_errors=True)
    return (clock.cpu_seconds[3 * steps] - clock.cpu_seconds[steps]) / (2 * steps)


def planned_steps(task: str, recipe: Recipe, settings: BenchSettings, run_dir: Path,
                  log: Callable[[str], None]) -> int:
    """The run's step count: stored in ``run_dir/bench_plan.json`` or measured now."""
    plan_path = run_dir / PLAN_FILE
    if plan_path.is_file():
        plan = json.loads(plan_path.read_text())
        if plan.get("budget_seconds") == settings.budget_seconds:
            return int(plan["train_steps"])
        raise ConfigError(f"{run_dir} was planned for a {plan.get('budget_seconds')} s budget, "
                          f"not {settings.budget_seconds} s; use another --out_dir")
    cpu_per_step = measure_cpu_per_step(task, recipe, settings,
                                        run_dir.with_name(f".{run_dir.name}.calibration"))
    steps = max(1, round(settings.budget_seconds / cpu_per_step))
    log(f"{task}: {cpu_per_step:.3f} CPU-s per step measured → {steps} steps for "
        f"{settings.budget_seconds:g} CPU-s")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomically(plan_path, {"budget_seconds": settings.budget_seconds,
                            "cpu_seconds_per_step": round(cpu_per_step, 5),
                            "train_steps": steps})
    return steps


def _probe(encoder, image_size: int, settings: BenchSettings, log: Callable[[str], None]
           ) -> dict[str, float]:
    from selfsup.datasets import open_source
    from selfsup.tasks.linear_probe import linear_probe_results

    source = open_source(settings.dataset, settings.data_dir)
    results = linear_probe_results(
        encoder, source, image_size=image_size, train_examples=settings.probe_train_examples,
        test_examples=settings.probe_test_examples, seed=settings.seed, log=log)
    return {name: round(result.top1, 2) for name, result in results.items()}


def bench_task(task: str, settings: BenchSettings, log: Callable[[str], None]
               ) -> dict[str, Any]:
    """Trains ``task`` for the budget and probes its encoder; a finished row is reused and an
    interrupted run resumes from its last checkpoint."""
    from selfsup.tasks.checkpoints import restore_encoder
    from selfsup.tasks.finetuning import LineLog
    from selfsup.tasks.training import run_training

    recipe = RECIPES[task]
    run_dir = Path(settings.out_dir) / "runs" / task
    row_path = run_dir / ROW_FILE
    steps = planned_steps(task, recipe, settings, run_dir, log)
    if row_path.is_file():
        log(f"{task}: done earlier ({row_path})")
        return json.loads(row_path.read_text())
    start = time.perf_counter()
    log(f"{task}: training {steps} steps into {run_dir}")
    logs = run_training(task, _task_config(task, recipe, settings),
                        _trainer_config(run_dir, recipe, steps, max(steps // 10, 1)),
                        "one_device", out=LineLog(lambda line: log(f"{task}: {line}")))
    train_seconds = time.perf_counter() - start
    encoder, run_config = restore_encoder(run_dir)
    log(f"{task}: probing every endpoint")
    row = {"task": task, "category": recipe.category, "train_steps": steps,
            "train_seconds": round(train_seconds, 1),
            "final_loss": round(logs["loss"], 4) if "loss" in logs else None,
            "recipe": {**dataclasses.asdict(recipe), "task_params": dict(recipe.task_params)},
            "top1": _probe(encoder, run_config["image_size"], settings, log)}
    write_json_atomically(row_path, row)
    return row


def bench_random_init(settings: BenchSettings, log: Callable[[str], None]) -> dict[str, Any]:
    """The floor: the encoder of the first benched run, re-initialised with the evaluation
    seed (as ``selfsup-eval``'s random-init column), probed."""
    from selfsup.tasks.checkpoints import build_encoder, read_run_config

    run_config = read_run_config(Path(settings.out_dir) / "runs" / settings.tasks[0])
    log(f"{RANDOM_INIT_ROW}: probing every endpoint")
    return {"task": RANDOM_INIT_ROW, "category": "baseline", "train_steps": 0,
            "top1": _probe(build_encoder(run_config, settings.seed), run_config["image_size"],
                           settings, log)}


def layer_cell(top1: Mapping[str, float], layer: str) -> tuple[float, str] | None:
    """``(top-1, branch)`` of a table column for one row: the endpoint ``layer`` itself (branch
    ""), or for a two-branch encoder (split-brain's and CMC's L and ab halves: ``l_res2``,
    ``ab_res2``) the better of its ``<branch>_<layer>`` endpoints; None if it has neither."""
    if layer in top1:
        return top1[layer], ""
    branches = {name[:-len(layer) - 1]: value for name, value in top1.items()
                if name.endswith(f"_{layer}")}
    if not branches:
        return None
    branch = max(branches, key=branches.__getitem__)
    return branches[branch], branch


def format_zoo_table(results: dict[str, Any]) -> str:
    """The survey's Table-4 shape: one row per method, one column per layer of the first row
    (top-1 %), each row's best column in bold. A two-branch encoder's cell is its better
    branch at that layer, named after the number (``85.0 (l)``); zoo.json keeps every
    endpoint."""
    rows = results["rows"]
    layers = list(next(iter(rows))["top1"]) if rows else []
    lines = ["| method | category | steps | " + " | ".join(layers) + " |",
             "|---|---|---:|" + "---:|" * len(layers)]
    for row in rows:
        cells = [layer_cell(row["top1"], layer) for layer in layers]
        best = max((cell[0] for cell in cells if cell is not None), default=None)
        texts = []
        for cell in cells:
            if cell is None:
                texts.append("–")
                continue
            value, branch = cell
            text = f"**{value:.1f}**" if value == best else f"{value:.1f}"
            texts.append(f"{text} ({branch})" if branch else text)
        lines.append(f"| {row['task']} | {row['category']} | {row['train_steps']} | "
                     + " | ".join(texts) + " |")
    return "\n".join(lines)


def machine_description() -> str:
    """CPU model and core count, for the table's caption."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def run_zoo(settings: BenchSettings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Runs (or resumes) the whole bench and writes ``zoo.json`` and ``zoo.md``."""
    import datetime

    out_dir = Path(settings.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows = []
    for index, task in enumerate(settings.tasks, start=1):
        log(f"-- [{index}/{len(settings.tasks)}] {task}")
        rows.append(bench_task(task, settings, log))
    rows.insert(0, bench_random_init(settings, log))
    # Supervised last (the ceiling), whatever order the tasks came in.
    rows.sort(key=lambda row: row["task"] == SUPERVISED_TASK)
    results = {
        "date": datetime.date.today().isoformat(), "machine": machine_description(),
        "settings": dataclasses.asdict(settings),
        "protocol": "linear probe per endpoint (selfsup-eval --protocol=linear defaults): "
                    "features pooled to 3×3, softmax regression, top-1 % on the test split",
        "rows": rows, "seconds": round(time.perf_counter() - start, 1),
    }
    write_json_atomically(out_dir / RESULTS_JSON, results)
    caption = (f"Linear probe top-1 (%) per layer on {settings.dataset} ({settings.backbone}, "
               f"{settings.probe_train_examples} labelled train images, the whole test split); "
               f"each method trained for {settings.budget_seconds:g} CPU-seconds on "
               f"{results['machine']} ({results['date']}).")
    markdown = f"{caption}\n\n{format_zoo_table(results)}\n"
    write_text_atomically(out_dir / RESULTS_MARKDOWN, markdown)
    log(markdown)
    return results
