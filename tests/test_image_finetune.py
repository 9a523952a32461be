"""``selfsup-eval --protocol=finetune`` on image runs: settings, refusals, and the protocol end
to end on a tiny RotNet run (plus, slow, a short pretraining against from-scratch)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import ONE_STAGE, SUBSET, train_in_process
from selfsup.models.registry import ConfigError
from selfsup.tasks.base import TaskConfig
from selfsup.tasks.checkpoints import RUN_CONFIG_FILE
from selfsup.tasks.image_finetune import (
    ImageFinetuneSettings,
    evaluate_image_finetune,
    format_image_finetune_table,
)
from selfsup.tasks.rotnet import RotNetTask


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"steps": 0}, "finetune steps must be positive"),
     ({"learning_rate": 0.0}, "finetune learning_rate must be positive"),
     ({"optimizer": "rmsprop"}, "unknown finetune optimizer 'rmsprop'; valid: sgd, adam"),
     ({"encoder_learning_rate_scale": -0.5}, "must not be negative"),
     ({"augmentation": "mixup"}, "unknown finetune augmentation 'mixup'; valid: pad_crop")])
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        ImageFinetuneSettings(**settings)


def test_video_runs_are_refused_before_any_work(tmp_path):
    (tmp_path / RUN_CONFIG_FILE).write_text(json.dumps(
        {"task": "rotnet3d", "backbone": "r3d_18", "dataset": "sample_videos",
         "image_size": 32}))
    with pytest.raises(ConfigError, match="'sample_videos' is a video dataset"):
        evaluate_image_finetune(tmp_path, ImageFinetuneSettings(steps=2))


def test_finetune_protocol_end_to_end_on_a_tiny_rotnet_run(tmp_path):
    """Two RotNet steps make a run; four fine-tuning steps from it and from random init on a
    Fashion-MNIST slice write finetune.json atomically with both rows (the pretrained row at
    encoder scale 0.5 in two optimizer groups, the from-scratch row at the full rate), top-1
    in [0, 100] on 60 seeded images of the first 200 test images, finite final losses, and
    the same dict as returned."""
    pretrain = RotNetTask(TaskConfig(backbone_kwargs=ONE_STAGE, train_split=SUBSET,
                                     global_batch_size=8))
    train_in_process(pretrain, "rotnet", tmp_path, train_steps=2, log_every=2,
                     checkpoint_every=2, learning_rate=0.05)
    lines: list[str] = []
    settings = ImageFinetuneSettings(steps=4, batch_size=8, train_split=SUBSET,
                                     eval_split="test[:200]", encoder_learning_rate_scale=0.5)
    results = evaluate_image_finetune(tmp_path, settings, test_examples=60, log=lines.append)

    assert json.loads((tmp_path / "eval" / "finetune.json").read_text()) == results
    assert not (tmp_path / "eval" / "finetune.json.tmp").exists()
    assert results["task"] == "rotnet" and results["protocol"]["eval_split"] == "test[:200]"
    for column, scale in (("trained", 0.5), ("random_init", 1.0)):
        row = results[column]
        assert row["examples"] == 60 and 0.0 <= row["top1"] <= 100.0, row
        assert row["encoder_learning_rate_scale"] == scale
        assert np.isfinite(row["final_loss"])
        assert (tmp_path / "eval" / "finetune" / column / RUN_CONFIG_FILE).is_file()
    assert any("from random init" in line for line in lines)
    table = format_image_finetune_table(results)
    assert "trained" in table and "random init" in table


@pytest.mark.slow
def test_short_rotnet_pretraining_against_from_scratch(tmp_path):
    """Slow (4 to 8.5 min on the shared 2-core machine): RotNet pretraining (resnet_small, 300
    SGD steps × 64 images × 4 rotations, loss 0.52 → 0.07), then the protocol with its defaults
    but 300 steps: batch 64, SGD 0.05 with cosine decay, encoder scale 1, scored on 2,000
    seeded test images.

    Measured (2026-11-30, identical on a re-run): 81.75 % top-1 from the RotNet encoder
    against 79.60 % from random init (+2.15; at encoder scale 0.1 the pretrained run reached
    only 76.10 %). Both are far from converged (a third of an epoch). Asserted: both learn
    (> 75 %) and the pretrained start is not worse than from scratch by more than a point
    (the 2-point gain is about two standard errors on 2,000 images, so not asserted)."""
    pretrain = RotNetTask(TaskConfig(global_batch_size=64))
    losses, _ = train_in_process(pretrain, "rotnet", tmp_path, train_steps=300, log_every=60,
                                 checkpoint_every=300, learning_rate=0.1)
    results = evaluate_image_finetune(tmp_path, ImageFinetuneSettings(steps=300),
                                      test_examples=2000, log=print)
    print(format_image_finetune_table(results))
    print("rotnet losses", losses)
    assert losses[-1] < losses[0]
    trained, random_init = results["trained"]["top1"], results["random_init"]["top1"]
    assert trained > 75.0 and random_init > 75.0, (trained, random_init)
    assert trained > random_init - 1.0, (trained, random_init)
