"""selfsup-bench --mode=speed: the accounting, the ratios, the reference step and one tiny run.

No timing is asserted anywhere: rates depend on the machine and its load.
"""

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import ONE_STAGE, SUBSET
from selfsup.models.registry import ConfigError
from selfsup.tasks.speed_bench import (
    SpeedRecipe,
    SpeedSettings,
    add_ratios,
    forward_images,
    mixed_precision_rows,
    reference_batch,
    reference_classifier,
    run_speed,
    task_config,
)

# Every field benchmarks/README.md documents for a row of speed.json (rates are objects with
# per_second, windows and steps_per_window).
ROW_FIELDS = {
    "task", "policy", "backbone", "batch_size", "image_size", "forward_images_per_example",
    "forward_images_per_step", "forward_image_shape", "forward_images",
    "pipeline_batches_per_sec", "step_alone_steps_per_sec", "end_to_end_steps_per_sec",
    "reference_steps_per_sec", "reference_batch", "short_run_losses", "final_loss",
    "final_loss_std",
    "task_forward_images_per_sec", "reference_forward_images_per_sec",
    "pipeline_over_end_to_end", "step_alone_over_end_to_end",
    "task_over_reference_per_forward_image", "meets_pipeline_target", "meets_reference_target",
}
RATE_FIELDS = {"per_second", "windows", "steps_per_window"}
MIXED_FIELDS = {"task", "policy", "float32_end_to_end_steps_per_sec",
                "mixed_end_to_end_steps_per_sec", "end_to_end_speedup", "float32_final_loss",
                "mixed_final_loss", "float32_final_loss_std"}
TOP_FIELDS = {"date", "machine", "load_average", "tensorflow", "keras", "settings", "targets",
              "rows", "mixed_precision", "seconds"}


# Hand-worked at the default recipes: Fashion-MNIST 28 px; jigsaw's cell is max(28 // 3, 16) =
# 16 px and its tile round(0.75 × 16) = 12 px; VCOP's recipe has 3 clips of 8 frames at 32 px.
@pytest.mark.parametrize("task, batch, per_step, shape", [
    ("rotnet", 64, 256, (28, 28, 3)),        # 4 rotations of each of 64 images
    ("jigsaw", 64, 576, (12, 12, 3)),        # 9 tiles of each of 64 images
    ("simclr", 128, 256, (28, 28, 3)),       # 2 views of each of 128 images
    ("moco", 128, 256, (28, 28, 3)),         # 128 queries + 128 keys
    ("colorization", 64, 64, (28, 28, 3)),   # the image itself
    ("vcop", 16, 48, (8, 32, 32, 3)),        # 3 clips of each of 16 windows
])
def test_forward_images_per_step_match_hand_worked_counts(task, batch, per_step, shape):
    config = task_config(task, SpeedSettings(out_dir="unused"))
    assert config.global_batch_size == batch
    forward = forward_images(task, config)
    assert forward.per_step(config.global_batch_size) == per_step
    assert forward.shape == shape


def test_batch_override_keeps_the_moco_queue_a_multiple_of_the_batch():
    config = task_config("moco", SpeedSettings(out_dir="unused", batch_size=48))
    assert config.global_batch_size == 48
    assert config.queue_size == 85 * 48  # the largest multiple of 48 not above 4096


def test_ratios_and_targets_from_hand_worked_rates():
    row = {"pipeline_batches_per_sec": {"per_second": 10.0},
           "end_to_end_steps_per_sec": {"per_second": 4.0},
           "step_alone_steps_per_sec": {"per_second": 3.0},
           "reference_steps_per_sec": {"per_second": 4.0},
           "forward_images_per_step": 256, "reference_batch": 256}
    add_ratios(row)
    assert row["pipeline_over_end_to_end"] == 2.5 and row["meets_pipeline_target"]
    assert row["task_forward_images_per_sec"] == 768.0
    assert row["reference_forward_images_per_sec"] == 1024.0
    assert row["task_over_reference_per_forward_image"] == 0.75
    assert not row["meets_reference_target"]
    assert row["step_alone_over_end_to_end"] == 0.75


def test_mixed_precision_rows_pair_each_task_with_its_float32_run():
    def row(task, policy, rate, loss):
        return {"task": task, "policy": policy, "final_loss": loss, "final_loss_std": 0.125,
                "end_to_end_steps_per_sec": {"per_second": rate}}

    rows = [row("rotnet", "float32", 2.0, 1.25), row("rotnet", "mixed_bfloat16", 3.0, 1.5),
            row("jigsaw", "float32", 1.0, 4.0)]  # no mixed run: no comparison row
    assert mixed_precision_rows(rows) == [{
        "task": "rotnet", "policy": "mixed_bfloat16", "float32_end_to_end_steps_per_sec": 2.0,
        "mixed_end_to_end_steps_per_sec": 3.0, "end_to_end_speedup": 1.5,
        "float32_final_loss": 1.25, "mixed_final_loss": 1.5, "float32_final_loss_std": 0.125}]


def test_bad_speed_settings_are_refused_naming_the_valid_values():
    with pytest.raises(ConfigError, match="no recipe for deepcluster; valid: rotnet"):
        SpeedSettings(out_dir="x", tasks=("deepcluster",))
    with pytest.raises(ConfigError, match="valid: none, mixed_bfloat16"):
        SpeedSettings(out_dir="x", mixed_precision="fp8")
    with pytest.raises(ConfigError, match="windows must be at least 1"):
        SpeedSettings(out_dir="x", windows=0)


