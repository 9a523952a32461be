"""selfsup-bench's zoo table: recipes for every image task, the budget → steps rule, the table."""

import json

import pytest

from helpers import ONE_STAGE, fashion_mnist_folder, run_cli
from selfsup.models.registry import ConfigError
from selfsup.tasks.zoo_bench import (
    RECIPES,
    BenchSettings,
    _task_config,
    check_recipes_cover_tasks,
    format_zoo_table,
    run_zoo,
)


def test_every_registered_image_task_has_a_recipe_or_a_reason():
    assert check_recipes_cover_tasks() == []


@pytest.mark.parametrize("task", sorted(RECIPES))
def test_each_recipe_makes_a_valid_task_config(task):
    config = _task_config(task, RECIPES[task], BenchSettings(out_dir="unused"))
    assert config.global_batch_size == RECIPES[task].batch_size
    for name, value in RECIPES[task].task_params.items():
        assert getattr(config, name) == value


def test_table_has_one_row_per_method_and_bolds_each_rows_best_layer():
    results = {"rows": [
        {"task": "random init", "category": "baseline", "train_steps": 0,
         "top1": {"stem": 80.04, "res2": 84.5, "pool": 70.0}},
        {"task": "rotnet", "category": "context: spatial", "train_steps": 700,
         "top1": {"stem": 81.0, "res2": 87.25, "pool": 88.0}},
    ]}
    assert format_zoo_table(results).splitlines() == [
        "| method | category | steps | stem | res2 | pool |",
        "|---|---|---:|---:|---:|---:|",
        "| random init | baseline | 0 | 80.0 | **84.5** | 70.0 |",
        "| rotnet | context: spatial | 700 | 81.0 | 87.2 | **88.0** |",
    ]


def test_two_branch_encoders_show_their_better_branch_per_layer():
    results = {"rows": [
        {"task": "random init", "category": "baseline", "train_steps": 0,
         "top1": {"stem": 80.0, "res2": 84.5, "pool": 70.0}},
        {"task": "split_brain", "category": "generation", "train_steps": 9,
         "top1": {"l_stem": 82.7, "l_res2": 82.5, "ab_stem": 10.0, "ab_res2": 83.0,
                  "pool": 71.6}},
        {"task": "other", "category": "x", "train_steps": 1, "top1": {"res2": 50.0}},
    ]}
    assert format_zoo_table(results).splitlines()[2:] == [
        "| random init | baseline | 0 | 80.0 | **84.5** | 70.0 |",
        "| split_brain | generation | 9 | 82.7 (l) | **83.0** (ab) | 71.6 |",
        "| other | x | 1 | – | **50.0** | – |",
    ]


def test_bad_settings_are_refused_with_the_valid_names():
    with pytest.raises(ConfigError, match="no bench recipe for nope; valid: rotnet"):
        BenchSettings(out_dir="x", tasks=("nope",))
    with pytest.raises(ConfigError, match="budget_seconds must be positive"):
        BenchSettings(out_dir="x", budget_seconds=0)


def test_zoo_run_turns_the_budget_into_steps_writes_the_table_and_reuses_rows(tmp_path):
    data = fashion_mnist_folder(tmp_path / "data", 300, 100)
    settings = BenchSettings(out_dir=str(tmp_path / "bench"), tasks=("rotnet",),
                             budget_seconds=2.0, calibration_steps=3, backbone_kwargs=ONE_STAGE,
                             dataset=f"image_folder:{data}", probe_train_examples=200)
    results = run_zoo(settings, log=lambda message: None)
    tmp_path = tmp_path / "bench"
    plan = json.loads((tmp_path / "runs" / "rotnet" / "bench_plan.json").read_text())
    # Budget / measured CPU time per step, rounded; the run trained exactly that many steps.
    assert plan["train_steps"] == max(1, round(2.0 / plan["cpu_seconds_per_step"]))
    rows = {row["task"]: row for row in results["rows"]}
    assert list(rows) == ["random init", "rotnet"]
    assert rows["rotnet"]["train_steps"] == plan["train_steps"]
    endpoints = ["stem", "res2", "pool"]
    for row in rows.values():
        assert list(row["top1"]) == endpoints
        assert all(0.0 <= value <= 100.0 for value in row["top1"].values())
    saved = json.loads((tmp_path / "zoo.json").read_text())
    assert saved["rows"] == results["rows"]
    table = (tmp_path / "zoo.md").read_text()
    assert "| method | category | steps | stem | res2 | pool |" in table
    assert "| rotnet | context: spatial |" in table
    # A second run reuses the finished row: same numbers, no new checkpoint.
    checkpoints = sorted((tmp_path / "runs" / "rotnet").glob("ckpt-*"))
    again = run_zoo(settings, log=lambda message: None)
    assert again["rows"][1] == results["rows"][1]
    assert sorted((tmp_path / "runs" / "rotnet").glob("ckpt-*")) == checkpoints


def test_cli_refuses_an_unknown_task_in_one_line(tmp_path):
    result = run_cli("selfsup-bench", f"--out_dir={tmp_path}", "--tasks=rotnet,nope")
    assert result.returncode == 2, result.stderr
    assert "selfsup-bench: error: no bench recipe for nope" in result.stderr
    assert "Traceback" not in result.stderr
