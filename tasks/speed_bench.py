"""``selfsup-bench --mode=speed``: is a task input-bound, and what does its pretext cost?

Issue 11 asks that the input pipeline never starve the step and that the pretext machinery
(views, pseudo-labels, permutations, queues) add next to nothing to the network's own cost.
For each task, in one process, four rates are measured:

1. **pipeline**: batches/s of ``task.build_inputs()`` alone (pseudo-labels made, no model);
2. **step**: the trainer's compiled step function fed from a few batches cached in memory and
   cycled (no input work left but a ``next`` on an in-memory dataset);
3. **end to end**: the same step function on the task's own pipeline, as the trainer runs it
   (timed right after the seeded short run below, which warms that pipeline up);
4. **reference**: the same backbone trained as a plain supervised classifier (backbone +
   ``Dense(10)``, softmax cross-entropy, the task's optimizer) on the task's *forward batch*:
   as many backbone inputs, of the same shape, as one task step feeds its backbone.

Forward images (:func:`forward_images`): the backbone inputs one source example turns into.
RotNet 4 (its four rotations), Jigsaw 9 (tiles of ``tile_size`` px), SimCLR 2 (views),
MoCo 2 (the query view, trained, and the key view through the key encoder, forward only),
colorization 1, VCOP ``num_clips`` (clips of ``clip_length`` frames). Since the reference
trains on exactly that many inputs per step, "task step / reference step per forward image"
is the ratio of their step rates. The ratios reported, with the issue's targets:

* ``pipeline / end to end`` = pipeline batches/s ÷ end-to-end steps/s (target ≥ 2);
* ``task / reference`` = step-alone rate ÷ reference rate (target ≥ 0.9).

Timing follows ``benchmarks/backbones.py``: an untimed first call (tracing), ``warmup_steps``
timed only to size the windows (``window_seconds`` each unless ``steps_per_window`` is set),
then ``windows`` timed windows; the median is reported with every window's rate in the JSON.

Mixed precision: with ``mixed_precision`` set, every task is measured under float32 and under
the policy, each starting with the same short seeded run of ``loss_steps`` steps (same
initial weights, same batches) whose final loss (mean of its last steps) is printed next to
the float32 one with the end-to-end speedup.

Settings are each task's measured recipe (the zoo's, :data:`selfsup.tasks.zoo_bench.RECIPES`,
for image tasks; README's video recipe for VCOP) unless ``batch_size``/``backbone`` override.
Results: ``<out_dir>/speed.json`` and ``<out_dir>/speed.md``.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from selfsup.models.registry import ConfigError
from selfsup.tasks.atomic_files import write_json_atomically, write_text_atomically
from selfsup.tasks.zoo_bench import RECIPES, machine_description

SPEED_TASKS = ("rotnet", "jigsaw", "simclr", "moco", "colorization", "vcop")
RESULTS_JSON, RESULTS_MARKDOWN = "speed.json", "speed.md"
PIPELINE_TARGET = 2.0    # issue 11: pipeline rate ≥ 2 × the end-to-end step rate
REFERENCE_TARGET = 0.9   # issue 11: task step ≥ 0.9 × the reference step per forward image
REFERENCE_CLASSES = 10
FLOAT32 = "none"         # TrainerConfig's name for "no mixed precision"
FINAL_LOSS_STEPS = 10    # the final loss is the mean over the short run's last steps


@dataclasses.dataclass(frozen=True)
class SpeedRecipe:
    """How the bench configures one task: batch, optimizer and task-config fields."""

    batch_size: int
    optimizer: str = "sgd"
    learning_rate: float = 0.1
    weight_decay: float = 5e-4
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def _zoo_recipe(task: str) -> SpeedRecipe:
    recipe = RECIPES[task]
    return SpeedRecipe(recipe.batch_size, recipe.optimizer, recipe.learning_rate,
                       recipe.weight_decay, dict(recipe.task_params))


# Image tasks: the zoo's (README's) recipes on Fashion-MNIST with resnet_small. VCOP: the
# README's video recipe (the C3D defaults, a full-width R3D-18 on 16 × 112 px clips, would take
# minutes per step on a CPU).
SPEED_RECIPES: dict[str, SpeedRecipe] = {
    **{task: _zoo_recipe(task) for task in SPEED_TASKS if task != "vcop"},
    "vcop": SpeedRecipe(16, "adam", 1e-3, 5e-4, {
        "backbone": "r3d_18", "backbone_kwargs": {"width_multiplier": 0.125},
        "image_size": 32, "frame_size": 40, "clip_length": 8, "interval": 4}),
}


@dataclasses.dataclass(frozen=True)
class SpeedSettings:
    """One speed run. ``None`` batch/backbone: each task's recipe. ``config_overrides`` are
    extra task-config fields for every task (e.g. a dataset or split)."""

    out_dir: str
    tasks: tuple[str, ...] = SPEED_TASKS
    batch_size: int | None = None
    backbone: str | None = None
    backbone_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    mixed_precision: str = FLOAT32
    windows: int = 5
    steps_per_window: int = 0
    window_seconds: float = 2.0
    warmup_steps: int = 3
    loss_steps: int = 30
    cached_batches: int = 4
    config_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        from selfsup.tasks.trainer import MIXED_PRECISION_POLICIES

        unknown = [task for task in self.tasks if task not in SPEED_RECIPES]
        if unknown or not self.tasks:
            raise ConfigError(f"speed mode has no recipe for {', '.join(unknown) or 'no tasks'}; "
                              f"valid: {', '.join(SPEED_RECIPES)}")
        if self.mixed_precision not in MIXED_PRECISION_POLICIES:
            raise ConfigError(f"unknown mixed precision policy {self.mixed_precision!r}; valid: "
                              f"{', '.join(MIXED_PRECISION_POLICIES)}")
        for name in ("windows", "warmup_steps", "loss_steps", "cached_batches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch_size must be positive, got {self.batch_size}")
        if self.steps_per_window < 0 or self.window_seconds <= 0:
            raise ConfigError("steps_per_window must not be negative and window_seconds must "
                              "be positive")

    @property
    def policies(self) -> tuple[str, ...]:
        """float32 always; the mixed policy too when one is asked for."""
        if self.mixed_precision == FLOAT32:
            return (FLOAT32,)
        return (FLOAT32, self.mixed_precision)


def task_config(task: str, settings: SpeedSettings):
    """The task config the bench measures: recipe, then the settings' overrides."""
    from selfsup.tasks.base import task_class

    recipe = SPEED_RECIPES[task]
    fields = dict(recipe.config)
    if settings.backbone is not None:  # another backbone: the recipe's kwargs do not apply
        fields["backbone"] = settings.backbone
        fields["backbone_kwargs"] = dict(settings.backbone_kwargs)
    elif settings.backbone_kwargs:
        fields["backbone_kwargs"] = dict(settings.backbone_kwargs)
    fields["global_batch_size"] = settings.batch_size or recipe.batch_size
    fields.update(settings.config_overrides)
    if task == "moco" and "queue_size" not in fields:
        # The queue must be a multiple of the batch (MoCoConfig); keep the default's length.
        batch = fields["global_batch_size"]
        fields["queue_size"] = max(1, 4096 // batch) * batch
    return task_class(task).config_class(seed=settings.seed, **fields)


@dataclasses.dataclass(frozen=True)
class ForwardImages:
    """What one source example becomes at the backbone: ``per_example`` inputs of ``shape``."""

    per_example: int
    shape: tuple[int, ...]
    what: str

    def per_step(self, batch_size: int) -> int:
        return self.per_example * batch_size


def forward_images(task_name: str, config) -> ForwardImages:
    """The forward-image accounting of ``task_name`` (module docstring) for ``config``."""
    size = config.image_size
    image = (size, size, 3)
    if task_name == "rotnet":
        from selfsup.tasks.rotnet import NUM_ROTATIONS

        return ForwardImages(NUM_ROTATIONS, image, "its 4 rotations")
    if task_name == "jigsaw":
        from selfsup.tasks.jigsaw import jigsaw_grid
        from selfsup.tasks.permutations import NUM_JIGSAW_TILES

        tile = jigsaw_grid(config).tile_size
        return ForwardImages(NUM_JIGSAW_TILES, (tile, tile, 3), f"9 tiles of {tile} px")
    if task_name == "simclr":
        return ForwardImages(2, image, "2 views")
    if task_name == "moco":
        return ForwardImages(2, image, "query view (trained) + key view (forward only)")
    if task_name == "colorization":
        return ForwardImages(1, image, "the image (its lightness)")
    if task_name == "vcop":
        return ForwardImages(config.num_clips, (config.clip_length, size, size, 3),
                             f"{config.num_clips} clips of {config.clip_length} frames")
    raise ConfigError(f"no forward-image accounting for {task_name!r}; valid: "
                      f"{', '.join(SPEED_TASKS)}")


@dataclasses.dataclass
class Rate:
    """A measured rate: the median over timed windows, and every window's rate."""

    per_second: float
    windows: list[float]
    steps_per_window: int


def measure_rate(run: Callable[[int], Any], settings: SpeedSettings) -> Rate:
    """Calls/s of ``run(n)`` (n calls, returning once they are done): one untimed call
    (tracing), ``warmup_steps`` calls timed only to size the windows, then the windows."""
    run(1)
    start = time.perf_counter()
    run(settings.warmup_steps)
    seconds_per_call = max((time.perf_counter() - start) / settings.warmup_steps, 1e-6)
    steps = settings.steps_per_window or max(1, round(settings.window_seconds
                                                      / seconds_per_call))
    rates = []
    for _ in range(settings.windows):
        start = time.perf_counter()
        run(steps)
        rates.append(steps / max(time.perf_counter() - start, 1e-9))
    return Rate(statistics.median(rates), rates, steps)


def _stack_batches(batches: list):
    """``k`` batches (any nest of tensors) → one dataset cycling through them from memory."""
    import tensorflow as tf

    stacked = tf.nest.map_structure(lambda *parts: tf.stack(parts), *batches)
    return tf.data.Dataset.from_tensor_slices(stacked).repeat()


def reference_classifier(task, policy: str, optimizer_settings: SpeedRecipe, train_steps: int):
    """The reference: the task's registry backbone + ``Dense(10)`` and the task's optimizer,
    built under ``policy``; returns ``(model, step)`` where ``step(images, labels)`` is one
    compiled softmax cross-entropy training step returning the float32 loss."""
    import keras
    import tensorflow as tf

    from selfsup.tasks.base import PretextModel, Task, apply_loss_gradients, scale_replica_loss
    from selfsup.tasks.optimization import make_optimizer, make_schedule

    keras.mixed_precision.set_global_policy("float32" if policy == FLOAT32 else policy)
    # The base class's backbone: the registry network itself, without a task's wrapper
    # (colorization's lightness input).
    model = PretextModel(Task.build_backbone(task), keras.layers.Dense(REFERENCE_CLASSES,
                                                                       name="head"),
                         name="reference")
    optimizer = make_optimizer(
        optimizer_settings.optimizer,
        make_schedule("cosine", optimizer_settings.learning_rate, train_steps),
        optimizer_settings.weight_decay, loss_scale=policy == "mixed_float16")

    @tf.function
    def step(images, labels):
        with tf.GradientTape() as tape:
            logits = tf.cast(model(images, training=True)["logits"], tf.float32)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                labels, logits, from_logits=True))
            replica_loss = scale_replica_loss(loss, optimizer)
        apply_loss_gradients(tape, replica_loss, model.trainable_variables, optimizer)
        return loss

    return model, step


