"""Small helpers shared by tests (no fixtures with hidden state)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

BIN_DIR = Path(sys.executable).parent
# The smallest resnet_small (one stage of 8 channels): for tests about a task, not about the
# encoder's capacity.
ONE_STAGE = {"stage_blocks": (1,), "stage_widths": (8,), "stem_width": 8}
# Real Fashion-MNIST, a small slice: the shuffle buffer fills in a fraction of a second.
SUBSET = "train[:1024]"
# Video tasks at test size: the real sample clips, 8 frames of 32 px from 40 px frames, an
# R3D-18 at 1/8 width (8/16/32/64 channels).
VIDEO_TINY = dict(backbone="r3d_18", backbone_kwargs={"width_multiplier": 0.125},
                  image_size=32, frame_size=40, clip_length=8, dataset="sample_videos")
# A two-stage R3D (8 and 16 channels, one block each: 8 × 8 maps at 16 px), for tests about a
# video task rather than the encoder's capacity.
VIDEO_TWO_STAGE = {"stage_blocks": (1, 1), "stage_widths": (8, 16), "stage_convs": ("3d", "3d"),
                   "stem_width": 8}


def checkpoint_tensors(checkpoint_path: str) -> dict[str, np.ndarray]:
    """Every saved variable of a checkpoint except bookkeeping counters."""
    reader = tf.train.load_checkpoint(checkpoint_path)
    return {
        name: reader.get_tensor(name)
        for name in reader.get_variable_to_shape_map()
        if "save_counter" not in name and "_CHECKPOINTABLE_OBJECT_GRAPH" not in name
    }


def run_cli(program: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([str(BIN_DIR / program), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def pretrain_and_probe(task_name: str, model_dir: Path, *, train_steps: int, batch_size: int,
                       learning_rate: float, optimizer: str = "sgd", weight_decay: float = 5e-4,
                       task_params: dict | None = None, backbone: str = "resnet_small",
                       train_examples: int = 10_000) -> dict:
    """Pretrains ``task_name`` on Fashion-MNIST (one device) and probes trained vs random init.

    Returns the probe results (``evaluate_linear``'s dict) plus ``best``: column → best top-1 %
    over layers, and ``losses``: the losses the trainer logged.
    """
    import io

    from selfsup.tasks.base import TaskConfig, task_class
    from selfsup.tasks.linear_eval import evaluate_linear
    from selfsup.tasks.trainer import TrainerConfig
    from selfsup.tasks.training import run_training

    cls = task_class(task_name)
    task_config = cls.config_class(backbone=backbone, global_batch_size=batch_size,
                                   **(task_params or {}))
    assert isinstance(task_config, TaskConfig)
    trainer_config = TrainerConfig(model_dir=str(model_dir), train_steps=train_steps,
                                   learning_rate=learning_rate, optimizer=optimizer,
                                   weight_decay=weight_decay, log_every=max(train_steps // 5, 1),
                                   checkpoint_every=train_steps)
    out = io.StringIO()
    run_training(task_name, task_config, trainer_config, "one_device", out=out)
    losses = [float(line.split("loss ")[1].split()[0])
              for line in out.getvalue().splitlines() if line.startswith("step ")]
    results = evaluate_linear(model_dir, train_examples=train_examples, log=lambda message: None)
    results["best"] = {column: max(r["top1"] for r in results[column].values())
                       for column in ("trained", "random_init")}
    results["losses"] = losses
    return results


def pretrain_and_probe_video(task_name: str, task_config, model_dir, *, train_steps: int,
                             learning_rate: float, optimizer: str = "sgd",
                             weight_decay: float = 5e-4, clips_per_video: int = 4) -> dict:
    """Pretrains a video task on one device, then the video probe and retrieval checks of the
    trained and the random-init encoder (``evaluate_video_linear``). Returns its results plus
    ``losses`` (the logged means). The video counterpart of :func:`pretrain_and_probe`."""
    import io

    from selfsup.tasks.linear_probe import LinearClassifierConfig
    from selfsup.tasks.trainer import TrainerConfig
    from selfsup.tasks.training import run_training
    from selfsup.tasks.video_eval import evaluate_video_linear

    trainer_config = TrainerConfig(model_dir=str(model_dir), train_steps=train_steps,
                                   learning_rate=learning_rate, optimizer=optimizer,
                                   weight_decay=weight_decay,
                                   log_every=max(train_steps // 5, 1),
                                   checkpoint_every=train_steps)
    out = io.StringIO()
    run_training(task_name, task_config, trainer_config, "one_device", out=out)
    losses = [float(line.split("loss ")[1].split()[0])
              for line in out.getvalue().splitlines() if line.startswith("step ")]
    results = evaluate_video_linear(
        model_dir, clips_per_video=clips_per_video, log=lambda message: None,
        classifier=LinearClassifierConfig(steps=200, weight_decays=(1e-3, 1e-2, 1e-1)))
    results["losses"] = losses
    return results


def probe_summary(results: dict) -> dict:
    """Per column: best video top-1, pool's clip top-1 and its retrieval checks."""
    return {column: {"best_video_top1": max(e["video_top1"] for e in results[column].values()),
                     "pool_top1": results[column]["pool"]["top1"],
                     "pool_triplet": round(results[column]["pool"]["triplet_retrieval"], 4),
                     "pool_nn": round(results[column]["pool"]["nearest_neighbour"], 4)}
            for column in ("trained", "random_init")}


def initial_weights(task, seed: int = 1) -> tuple:
    """A freshly built model of ``task`` (seeded) and a copy of its variables' values."""
    import keras

    keras.utils.set_random_seed(seed)
    model = task.build_model()
    model(task.dummy_inputs(), training=False)
    return model, [variable.numpy() for variable in model.variables]


def one_step_from(strategy, task, weights: list, inputs, learning_rate: float) -> tuple:
    """One SGD step of ``task`` under ``strategy`` from ``weights`` on the global batch
    ``inputs`` (arrays, or a tuple of them, split along axis 0 between the replicas).

    Returns (the replicas' mean loss, the weights after the step).
    """
    import keras

    with strategy.scope():
        model = task.build_model()
        model(task.dummy_inputs(), training=False)
        for variable, value in zip(model.variables, weights, strict=True):
            variable.assign(value)
        optimizer = keras.optimizers.SGD(learning_rate)
        optimizer.build(task.trainable_variables(model))
        metrics = task.build_metrics()
    per_replica = tf.nest.flatten(inputs)[0].shape[0] // strategy.num_replicas_in_sync

    def replica_inputs(context):
        start = per_replica * context.replica_id_in_sync_group
        return tf.nest.map_structure(lambda array: array[start:start + per_replica], inputs)

    @tf.function
    def step():
        batch = strategy.experimental_distribute_values_from_function(replica_inputs)
        logs = strategy.run(task.train_step, args=(batch, model, optimizer, metrics))
        return strategy.reduce("MEAN", logs["loss"], axis=None)

    loss = float(step())
    return loss, [variable.numpy() for variable in model.variables]


def assert_two_replicas_match_one_device(task, weights: list, inputs, strategy, *,
                                         learning_rate: float = 0.5,
                                         min_move: float = 1e-2) -> float:
    """One step on one device and on the 2-replica ``strategy`` from the same ``weights`` and
    global batch: the same loss and the same weights after it (which did move). Returns the
    loss."""
    one_loss, one_weights = one_step_from(tf.distribute.OneDeviceStrategy("/cpu:0"), task,
                                          weights, inputs, learning_rate)
    two_loss, two_weights = one_step_from(strategy, task, weights, inputs, learning_rate)
    assert np.isfinite(one_loss) and abs(one_loss - two_loss) < 1e-5, (one_loss, two_loss)
    moved = max(np.abs(after - before).max()
                for after, before in zip(one_weights, weights, strict=True))
    assert moved > min_move, moved
    for one, two in zip(one_weights, two_weights, strict=True):
        np.testing.assert_allclose(two, one, atol=2e-5)
    return one_loss


def train_in_process(task, task_name: str, model_dir: Path, **trainer_settings) -> tuple:
    """Runs the real Trainer (one device, seeded) on ``task``; returns (logged losses, trainer).

    Writes the run config first, as ``run_training`` does, so the run dir restores.
    """
    import dataclasses
    import io

    import keras

    from selfsup.tasks.checkpoints import write_run_config
    from selfsup.tasks.trainer import Trainer, TrainerConfig

    config = TrainerConfig(model_dir=str(model_dir), **trainer_settings)
    write_run_config(model_dir, task_name, task.config, dataclasses.asdict(config))
    out = io.StringIO()
    keras.utils.set_random_seed(task.config.seed)
    trainer = Trainer(task, config, tf.distribute.OneDeviceStrategy("/cpu:0"), out=out)
    trainer.train()
    losses = [float(line.split("loss ")[1].split()[0])
              for line in out.getvalue().splitlines() if line.startswith("step ")]
    return losses, trainer


def assert_encoder_restores(model_dir: Path, trainer, task_name: str):
    """``restore_encoder`` gives back exactly the trained ``model.backbone``; returns it."""
    from selfsup.models.backbone import variable_map
    from selfsup.tasks.checkpoints import restore_encoder

    encoder, run_config = restore_encoder(model_dir)
    assert run_config["task"] == task_name
    trained = variable_map(trainer.model.backbone)
    restored = variable_map(encoder)
    assert trained.keys() == restored.keys()
    for key, variable in restored.items():
        np.testing.assert_array_equal(variable.numpy(), trained[key].numpy(), err_msg=key)
    return encoder


def losses_on_one_batch(task, steps: int = 12, learning_rate: float = 0.05) -> list[float]:
    """Losses of ``steps`` SGD (momentum 0.9) steps of ``task`` on its first input batch:
    if gradients reach the model, they fall."""
    import keras

    keras.utils.set_random_seed(0)
    model = task.build_model()
    optimizer = keras.optimizers.SGD(learning_rate, momentum=0.9)
    metrics = task.build_metrics()
    step = tf.function(lambda batch: task.train_step(batch, model, optimizer, metrics))
    batch = next(iter(task.build_inputs()))
    return [float(step(batch)["loss"]) for _ in range(steps)]


def seeded_first_batch(task):
    """The first batch of ``task``'s input pipeline with every seed set to 0, so a test sees
    the same clips whichever tests ran before it in the same process."""
    import keras

    keras.utils.set_random_seed(0)
    return next(iter(task.build_inputs()))


def eager_losses_on_batch(task, batch, steps: int, learning_rate: float) -> list[float]:
    """Losses of ``steps`` eager SGD (momentum 0.9) steps of ``task`` on one fixed ``batch``:
    :func:`losses_on_one_batch` without building the input pipeline again and without
    tf.function (a handful of eager steps of a 3D ResNet cost less than tracing one)."""
    import keras

    keras.utils.set_random_seed(0)
    model = task.build_model()
    optimizer = keras.optimizers.SGD(learning_rate, momentum=0.9)
    metrics = task.build_metrics()
    return [float(task.train_step(batch, model, optimizer, metrics)["loss"])
            for _ in range(steps)]


def train_on_replicas_and_restore(task_name: str, task_config, model_dir: Path, strategy):
    """Two ``run_training`` steps under ``strategy``; checks ``restore_encoder`` gives the
    checkpoint's stem kernel and returns the restored encoder."""
    from selfsup.tasks.checkpoints import restore_encoder
    from selfsup.tasks.trainer import TrainerConfig
    from selfsup.tasks.training import run_training

    trainer = TrainerConfig(model_dir=str(model_dir), train_steps=2, log_every=1,
                            checkpoint_every=2, learning_rate=0.05)
    logs = run_training(task_name, task_config, trainer, strategy)
    assert np.isfinite(logs["loss"])
    encoder, run_config = restore_encoder(model_dir)
    assert run_config["task"] == task_name
    saved = checkpoint_tensors(tf.train.latest_checkpoint(str(model_dir)))
    kernel = next(v for v in encoder.variables if v.path.endswith("stem_conv/kernel"))
    np.testing.assert_array_equal(
        kernel.numpy(), saved["model/backbone.Sstem_conv.Skernel/.ATTRIBUTES/VARIABLE_VALUE"])
    return encoder


def assert_export_reproduces(encoder, export_dir: Path, name: str, images: np.ndarray) -> None:
    """The exported SavedModel of ``encoder`` returns its ``pool`` features for ``images``
    (or clips ``[b, t, h, w, 3]``: then its uint8 ``frames`` serving signature too)."""
    from selfsup.export import export_encoder

    expected = encoder(images, training=False)["pool"].numpy()
    path = export_encoder(encoder, export_dir, name, image_size=images.shape[-2], metadata={})
    loaded = tf.saved_model.load(str(path))
    np.testing.assert_allclose(loaded(tf.constant(images)).numpy(), expected, atol=1e-5)
    if images.ndim == 5:
        frames = np.round(images * 255).astype(np.uint8)
        served = loaded.signatures["serving_default"](frames=tf.constant(frames))["features"]
        np.testing.assert_allclose(
            served.numpy(), encoder(frames / np.float32(255), training=False)["pool"].numpy(),
            atol=1e-5)


def logged_metrics(out: str) -> list[dict[str, float]]:
    """The metrics of the trainer's progress lines (``step i/n  name value ...  lr ...``)."""
    rows = []
    for line in out.splitlines():
        if line.startswith("step "):
            words = line.split()[2:]
            rows.append({words[i]: float(words[i + 1]) for i in range(0, words.index("lr"), 2)})
    return rows


class AdversarialStepper:
    """``task``'s model under ``strategy`` with plain SGD for each optimizer group and one
    traced :meth:`Task.train_step`; :meth:`run` steps from given weights on a global batch
    (split along axis 0 between the replicas) with given learning rates per group."""

    def __init__(self, strategy, task, weights: list) -> None:
        import keras

        self.strategy, self.task = strategy, task
        with strategy.scope():
            self.model = task.build_model()
            self.model(task.dummy_inputs(), training=False)
            self.optimizers = {}
            for name, group in task.optimizer_groups(self.model).items():
                self.optimizers[name] = keras.optimizers.SGD(0.1)
                self.optimizers[name].build(group.variables)
            metrics = task.build_metrics()
        self.weights = weights
        model, optimizers = self.model, self.optimizers

        @tf.function
        def step(batch):
            logs = strategy.run(task.train_step, args=(batch, model, optimizers, metrics))
            return strategy.reduce("MEAN", logs["loss"], axis=None)

        self._step = step

    def run(self, inputs, learning_rates: dict[str, float]) -> tuple[float, list]:
        for variable, value in zip(self.model.variables, self.weights, strict=True):
            variable.assign(value)
        for name, rate in learning_rates.items():
            self.optimizers[name].learning_rate = rate
        per_replica = tf.nest.flatten(inputs)[0].shape[0] // self.strategy.num_replicas_in_sync

        def replica_inputs(context):
            start = per_replica * context.replica_id_in_sync_group
            return tf.nest.map_structure(lambda array: array[start:start + per_replica], inputs)

        batch = self.strategy.experimental_distribute_values_from_function(replica_inputs)
        loss = float(self._step(batch))
        return loss, [variable.numpy() for variable in self.model.variables]

    def indices(self, group: str) -> list[int]:
        """Positions in ``model.variables`` of the group's variables."""
        ids = {id(variable) for variable in self.task.optimizer_groups(self.model)[group]
               .variables}
        return [i for i, variable in enumerate(self.model.variables) if id(variable) in ids]

    def assert_players_move_alone(self, inputs) -> None:
        """From :attr:`weights`: with one player's learning rate 0 its weights stay exactly as
        they were and every weight of the other player moves; with both set, every trainable
        weight moves. The two players' variables are disjoint and cover the trainable ones.
        (BatchNorm moving statistics belong to neither optimizer: every forward pass moves
        them.)"""
        from selfsup.tasks.adversarial import DISCRIMINATOR, GENERATOR

        model = self.model
        d_index, g_index = self.indices(DISCRIMINATOR), self.indices(GENERATOR)
        assert not set(d_index) & set(g_index)
        trainable = {id(variable) for variable in model.trainable_variables}
        assert {id(model.variables[i]) for i in d_index + g_index} == trainable

        def moved(after, index):
            return [np.abs(after[i] - self.weights[i]).max() > 0 for i in index]

        _, after = self.run(inputs, {DISCRIMINATOR: 0.0, GENERATOR: 0.1})
        assert not any(moved(after, d_index)) and all(moved(after, g_index))
        _, after = self.run(inputs, {DISCRIMINATOR: 0.1, GENERATOR: 0.0})
        assert all(moved(after, d_index)) and not any(moved(after, g_index))
        _, after = self.run(inputs, {DISCRIMINATOR: 0.1, GENERATOR: 0.1})
        assert all(moved(after, d_index + g_index))


def fashion_mnist_folder(root: Path, train: int, test: int) -> Path:
    """The first ``train`` / ``test`` Fashion-MNIST images as an image folder
    (``<split>/<label as two digits>/<i>.png``): real images, but a pass over a split reads a
    few hundred files instead of decoding all 60,000."""
    from selfsup.datasets import open_source, raw_image_label_dataset

    source = open_source("fashion_mnist")
    for split, count in (("train", train), ("test", test)):
        for i, (image, label) in enumerate(raw_image_label_dataset(source, split, 28,
                                                                   first=count)):
            folder = root / split / f"{int(label):02d}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i}.png").write_bytes(tf.io.encode_png(image).numpy())
    return root


def saved_model_tar(saved_model_dir: Path, tar_path: Path) -> Path:
    """A ``.tar.gz`` whose root is the SavedModel directory (TF Hub's compressed format)."""
    import tarfile

    tar_path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tar_path, "w:gz") as tar:
        for entry in sorted(Path(saved_model_dir).iterdir()):
            tar.add(entry, arcname=entry.name)
    return tar_path


class serving_directory:  # noqa: N801  (used as a context manager, like open())
    """``with serving_directory(root) as base_url:`` serves ``root`` over http on 127.0.0.1
    (a free port) in a thread, quietly; the server stops on exit."""

    def __init__(self, root: Path) -> None:
        import functools
        import http.server

        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))

    def __enter__(self) -> str:
        import threading

        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc_info) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