def test_reference_classifier_loss_falls_on_a_fixed_batch():
    from selfsup.tasks.rotnet import RotNetTask

    keras.utils.set_random_seed(0)
    task = RotNetTask(task_config("rotnet", SpeedSettings(out_dir="unused",
                                                          backbone_kwargs=ONE_STAGE)))
    _, step = reference_classifier(task, "none", SpeedRecipe(8, "adam", 3e-2, 0.0), 1000)
    images, labels = reference_batch((28, 28, 3), 8, seed=0)
    losses = [float(step(images, labels).numpy()) for _ in range(15)]
    # A fresh 10-way classifier starts near ln 10 and memorises 8 fixed examples.
    assert abs(losses[0] - math.log(10)) < 1.0
    assert losses[-1] < 0.5 * losses[0]


def test_colorization_trains_under_mixed_bfloat16_with_a_float32_loss():
    from selfsup.tasks.colorization import ColorizationTask, colorization_targets

    config = task_config("colorization", SpeedSettings(
        out_dir="unused", backbone_kwargs=ONE_STAGE, batch_size=4))
    task = ColorizationTask(config)
    images = tf.random.stateless_uniform([4, 28, 28, 3], [0, 1])
    targets = colorization_targets(images, config.target_stride, config.neighbours,
                                   tf.ones([313]))
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = task.build_model()  # the Lab conversion refused bfloat16 input before
        loss, _, outputs = task.compute_loss((images, targets), model, training=True)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert outputs["logits"].dtype == tf.bfloat16  # the network does run in bfloat16
    assert loss.dtype == tf.float32 and np.isfinite(loss.numpy())


def tiny_speed_run(out_dir, mixed_precision: str) -> tuple[dict, dict, list[str]]:
    """RotNet at batch 4 on a one-stage encoder, 2 windows of 2 steps: (returned results,
    saved JSON, log lines)."""
    settings = SpeedSettings(
        out_dir=str(out_dir), tasks=("rotnet",), batch_size=4, backbone_kwargs=ONE_STAGE,
        mixed_precision=mixed_precision, windows=2, steps_per_window=2, warmup_steps=1,
        loss_steps=3, cached_batches=2, config_overrides={"train_split": SUBSET})
    lines = []
    results = run_speed(settings, log=lines.append)
    return results, json.loads((out_dir / "speed.json").read_text()), lines


def test_speed_mode_runs_one_tiny_task_and_writes_every_documented_field(tmp_path):
    results, saved, lines = tiny_speed_run(tmp_path, "none")
    assert set(saved) == TOP_FIELDS
    assert [(row["task"], row["policy"]) for row in saved["rows"]] == [("rotnet", "float32")]
    for row in saved["rows"]:
        assert set(row) == ROW_FIELDS
        for name in ("pipeline_batches_per_sec", "step_alone_steps_per_sec",
                     "end_to_end_steps_per_sec", "reference_steps_per_sec"):
            assert set(row[name]) == RATE_FIELDS
            assert len(row[name]["windows"]) == 2 and row[name]["steps_per_window"] == 2
            assert row[name]["per_second"] == pytest.approx(
                float(np.median(row[name]["windows"])), rel=1e-3)
        assert row["forward_images_per_step"] == row["reference_batch"] == 16
        assert len(row["short_run_losses"]) == 3
        assert row["final_loss"] == pytest.approx(np.mean(row["short_run_losses"]), abs=1e-4)
        assert row["final_loss_std"] == pytest.approx(np.std(row["short_run_losses"]),
                                                      abs=1e-4)
    assert saved["mixed_precision"] == []
    assert saved["rows"] == results["rows"]
    table = (tmp_path / "speed.md").read_text()
    assert "| rotnet | float32 | 4 | 16 (its 4 rotations) |" in table
    assert lines[-1].strip() == table.strip()


@pytest.mark.slow
def test_speed_mode_under_bfloat16_compares_speed_and_loss_with_float32(tmp_path):
    _, saved, _ = tiny_speed_run(tmp_path, "mixed_bfloat16")
    assert [row["policy"] for row in saved["rows"]] == ["float32", "mixed_bfloat16"]
    assert all(set(row) == ROW_FIELDS for row in saved["rows"])
    (mixed,) = saved["mixed_precision"]
    assert set(mixed) == MIXED_FIELDS
    # Same seed, same batches, 3 steps: bfloat16 stays near the float32 loss.
    assert mixed["mixed_final_loss"] == pytest.approx(mixed["float32_final_loss"], abs=0.1)
    assert "| rotnet | mixed_bfloat16 |" in (tmp_path / "speed.md").read_text()


def test_cli_speed_mode_refuses_a_task_without_a_recipe_in_one_line(tmp_path, capsys):
    # In process (a subprocess would spend ~20 s importing TensorFlow on a loaded machine):
    # bench_main's own flag parsing and main, as `selfsup-bench` runs them.
    from absl import flags

    from selfsup.tasks import bench_main

    argv = ["selfsup-bench", "--mode=speed", "--tasks=deepcluster", f"--out_dir={tmp_path}"]
    try:
        flags.FLAGS(argv)
        with pytest.raises(SystemExit) as exit_info:
            bench_main.main(argv[:1])
    finally:
        flags.FLAGS.unparse_flags()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "selfsup-bench: error: speed mode has no recipe for deepcluster; valid: "
        "rotnet, jigsaw, simclr, moco, colorization, vcop"]


def test_cli_zoo_mode_refuses_speed_only_flags(capsys):
    from absl import flags

    from selfsup.tasks import bench_main

    try:
        flags.FLAGS(["selfsup-bench", "--batch_size=32"])
        with pytest.raises(SystemExit):
            bench_main.main(["selfsup-bench"])
    finally:
        flags.FLAGS.unparse_flags()
    assert capsys.readouterr().err.strip() == (
        "selfsup-bench: error: not a --mode=zoo flag: --batch_size")