def reference_batch(shape: tuple[int, ...], count: int, seed: int):
    """A fixed random batch: ``count`` inputs of ``shape`` in [0, 1] and labels 0..9."""
    import tensorflow as tf

    images = tf.random.stateless_uniform([count, *shape], [seed, 1])
    labels = tf.random.stateless_uniform([count], [seed, 2], 0, REFERENCE_CLASSES, tf.int32)
    return images, labels


def _timed(run: Callable[[int], Any], settings: SpeedSettings) -> dict[str, Any]:
    rate = measure_rate(run, settings)
    return {"per_second": round(rate.per_second, 4),
            "windows": [round(value, 4) for value in rate.windows],
            "steps_per_window": rate.steps_per_window}


def pipeline_rate(task, settings: SpeedSettings) -> tuple[dict[str, Any], list]:
    """Batches/s of ``task.build_inputs()`` with nothing else running, and
    ``cached_batches`` further batches from it (the step-alone measurement's inputs)."""
    batches = iter(task.build_inputs())

    def pipeline(count: int) -> None:
        for _ in range(count):
            next(batches)

    rate = _timed(pipeline, settings)
    return rate, [next(batches) for _ in range(settings.cached_batches)]


def measure_task(task_name: str, policy: str, settings: SpeedSettings,
                 log: Callable[[str], None]) -> dict[str, Any]:
    """The four rates, the ratios and the short run's final loss of one task under ``policy``
    (module docstring)."""
    import keras

    from selfsup.tasks.base import task_class
    from selfsup.tasks.strategies import make_strategy
    from selfsup.tasks.trainer import Trainer, TrainerConfig
    from selfsup.tasks.video_base import check_task_modality

    recipe = SPEED_RECIPES[task_name]
    config = task_config(task_name, settings)
    cls = task_class(task_name)
    check_task_modality(cls, config)
    forward = forward_images(task_name, config)
    forward_per_step = forward.per_step(config.global_batch_size)
    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy("float32")  # the trainer sets mixed ones itself
    keras.utils.set_random_seed(settings.seed)
    task = cls(config)
    row: dict[str, Any] = {
        "task": task_name, "policy": "float32" if policy == FLOAT32 else policy,
        "backbone": config.backbone, "batch_size": config.global_batch_size,
        "image_size": config.image_size, "forward_images_per_example": forward.per_example,
        "forward_images_per_step": forward_per_step, "forward_image_shape": list(forward.shape),
        "forward_images": forward.what,
    }

    log(f"{task_name} [{row['policy']}]: input pipeline alone")
    row["pipeline_batches_per_sec"], cached = pipeline_rate(task, settings)

    with tempfile.TemporaryDirectory(prefix="speed-") as scratch:
        trainer_config = TrainerConfig(
            model_dir=scratch, train_steps=10_000, learning_rate=recipe.learning_rate,
            optimizer=recipe.optimizer, weight_decay=recipe.weight_decay,
            mixed_precision=policy)
        trainer = Trainer(task, trainer_config, make_strategy("one_device"), out=io.StringIO())
        # The trainer's own compiled step and input iterator, so "step alone" and "end to
        # end" time exactly what a training run executes, minus logging and checkpoints.
        def step_fn(iterator) -> dict:
            logs = trainer._step_fn(iterator)
            # Newer trainers return (logs, whether the step was finite).
            return logs[0] if isinstance(logs, tuple) else logs

        inputs = trainer._distributed_inputs(0)
        log(f"{task_name} [{row['policy']}]: {settings.loss_steps}-step seeded run, then end "
            f"to end")
        losses = [float(step_fn(inputs)["loss"].numpy()) for _ in range(settings.loss_steps)]
        tail = losses[-min(FINAL_LOSS_STEPS, len(losses)):]
        row["short_run_losses"] = [round(value, 5) for value in losses]
        row["final_loss"] = round(statistics.fmean(tail), 5)
        # The step-to-step spread of those losses: the noise a precision change is judged by.
        # (By hand: statistics.pstdev raises on NaN, and a diverged run must still be reported.)
        mean = statistics.fmean(tail)
        row["final_loss_std"] = round(math.sqrt(statistics.fmean([(value - mean) ** 2
                                                                  for value in tail])), 5)

        def steps_on(iterator) -> Callable[[int], None]:
            def run(count: int) -> None:
                for _ in range(count):
                    logs = step_fn(iterator)
                logs["loss"].numpy()
            return run

        row["end_to_end_steps_per_sec"] = _timed(steps_on(inputs), settings)
        log(f"{task_name} [{row['policy']}]: train step alone on "
            f"{settings.cached_batches} cached batches")
        cached_dataset = _stack_batches(cached)
        cached_inputs = iter(trainer.strategy.distribute_datasets_from_function(
            lambda context: cached_dataset))
        row["step_alone_steps_per_sec"] = _timed(steps_on(cached_inputs), settings)

    log(f"{task_name} [{row['policy']}]: reference classifier on {forward_per_step} "
        f"inputs of {forward.shape}")
    keras.backend.clear_session()
    keras.utils.set_random_seed(settings.seed)
    _, reference_step = reference_classifier(task, policy, recipe, 10_000)
    images, labels = reference_batch(forward.shape, forward_per_step, settings.seed)

    def reference(count: int) -> None:
        for _ in range(count):
            loss = reference_step(images, labels)
        loss.numpy()

    row["reference_batch"] = forward_per_step
    row["reference_steps_per_sec"] = _timed(reference, settings)
    keras.mixed_precision.set_global_policy("float32")
    add_ratios(row)
    return row


