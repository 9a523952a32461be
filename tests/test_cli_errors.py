"""Bad input to the programs ends in one line on stderr and a non-zero exit, no traceback."""

import pytest

from helpers import run_cli


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--task=nosuchtask", "unknown task 'nosuchtask'; valid names:"),
        ("--task_param=nosuch=1", "unknown task parameter 'nosuch'; valid: none"),
        ("--backbone=nosuchnet", "unknown backbone 'nosuchnet'; valid names:"),
        ("--dataset=nosuch_dataset", "unknown dataset 'nosuch_dataset'"),
        ("--train_steps=-5", "train_steps must be positive"),
        ("--batch_size=0", "batch size must be positive"),
        ("--backbone_param=width", "backbone parameter 'width' is not of the form name=value"),
        ("--backbone=r3d_18", "backbone 'r3d_18' takes video clips, this task takes images; "
                              "image backbones: alexnet"),
        ("--task=rotnet3d --dataset=fashion_mnist",
         "dataset 'fashion_mnist' holds images, but this task takes video"),
        ("--task=rotnet3d --backbone=resnet18",
         "backbone 'resnet18' takes images, this task takes video; video backbones: c3d"),
        # No --batch_size: the task's own default (pointcloud_ae: 32) is the one checked.
        ("--task=pointcloud_ae --num_cpu_replicas=3",
         "batch size 32 does not split evenly over 3 replicas; use a multiple of 3 (e.g. 30 "
         "or 33)"),
        # Each run costs a TensorFlow start; more combinations run in-process in
        # test_preflight.py, and these three only in the slow run.
        pytest.param("--task=moco --task_param=queue_size=100",
                     "queue_size 100 must be a positive multiple of the global batch size 64",
                     marks=pytest.mark.slow),
        pytest.param("--task=rotnet3d --image_size=32 --task_param=frame_size=32 "
                     "--task_param=clip_length=700", "training windows span 700 frames",
                     marks=pytest.mark.slow),
        pytest.param("--warmup_steps=1000",
                     "warmup_steps (1000) must be below train_steps (1000)",
                     marks=pytest.mark.slow),
    ],
)
def test_bad_training_flags_give_one_line_errors(tmp_path, flag, message):
    result = run_cli("selfsup-train", f"--model_dir={tmp_path / 'run'}", *flag.split())
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines()
              if line.startswith("selfsup-train: error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr


def test_unwritable_model_dir_is_a_one_line_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    # A path below a regular file cannot be created, even by root.
    result = run_cli("selfsup-train", f"--model_dir={blocker / 'run'}")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "is not writable" in result.stderr
