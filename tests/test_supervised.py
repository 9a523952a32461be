"""supervised: labelled Fashion-MNIST batches and their augmentation, the loss and top-1,
starting from a pretrained run, the frozen-encoder optimizer group and the mirrored step."""

from __future__ import annotations

import io
import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import (
    ONE_STAGE,
    SUBSET,
    assert_two_replicas_match_one_device,
    checkpoint_tensors,
    eager_losses_on_batch,
    initial_weights,
    seeded_first_batch,
)
from selfsup.datasets import image_label_dataset
from selfsup.models.backbone import variable_map
from selfsup.models.registry import ConfigError
from selfsup.tasks.base import BACKBONE_NAME
from selfsup.tasks.checkpoints import RUN_CONFIG_FILE, build_encoder
from selfsup.tasks.finetuning import ENCODER_GROUP, HEAD_GROUP
from selfsup.tasks.supervised import SupervisedConfig, SupervisedTask, pad_and_crop
from selfsup.tasks.trainer import Trainer, TrainerConfig

TINY = dict(backbone_kwargs=ONE_STAGE, train_split=SUBSET, synchronized_bn=False)


def write_pretrained_run(model_dir: Path, backbone_kwargs: dict = ONE_STAGE,
                         seed: int = 7) -> str:
    """An image run dir as selfsup-train leaves it (run config + a checkpoint keyed as the
    trainer keys it) whose encoder is a seeded random init; returns the checkpoint path."""
    import selfsup.tasks.rotnet  # noqa: F401  (registers the run's task)

    run_config = {"task": "rotnet", "backbone": "resnet_small",
                  "backbone_kwargs": backbone_kwargs, "dataset": "fashion_mnist",
                  "image_size": 28, "data_dir": None, "seed": seed}
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / RUN_CONFIG_FILE).write_text(json.dumps(run_config))
    encoder = build_encoder(json.loads(json.dumps(run_config)), seed)
    keyed = {f"{BACKBONE_NAME}/{key}": variable for key, variable
             in variable_map(encoder).items()}
    return tf.train.Checkpoint(model=keyed).save(str(model_dir / "ckpt"))


def saved_backbone(tensors: dict[str, np.ndarray], path: str) -> np.ndarray:
    """The checkpoint tensor of the encoder variable at ``path`` (tf.train escapes '/' as
    '.S' and '.' as '..' in object names)."""
    name = f"{BACKBONE_NAME}/{path}".replace(".", "..").replace("/", ".S")
    return tensors[f"model/{name}/.ATTRIBUTES/VARIABLE_VALUE"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"augmentation": "cutout"}, "unknown augmentation 'cutout'; valid: pad_crop_flip"),
     ({"crop_padding": -1}, "crop_padding must not be negative"),
     ({"encoder_learning_rate_scale": -1.0}, "must not be negative"),
     ({"dropout": 1.0}, r"dropout must lie in \[0, 1\)"),
     ({"num_classes": 1}, "at least 2")])
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        SupervisedConfig(**TINY, **settings)


def test_fewer_classes_than_the_labels_are_refused():
    with pytest.raises(ConfigError, match="num_classes=5 is fewer than the 10 classes"):
        SupervisedTask(SupervisedConfig(**TINY, num_classes=5)).class_count()


def test_pad_and_crop_gives_windows_of_the_zero_padded_image():
    """Every output is some 8 × 8 window of its image zero-padded by 2 (checked against every
    offset with numpy slices), and the offsets differ between images."""
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(32, 8, 8, 3)).astype(np.float32)
    crops = pad_and_crop(tf.constant(images), tf.constant([1, 2], tf.int64), 2).numpy()
    padded = np.pad(images, [(0, 0), (2, 2), (2, 2), (0, 0)])
    offsets = set()
    for i in range(len(images)):
        found = [(r, c) for r in range(5) for c in range(5)
                 if np.array_equal(crops[i], padded[i, r:r + 8, c:c + 8])]
        assert found, i
        offsets.add(found[0])
    assert len(offsets) > 5, offsets


def test_loss_and_top1_match_a_hand_count():
    """Four examples with hand-made logits: two argmaxes hit their label (top-1 0.5); the loss
    is the mean cross-entropy computed with numpy."""
    task = SupervisedTask(SupervisedConfig(**TINY))
    logits = np.array([[2.0, 0.0, 1.0], [0.0, 3.0, 0.0], [1.0, 0.5, 0.0], [0.0, 0.0, 4.0]],
                      np.float32)
    labels = np.array([0, 2, 1, 2], np.int64)
    loss = task.build_losses(tf.constant(labels), {"logits": tf.constant(logits)})
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probabilities = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    assert float(loss) == pytest.approx(-log_probabilities[np.arange(4), labels].mean(),
                                        rel=1e-6)
    metrics = task.build_metrics()
    task.update_metrics(metrics, loss, tf.constant(labels), {"logits": tf.constant(logits)})
    results = {metric.name: float(metric.result()) for metric in metrics}
    assert results == pytest.approx({"loss": float(loss), "accuracy": 0.5})