def add_ratios(row: dict[str, Any]) -> None:
    """The issue's two ratios (and whether they meet its targets) from a row's rates."""
    pipeline = row["pipeline_batches_per_sec"]["per_second"]
    end_to_end = row["end_to_end_steps_per_sec"]["per_second"]
    step = row["step_alone_steps_per_sec"]["per_second"]
    reference = row["reference_steps_per_sec"]["per_second"]
    # Images per second through the backbone, task and reference (same count per step).
    row["task_forward_images_per_sec"] = round(step * row["forward_images_per_step"], 2)
    row["reference_forward_images_per_sec"] = round(reference * row["reference_batch"], 2)
    row["pipeline_over_end_to_end"] = round(pipeline / end_to_end, 3)
    row["step_alone_over_end_to_end"] = round(step / end_to_end, 3)
    row["task_over_reference_per_forward_image"] = round(
        row["task_forward_images_per_sec"] / row["reference_forward_images_per_sec"], 3)
    row["meets_pipeline_target"] = row["pipeline_over_end_to_end"] >= PIPELINE_TARGET
    row["meets_reference_target"] = (row["task_over_reference_per_forward_image"]
                                     >= REFERENCE_TARGET)


def mixed_precision_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per task measured under two policies: end-to-end speedup and final losses side by
    side."""
    by_task: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_task.setdefault(row["task"], {})[row["policy"]] = row
    compared = []
    for task, policies in by_task.items():
        mixed = [name for name in policies if name != "float32"]
        if "float32" not in policies or not mixed:
            continue
        base, other = policies["float32"], policies[mixed[0]]
        compared.append({
            "task": task, "policy": mixed[0],
            "float32_end_to_end_steps_per_sec": base["end_to_end_steps_per_sec"]["per_second"],
            "mixed_end_to_end_steps_per_sec": other["end_to_end_steps_per_sec"]["per_second"],
            "end_to_end_speedup": round(other["end_to_end_steps_per_sec"]["per_second"]
                                        / base["end_to_end_steps_per_sec"]["per_second"], 3),
            "float32_final_loss": base["final_loss"], "mixed_final_loss": other["final_loss"],
            "float32_final_loss_std": base.get("final_loss_std"),
        })
    return compared


def _check(value: bool) -> str:
    return "yes" if value else "**no**"


def format_speed_tables(results: dict[str, Any]) -> str:
    """The markdown tables: rates and ratios per task and policy; the mixed-precision table."""
    lines = [
        "| task | policy | batch | forward imgs/step | pipeline batches/s | step alone steps/s "
        "| end to end steps/s | reference steps/s | pipeline / e2e (≥ 2) "
        "| task / reference per fwd img (≥ 0.9) | final loss |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        lines.append(
            f"| {row['task']} | {row['policy']} | {row['batch_size']} | "
            f"{row['forward_images_per_step']} ({row['forward_images']}) | "
            f"{row['pipeline_batches_per_sec']['per_second']:.2f} | "
            f"{row['step_alone_steps_per_sec']['per_second']:.2f} | "
            f"{row['end_to_end_steps_per_sec']['per_second']:.2f} | "
            f"{row['reference_steps_per_sec']['per_second']:.2f} | "
            f"{row['pipeline_over_end_to_end']:.2f} {_check(row['meets_pipeline_target'])} | "
            f"{row['task_over_reference_per_forward_image']:.2f} "
            f"{_check(row['meets_reference_target'])} | {row['final_loss']:.4f} |")
    if results.get("mixed_precision"):
        lines += ["", "| task | policy | float32 e2e steps/s | mixed e2e steps/s | speedup "
                  "| float32 final loss (± step spread) | mixed final loss |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for row in results["mixed_precision"]:
            lines.append(
                f"| {row['task']} | {row['policy']} | "
                f"{row['float32_end_to_end_steps_per_sec']:.2f} | "
                f"{row['mixed_end_to_end_steps_per_sec']:.2f} | "
                f"{row['end_to_end_speedup']:.2f}× | {row['float32_final_loss']:.4f} "
                f"(± {row['float32_final_loss_std'] or 0.0:.4f}) | "
                f"{row['mixed_final_loss']:.4f} |")
    return "\n".join(lines)


def _summary(row: dict[str, Any]) -> str:
    return (f"{row['task']} [{row['policy']}]: pipeline "
            f"{row['pipeline_batches_per_sec']['per_second']:.2f} batches/s, step alone "
            f"{row['step_alone_steps_per_sec']['per_second']:.2f}, end to end "
            f"{row['end_to_end_steps_per_sec']['per_second']:.2f}, reference "
            f"{row['reference_steps_per_sec']['per_second']:.2f} steps/s; pipeline / e2e "
            f"{row['pipeline_over_end_to_end']:.2f}, task / reference "
            f"{row['task_over_reference_per_forward_image']:.2f}, final loss "
            f"{row['final_loss']:.4f}")


def run_speed(settings: SpeedSettings, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measures every task under every policy; writes ``speed.json`` (after every row, so an
    interrupted run keeps what it measured) and, at the end, ``speed.md``."""
    import keras
    import tensorflow as tf

    out_dir = Path(settings.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for task in settings.tasks:  # bad names and settings fail before anything is measured
        forward_images(task, task_config(task, settings))
    start = time.perf_counter()
    results: dict[str, Any] = {
        "date": datetime.date.today().isoformat(), "machine": machine_description(),
        "load_average": [round(value, 2) for value in os.getloadavg()],
        "tensorflow": tf.__version__, "keras": keras.__version__,
        "settings": dataclasses.asdict(settings),
        "targets": {"pipeline_over_end_to_end": PIPELINE_TARGET,
                    "task_over_reference_per_forward_image": REFERENCE_TARGET},
        "rows": [], "mixed_precision": [], "seconds": 0.0,
    }
    for task in settings.tasks:
        for policy in settings.policies:
            row = measure_task(task, policy, settings, log)
            log(_summary(row))
            results["rows"].append(row)
            results["mixed_precision"] = mixed_precision_rows(results["rows"])
            results["seconds"] = round(time.perf_counter() - start, 1)
            write_json_atomically(out_dir / RESULTS_JSON, results)
    caption = (f"selfsup-bench --mode=speed on {results['machine']} ({results['date']}, load "
               f"average {results['load_average'][0]:.1f} at the start); medians of "
               f"{settings.windows} windows.")
    markdown = f"{caption}\n\n{format_speed_tables(results)}\n"
    write_text_atomically(out_dir / RESULTS_MARKDOWN, markdown)
    log(markdown)
    return results
