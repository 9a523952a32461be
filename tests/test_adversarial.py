"""Two-player training in the trainer: GAN losses, one optimizer per player, both checkpointed
and resumed, samples written as PNG grids and TensorBoard images, replicas match one device.

A toy GAN (a dense generator, the DCGAN discriminator) on fixed random 8×8 images keeps this
about the machinery; the real adversarial tasks have their own tests.
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import AdversarialStepper, checkpoint_tensors
from selfsup.models.discriminators import ConvDiscriminator
from selfsup.tasks.adversarial import (
    DISCRIMINATOR,
    GENERATOR,
    AdversarialConfig,
    AdversarialTask,
    discriminator_loss,
    generator_loss,
)
from selfsup.tasks.trainer import SAMPLES_DIR, Trainer, TrainerConfig

SIZE, NOISE = 8, 4


class ToyGanModel(keras.Model):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.generator = keras.layers.Dense(SIZE * SIZE * 3, activation="sigmoid",
                                            name="generator")
        self.discriminator = ConvDiscriminator(SIZE, width=4, name="discriminator")

    def generate(self, noise):
        return keras.ops.reshape(self.generator(noise), (-1, SIZE, SIZE, 3))

    def call(self, inputs, training=None):
        images, noise = inputs
        fake = self.generate(noise)
        return {"real": self.discriminator(images, training=training),
                "fake": self.discriminator(fake, training=training)}


class ToyGan(AdversarialTask):
    """Real images: 64 fixed uniform 8×8 images; noise drawn per batch from a stateless seed."""

    def build_model(self) -> ToyGanModel:
        return ToyGanModel(name="toy_gan")

    def dummy_inputs(self):
        return tf.zeros([1, SIZE, SIZE, 3]), tf.zeros([1, NOISE])

    def build_inputs(self, input_context=None):
        images = np.random.default_rng(0).uniform(size=(64, SIZE, SIZE, 3)).astype(np.float32)
        batch = self.per_replica_batch_size(input_context)
        dataset = tf.data.Dataset.from_tensor_slices(images).repeat().batch(batch)
        return dataset.enumerate().map(lambda index, real: (real, tf.random.stateless_normal(
            [batch, NOISE], tf.stack([tf.constant(7, tf.int64), index]))))

    def generator_variables(self, model):
        return model.generator.trainable_variables

    def discriminator_variables(self, model):
        return model.discriminator.trainable_variables

    def generator_loss(self, inputs, model, training):
        _, noise = inputs
        return generator_loss(model.discriminator(model.generate(noise), training=training)), {}

    def discriminator_loss(self, inputs, model, training):
        outputs = model(inputs, training=training)
        return discriminator_loss(outputs["real"], outputs["fake"]), {}

    def sample_images(self, model):
        noise = tf.random.stateless_normal([6, NOISE], [1, 2])
        return {"generated": model.generate(noise)}


def toy_task(**overrides) -> ToyGan:
    return ToyGan(AdversarialConfig(global_batch_size=8, image_size=SIZE, **overrides))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_gan_losses_match_the_cross_entropy_formulas():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(5, 1)) * 3, rng.normal(size=(5, 1)) * 3
    expected_d = np.mean(-np.log(sigmoid(real))) + np.mean(-np.log(1 - sigmoid(fake)))
    expected_g = np.mean(-np.log(sigmoid(fake)))
    assert float(discriminator_loss(real, fake)) == pytest.approx(expected_d, rel=1e-5)
    assert float(generator_loss(fake)) == pytest.approx(expected_g, rel=1e-5)
    # An undecided discriminator (logits 0): D pays 2·log 2, G log 2.
    zeros = tf.zeros([3, 1])
    assert float(discriminator_loss(zeros, zeros)) == pytest.approx(2 * math.log(2), rel=1e-6)
    assert float(generator_loss(zeros)) == pytest.approx(math.log(2), rel=1e-6)
    # No overflow at confident logits.
    assert np.isfinite(float(discriminator_loss(tf.constant([[-200.0]]), tf.constant([[200.0]]))))


def _built(task, seed=1):
    keras.utils.set_random_seed(seed)
    model = task.build_model()
    model(task.dummy_inputs(), training=False)
    return model


def test_each_optimizer_moves_only_its_own_player():
    task = toy_task()
    model = _built(task)
    groups = task.optimizer_groups(model)
    assert list(groups) == [GENERATOR, DISCRIMINATOR]
    assert groups[GENERATOR].beta_1 == groups[DISCRIMINATOR].beta_1 == 0.5
    weights = [variable.numpy().copy() for variable in model.variables]
    stepper = AdversarialStepper(tf.distribute.OneDeviceStrategy("/cpu:0"), task, weights)
    stepper.assert_players_move_alone(
        tuple(part.numpy() for part in next(iter(task.build_inputs()))))


def test_two_replicas_match_one_device(two_replica_strategy):
    """Both updates all-reduce: one device and two replicas end a step with the same weights
    (synchronized BatchNorm in the discriminator)."""
    task = toy_task(synchronized_bn=True)
    weights = [variable.numpy().copy() for variable in _built(task).variables]
    batch = tuple(part.numpy() for part in next(iter(task.build_inputs())))
    rates = {GENERATOR: 0.5, DISCRIMINATOR: 0.5}
    one_loss, one = AdversarialStepper(tf.distribute.OneDeviceStrategy("/cpu:0"), task,
                                       weights).run(batch, rates)
    two_loss, two = AdversarialStepper(two_replica_strategy, task, weights).run(batch, rates)
    assert one_loss == pytest.approx(two_loss, abs=1e-5)
    assert max(np.abs(a - b).max() for a, b in zip(one, weights, strict=True)) > 1e-2
    for a, b in zip(two, one, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5)


def _train(model_dir, steps, **settings):
    keras.utils.set_random_seed(0)
    config = TrainerConfig(model_dir=str(model_dir), train_steps=steps, optimizer="adam",
                           learning_rate=1e-2, weight_decay=0.0, log_every=1,
                           checkpoint_every=2, lr_schedule="constant", **settings)
    import io

    out = io.StringIO()
    trainer = Trainer(toy_task(), config, tf.distribute.OneDeviceStrategy("/cpu:0"), out=out)
    trainer.train()
    return trainer, out.getvalue()


def test_trainer_checkpoints_both_optimizers_and_resumes_to_the_same_weights(tmp_path):
    full, log = _train(tmp_path / "full", 4)
    assert "d_loss" in log and "g_loss" in log
    saved = checkpoint_tensors(tf.train.latest_checkpoint(str(tmp_path / "full")))
    # Adam's iteration counters and moments of both players are in the checkpoint.
    assert saved["optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"] == 4
    assert saved["optimizer_discriminator/_iterations/.ATTRIBUTES/VARIABLE_VALUE"] == 4
    assert full.optimizers[GENERATOR].iterations.numpy() == 4
    assert sum("optimizer_discriminator/_variables" in key for key in saved) == 2 * len(
        full.task.discriminator_variables(full.model))
    _train(tmp_path / "split", 2)
    resumed, log = _train(tmp_path / "split", 4)
    assert "resuming from step 2" in log
    resumed_saved = checkpoint_tensors(tf.train.latest_checkpoint(str(tmp_path / "split")))
    assert resumed_saved.keys() == saved.keys()
    for key, value in saved.items():
        np.testing.assert_allclose(resumed_saved[key], value, atol=1e-6, err_msg=key)


def test_samples_are_written_as_png_grids_and_tensorboard_images(tmp_path):
    trainer, log = _train(tmp_path, 2)
    path = tmp_path / SAMPLES_DIR / "generated-000002.png"
    assert f"samples generated: {path}" in log
    grid = tf.io.decode_png(path.read_bytes()).numpy()
    # 6 images of 8 px in 3 columns × 2 rows with 2 px padding: 2 + 3·10 wide, 2 + 2·10 high.
    assert grid.shape == (22, 32, 3)
    expected = trainer.task.sample_images(trainer.model)["generated"].numpy()
    np.testing.assert_array_equal(grid[2:10, 2:10], np.round(expected[0] * 255).astype(np.uint8))
    assert grid[2:10, 2:10].std() > 1.0  # a generated image, not a blank cell
    images = []
    for event_file in (tmp_path / "train").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            for value in event.summary.value:
                if value.tag == f"{SAMPLES_DIR}/generated":
                    images.append((event.step, tf.make_ndarray(value.tensor)))
    assert [step for step, _ in images] == [2]
    # An image summary holds width, height and the encoded PNG.
    width, height, encoded = images[0][1]
    assert (int(width), int(height)) == (32, 22)
    np.testing.assert_array_equal(tf.io.decode_png(encoded).numpy(), grid)