def test_evaluate_counts_hits_on_the_chosen_test_images():
    """``evaluate`` on a few indices of the first 100 test images gives the share of images
    whose logits' argmax is their label, computed here on the images read in file order and
    indexed with numpy."""
    task = SupervisedTask(SupervisedConfig(**TINY))
    keras.utils.set_random_seed(2)
    model = task.build_model()
    examples = np.array([1, 4, 9, 16, 25, 36, 49, 64, 81])
    scores = task.evaluate(model, split="test[:100]", examples=examples, batch_size=4)
    images, labels = list(image_label_dataset(task.source, "test", 28, first=82).batch(82))[0]
    logits = model(tf.gather(images, examples), training=False)["logits"].numpy()
    hits = np.argmax(logits, axis=1) == labels.numpy()[examples]
    assert scores["examples"] == 9
    assert scores["top1"] == pytest.approx(100.0 * hits.mean())


def test_loss_falls_on_labelled_fashion_mnist_batches():
    """The pipeline's batches are real Fashion-MNIST images with their own labels (each image
    is found among the subset's images with that label); eight SGD steps of the tiny encoder
    on one batch start near chance (log 10 ≈ 2.3) and lower the cross-entropy."""
    task = SupervisedTask(SupervisedConfig(**TINY, global_batch_size=32, augmentation="none"))
    batch = seeded_first_batch(task)
    images, labels = batch
    assert images.shape == (32, 28, 28, 3) and labels.dtype == tf.int64
    pool, pool_labels = list(image_label_dataset(task.source, SUBSET, 28).batch(1024))[0]
    for image, label in zip(images.numpy(), labels.numpy(), strict=True):
        matches = np.flatnonzero(np.all(pool.numpy() == image, axis=(1, 2, 3)))
        assert len(matches) and label in pool_labels.numpy()[matches]
    losses = eager_losses_on_batch(task, batch, steps=8, learning_rate=0.1)
    assert 1.8 < losses[0] < 2.8 and losses[-1] < losses[0] - 0.2, losses


def test_init_from_restores_the_checkpoint_encoder_and_refuses_another_architecture(tmp_path):
    """The built model's encoder holds exactly the pretrained checkpoint's tensors (tuple
    kwargs such as stage_blocks=(1,) match the run config's JSON lists); a run of other
    widths is refused with one line."""
    checkpoint = write_pretrained_run(tmp_path / "pretrained")
    keras.utils.set_random_seed(3)  # another init than the pretrained run's seed 7
    model = SupervisedTask(SupervisedConfig(**TINY, init_from=str(tmp_path / "pretrained"))
                           ).build_model()
    saved = checkpoint_tensors(checkpoint)
    encoder = variable_map(model.backbone)
    assert len(encoder) == len(saved)
    for path, variable in encoder.items():
        np.testing.assert_array_equal(variable.numpy(), saved_backbone(saved, path),
                                      err_msg=path)

    wider = dict(TINY, backbone_kwargs={**ONE_STAGE, "stage_widths": (16,)})
    with pytest.raises(ConfigError) as error:
        SupervisedTask(SupervisedConfig(**wider, init_from=str(tmp_path / "pretrained"))
                       ).build_model()
    assert "\n" not in str(error.value)
    assert "trained resnet_small" in str(error.value) and "this task builds resnet_small {" \
        in str(error.value)


def test_scale_zero_freezes_the_pretrained_encoder_while_the_head_learns(tmp_path):
    """Four trainer steps at encoder learning-rate scale 0 (two optimizer groups): every
    trainable encoder weight in the final checkpoint equals the pretrained checkpoint's, the
    head's kernel has moved, and BatchNorm's moving statistics adapted."""
    pretrained = checkpoint_tensors(write_pretrained_run(tmp_path / "pretrained"))
    task = SupervisedTask(SupervisedConfig(**TINY, global_batch_size=16,
                                           init_from=str(tmp_path / "pretrained"),
                                           encoder_learning_rate_scale=0.0))
    keras.utils.set_random_seed(0)
    trainer = Trainer(task, TrainerConfig(model_dir=str(tmp_path / "run"), train_steps=4,
                                          log_every=4, checkpoint_every=4, learning_rate=0.1),
                      tf.distribute.OneDeviceStrategy("/cpu:0"), out=io.StringIO())
    assert list(trainer.optimizers) == [ENCODER_GROUP, HEAD_GROUP]
    head_before = trainer.model.head.dense.kernel.numpy()
    trainer.train()
    final = checkpoint_tensors(tf.train.latest_checkpoint(str(tmp_path / "run")))
    trainable = {variable.path for variable in trainer.model.backbone.trainable_variables}
    moving = 0
    for path, variable in variable_map(trainer.model.backbone).items():
        start, end = saved_backbone(pretrained, path), saved_backbone(final, path)
        if variable.path in trainable:
            np.testing.assert_array_equal(end, start, err_msg=path)
        else:
            moving += int(not np.array_equal(end, start))
    assert moving > 0
    head_after = final["model/head.Slogits.Skernel/.ATTRIBUTES/VARIABLE_VALUE"]
    assert np.abs(head_after - head_before).max() > 1e-3


def test_two_replicas_match_one_device(two_replica_strategy):
    """One optimizer (scale 1): a step on the 2-replica MirroredStrategy (synchronized
    BatchNorm) equals the step on one device."""
    task = SupervisedTask(SupervisedConfig(backbone_kwargs=ONE_STAGE, global_batch_size=4,
                                           image_size=12))
    rng = np.random.default_rng(4)
    images = rng.uniform(size=(4, 12, 12, 3)).astype(np.float32)
    labels = np.array([0, 3, 9, 3], np.int64)
    _, weights = initial_weights(task)
    assert_two_replicas_match_one_device(task, weights, (images, labels), two_replica_strategy,
                                         learning_rate=0.1)

