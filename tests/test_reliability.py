"""Pre-emption and failures: signals, kill -9, half-written checkpoints, non-finite steps and
--deterministic (issue 10, "Reliability")."""

from __future__ import annotations

import dataclasses
import io
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from helpers import BIN_DIR, ONE_STAGE, SUBSET, checkpoint_tensors, run_cli
from selfsup.models.registry import ConfigError
from selfsup.tasks.base import TaskConfig
from selfsup.tasks.determinism import seed_everything
from selfsup.tasks.preemption import StopSignals, TrainingStopped
from selfsup.tasks.rotnet import RotNetTask
from selfsup.tasks.simclr import SimCLRConfig
from selfsup.tasks.trainer import Trainer, TrainerConfig, TrainingError
from selfsup.tasks.training import run_training

ITERATIONS = "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"


# --- Signals ------------------------------------------------------------------------------


def test_stop_signals_record_the_first_signal_and_restore_the_handlers():
    # Python's own Ctrl-C handler as the previous one (pytest-xdist workers ignore SIGINT).
    outer_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        previous_term = signal.getsignal(signal.SIGTERM)
        with StopSignals() as stop:
            assert stop.received is None
            signal.raise_signal(signal.SIGTERM)
            assert stop.received == signal.SIGTERM
            # A second signal: its previous behaviour at once (here Python's Ctrl-C).
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(signal.SIGINT)
            assert stop.received == signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) is previous_term
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, outer_int)


def test_stopped_runs_exit_with_128_plus_the_signal_number():
    assert TrainingStopped(signal.SIGTERM, 7, "ckpt-7").exit_code == 143
    assert TrainingStopped(signal.SIGINT, 7, "ckpt-7").exit_code == 130


# --- A tiny task whose chosen steps go wrong -------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PoisonConfig:
    """Which steps go wrong and how: ``"input"`` feeds NaN images (NaN loss, NaN BatchNorm
    statistics), ``"gradient"`` keeps the loss finite but makes the head's gradient NaN."""

    steps: tuple[int, ...] = ()
    kind: str = "input"
    replica: int | None = None  # only this replica's batch (None: every replica's)


class PoisonedRotNet(RotNetTask):
    """RotNet whose batches for :attr:`poison` steps carry a NaN (batch ``i`` feeds replica
    ``i mod R`` at step ``i // R + 1``: the trainer's one-pipeline order)."""

    def __init__(self, config, poison: PoisonConfig) -> None:
        super().__init__(config)
        self.poison = poison

    def build_inputs(self, input_context=None):
        replicas = input_context.num_replicas_in_sync if input_context else 1
        poison = self.poison
        steps = tf.constant(poison.steps or (-1,), tf.int64)

        def mark(index, batch):
            images, labels = batch
            bad = tf.reduce_any(tf.equal(index // replicas + 1, steps))
            if poison.replica is not None:
                bad = tf.logical_and(bad, tf.equal(index % replicas, poison.replica))
            if poison.kind == "input":
                images = tf.where(bad, tf.fill(tf.shape(images), np.nan), images)
            return (images, bad), labels

        return super().build_inputs(input_context).enumerate().map(mark)

    def compute_loss(self, inputs, model, training):
        (images, bad), labels = inputs
        loss, labels, outputs = super().compute_loss((images, labels), model, training)
        if self.poison.kind == "gradient":
            kernel = model.head.trainable_variables[0]
            # sqrt at 0: value 0, derivative inf; inf × 0 = NaN reaches the kernel's gradient.
            # tf.cond, not tf.where: the untaken branch must not enter the gradient.
            loss += tf.cond(bad, lambda: tf.sqrt(0.0 * tf.reduce_sum(kernel)),
                            lambda: tf.constant(0.0))
        return loss, labels, outputs


def _tiny_config(seed: int = 3) -> TaskConfig:
    return TaskConfig(backbone_kwargs=dict(ONE_STAGE), train_split=SUBSET, global_batch_size=8,
                      seed=seed)


def _trainer(model_dir: Path, steps: int, poison: PoisonConfig = PoisonConfig(),
             strategy=None, out=None, **settings) -> tuple[Trainer, io.StringIO]:
    """A seeded Trainer of the poisoned tiny RotNet (one device unless ``strategy``)."""
    config = _tiny_config()
    seed_everything(config.seed)
    out = out if out is not None else io.StringIO()
    trainer_config = TrainerConfig(model_dir=str(model_dir), train_steps=steps,
                                   learning_rate=0.05, **settings)
    strategy = strategy or tf.distribute.OneDeviceStrategy("/cpu:0")
    return Trainer(PoisonedRotNet(config, poison), trainer_config, strategy, out=out), out


def _all_finite(tensors: dict[str, np.ndarray]) -> bool:
    return all(np.isfinite(value).all() for value in tensors.values()
               if np.issubdtype(value.dtype, np.floating))


# --- Non-finite steps --------------------------------------------------------------------


def test_nan_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(tmp_path):
    """A NaN at a checkpoint step between log steps: before, the loss was only looked at on
    log steps, and this step's checkpoint was saved with NaN weights."""
    trainer, _ = _trainer(tmp_path, 8, PoisonConfig(steps=(4,)), log_every=100,
                          checkpoint_every=2)
    with pytest.raises(TrainingError, match=r"loss is nan at step 4;.*ckpt-2\b"):
        trainer.train()
    latest = tf.train.latest_checkpoint(str(tmp_path))
    assert latest.endswith("ckpt-2")
    assert sorted(p.name for p in tmp_path.glob("ckpt-*.index")) == ["ckpt-2.index"]
    saved = checkpoint_tensors(latest)
    assert saved[ITERATIONS] == 2 and _all_finite(saved)


def test_finite_loss_with_nan_gradient_never_saves_nan_weights(tmp_path):
    trainer, _ = _trainer(tmp_path, 8, PoisonConfig(steps=(4,), kind="gradient"),
                          log_every=100, checkpoint_every=2)
    with pytest.raises(TrainingError, match=r"weights are not finite after step 4.*ckpt-2\b"):
        trainer.train()
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-2")
    assert not np.isfinite(trainer.model.head.trainable_variables[0].numpy()).all()


def _without_counter(tensors):
    return {name: value for name, value in tensors.items() if name != ITERATIONS}


def test_skipped_nonfinite_steps_leave_every_replica_as_before(tmp_path, two_replica_strategy):
    """Step 3: NaN images on replica 1 only (its loss, gradients and BatchNorm statistics);
    step 5: a NaN gradient under a finite loss. Each is undone on both replicas (weights,
    BatchNorm statistics, momentum), the step counter still advances, and training goes on."""
    strategy = two_replica_strategy
    poison = PoisonConfig(steps=(3,), replica=1)
    trainer, out = _trainer(tmp_path / "input", 6, poison, strategy, log_every=3,
                            checkpoint_every=1, skip_nonfinite_steps=True, max_checkpoints=10)
    trainer.train()
    for variable in trainer.model.variables:
        first, second = strategy.experimental_local_results(variable.value)
        np.testing.assert_array_equal(first.numpy(), second.numpy(), err_msg=variable.path)
    gradient, _ = _trainer(tmp_path / "gradient", 6, PoisonConfig(steps=(5,), kind="gradient"),
                           log_every=3, checkpoint_every=1, skip_nonfinite_steps=True,
                           max_checkpoints=10)
    gradient.train()

    for run, bad in (("input", 3), ("gradient", 5)):
        saved = {step: checkpoint_tensors(str(tmp_path / run / f"ckpt-{step}"))
                 for step in (bad - 1, bad, bad + 1)}
        assert [saved[step][ITERATIONS] for step in saved] == [bad - 1, bad, bad + 1]
        before, after, next_ = (_without_counter(saved[step]) for step in saved)
        for name in before:
            np.testing.assert_array_equal(after[name], before[name], err_msg=f"{run}: {name}")
        # The comparison has teeth: the next (good) step moves the weights again.
        assert any(not np.array_equal(next_[name], after[name]) for name in after)
        assert _all_finite(saved[bad + 1])
    log = out.getvalue()
    assert any(line.startswith("step 3/") and line.endswith("skipped 1")
               for line in log.splitlines()), log
    assert "1 non-finite step(s) skipped" in log


@pytest.mark.slow  # The message itself is checked in-process by the NaN-stop tests above.
def test_a_diverging_run_ends_with_one_line_naming_the_step(tmp_path):
    """``selfsup-train`` with a learning rate of 1e30: the weights overflow after step 1 and
    step 2's loss is NaN; exit 1, one line, no traceback, nothing saved."""
    result = run_cli("selfsup-train", f"--model_dir={tmp_path}", "--train_steps=20",
                     "--batch_size=8", "--checkpoint_every=100", "--strategy=one_device",
                     f"--train_split={SUBSET}", "--learning_rate=1e30",
                     *(f"--backbone_param={name}={value}" for name, value in ONE_STAGE.items()))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("selfsup-train:")]
    assert errors == ["selfsup-train: error: loss is nan at step 2; stopped without saving, the "
                      "last good checkpoint is none (no step saved yet) (--skip_nonfinite_steps "
                      "skips such steps instead)"], result.stderr
    assert tf.train.latest_checkpoint(str(tmp_path)) is None


def test_consecutive_skip_limit_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="max_consecutive_skips must be positive, got 0"):
        TrainerConfig(model_dir=str(tmp_path), skip_nonfinite_steps=True,
                      max_consecutive_skips=0)


def test_too_many_nonfinite_steps_in_a_row_stop_the_run(tmp_path):
    trainer, _ = _trainer(tmp_path, 8, PoisonConfig(steps=(3, 4)), log_every=100,
                          checkpoint_every=2, skip_nonfinite_steps=True, max_consecutive_skips=2)
    with pytest.raises(TrainingError, match=r"2 non-finite steps in a row \(steps 3\.\.4.*ckpt-2"):
        trainer.train()
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-2")


# --- Interrupted runs --------------------------------------------------------------------


class _SignalAtStep(io.StringIO):
    """Trainer output that sends ``signum`` to this process when step ``step`` is reported,
    i.e. while the loop is between steps ``step`` and ``step + 1``."""

    def __init__(self, signum: int, step: int) -> None:
        super().__init__()
        self.signum, self.step = signum, step

    def write(self, text: str) -> int:
        if text.startswith(f"step {self.step}/"):
            # Without the trainer's handler this would end the test process (SIGTERM).
            assert signal.getsignal(self.signum).__self__.__class__ is StopSignals
            os.kill(os.getpid(), self.signum)
        return super().write(text)


def test_ctrl_c_saves_the_current_step_and_the_resumed_run_ends_with_the_same_weights(
        tmp_path):
    """SIGINT in-process (SIGTERM: the CLI test below)."""
    signum = signal.SIGINT
    assert threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signum)
    settings = dict(log_every=1, checkpoint_every=100)
    trainer, _ = _trainer(tmp_path / "stopped", 6, out=_SignalAtStep(signum, 3), **settings)
    with pytest.raises(TrainingStopped) as stopped:
        trainer.train()
    assert signal.getsignal(signum) is previous
    assert (stopped.value.signal, stopped.value.step) == (signum, 3)
    assert str(stopped.value) == (f"stopped by {signum.name} at step 3; checkpoint "
                                  f"{tmp_path / 'stopped' / 'ckpt-3'}; re-run the same command "
                                  "to resume")
    assert checkpoint_tensors(str(tmp_path / "stopped" / "ckpt-3"))[ITERATIONS] == 3

    resumed, out = _trainer(tmp_path / "stopped", 6, **settings)
    resumed.train()
    assert "resuming from step 3" in out.getvalue()
    _trainer(tmp_path / "whole", 6, **settings)[0].train()
    expected = checkpoint_tensors(str(tmp_path / "whole" / "ckpt-6"))
    actual = checkpoint_tensors(str(tmp_path / "stopped" / "ckpt-6"))
    assert expected.keys() == actual.keys()
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


def test_half_written_checkpoints_are_never_picked_up(tmp_path):
    """A kill during a save leaves data files, tf's ``<prefix>_temp/`` shard dir or a
    temporary index-state file, but no entry in the ``checkpoint`` index (written last,
    atomically): a restart resumes from the last complete checkpoint and ends as an
    uninterrupted run."""
    # A constant learning rate: the first run's schedule does not depend on its length.
    settings = dict(log_every=100, checkpoint_every=2, lr_schedule="constant")
    first, _ = _trainer(tmp_path / "run", 4, **settings)
    first.train()
    run = tmp_path / "run"
    # Step 6 written completely but not yet entered in the index: the kill came in between.
    # (Other values than a real step 6 would give, so picking it up could not go unnoticed.)
    for variable in first.model.trainable_variables:
        variable.assign(variable + 1.0)
    first.optimizer.iterations.assign(6)
    first.checkpoint.write(str(run / "ckpt-6"))
    # Step 8 half-way: truncated files and the merge's temporary shard.
    data = (run / "ckpt-4.data-00000-of-00001").read_bytes()
    (run / "ckpt-8.data-00000-of-00001").write_bytes(data[: len(data) // 2])
    (run / "ckpt-8.index").write_bytes(b"\x00garbage")
    (run / "ckpt-8_temp").mkdir()
    (run / "ckpt-8_temp" / "part-00000-of-00001.data-00000-of-00001").write_bytes(data[:100])
    (run / "checkpoint.tmp0123456789abcdef").write_text('model_checkpoint_path: "ckpt-8"\n')
    assert tf.train.latest_checkpoint(str(run)).endswith("ckpt-4")

    resumed, out = _trainer(run, 8, **settings)
    resumed.train()
    assert "resuming from step 4" in out.getvalue()
    _trainer(tmp_path / "whole", 8, **settings)[0].train()
    expected = checkpoint_tensors(str(tmp_path / "whole" / "ckpt-8"))
    actual = checkpoint_tensors(tf.train.latest_checkpoint(str(run)))
    assert actual[ITERATIONS] == 8
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


class _Lines:
    """A process's output lines, read in a thread so that waiting for one can time out."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.queue: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(process.stdout,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            self.queue.put(line)
        self.queue.put(None)

    def wait_for(self, prefix: str, timeout: float = 300) -> bool:
        """Reads up to a line starting with ``prefix``; False if the output ended first."""
        deadline = time.monotonic() + timeout
        while (line := self.queue.get(timeout=max(deadline - time.monotonic(), 0.1))) is not None:
            self.seen.append(line)
            if line.startswith(prefix):
                return True
        return False

    def text(self) -> str:
        """Everything the process printed (waits for its output to end)."""
        self.wait_for("\0")
        return "".join(self.seen)


def _train_cli(model_dir: Path, steps: int) -> subprocess.Popen:
    """The tiny deterministic RotNet run of these tests, as ``selfsup-train``."""
    return subprocess.Popen(
        [str(BIN_DIR / "selfsup-train"), f"--model_dir={model_dir}", f"--train_steps={steps}",
         "--batch_size=16", "--checkpoint_every=3", "--log_every=1", "--deterministic",
         "--strategy=one_device", "--seed=1", f"--train_split={SUBSET}",
         *(f"--backbone_param={name}={value}" for name, value in ONE_STAGE.items())],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


def _last_step(output: str) -> int:
    return max(int(line.split()[1].split("/")[0]) for line in output.splitlines()
               if line.startswith("step "))


def _interrupt_and_resume(tmp_path: Path, seed: int, signals: list[signal.Signals]) -> None:
    """Runs the CLI once uninterrupted and once stopped by each of ``signals`` in turn (each
    at a random step of a random point of its run, restarting after each) and checks that
    both end with bitwise-equal weights."""
    steps = 24
    rng = np.random.default_rng(seed)
    reference = _train_cli(tmp_path / "reference", steps)
    model_dir = tmp_path / "interrupted"
    resumed_from = 0
    for signum in signals:
        process = _train_cli(model_dir, steps)
        lines = _Lines(process)
        stop_at = int(rng.integers(resumed_from + 1, resumed_from + 6))
        assert lines.wait_for(f"step {stop_at}/"), lines.text()
        time.sleep(rng.uniform(0.0, 0.1))  # anywhere in the next steps, saves included
        process.send_signal(signum)
        returncode = process.wait(timeout=300)
        output = lines.text()
        expected_code = -signal.SIGKILL if signum == signal.SIGKILL else 128 + signum
        assert returncode == expected_code, output
        if resumed_from:
            assert f"resuming from step {resumed_from} " in output, output
        latest = tf.train.latest_checkpoint(str(model_dir))
        saved = int(latest.rsplit("-", 1)[1]) if latest else 0  # killed before the first save
        if signum == signal.SIGTERM:  # a checkpoint of the step the run had reached
            assert saved == _last_step(output), output
            assert f"stopped by SIGTERM at step {saved}; checkpoint {latest}" in output
        else:
            assert resumed_from <= saved <= _last_step(output), output
        if latest:
            assert checkpoint_tensors(latest)[ITERATIONS] == saved
        resumed_from = saved

    final = _train_cli(model_dir, steps)
    output = final.communicate(timeout=600)[0]
    assert final.returncode == 0, output
    assert f"resuming from step {resumed_from} " in output
    reference_output = reference.communicate(timeout=600)[0]
    assert reference.returncode == 0, reference_output
    expected = checkpoint_tensors(str(tmp_path / "reference" / f"ckpt-{steps}"))
    actual = checkpoint_tensors(str(model_dir / f"ckpt-{steps}"))
    assert expected.keys() == actual.keys()
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


def test_killed_and_terminated_runs_resume_to_the_same_weights(tmp_path):
    """SIGKILL, SIGTERM, SIGKILL at random steps of one run (seeded), each followed by a
    restart: the end weights equal an uninterrupted run's, bit for bit."""
    _interrupt_and_resume(tmp_path, 0, [signal.SIGKILL, signal.SIGTERM, signal.SIGKILL])


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_killed_runs_resume_to_the_same_weights_for_more_seeds(tmp_path, seed):
    _interrupt_and_resume(tmp_path, seed, [signal.SIGKILL] * 3 + [signal.SIGTERM])


# --- --deterministic -------------------------------------------------------------------------


@pytest.fixture
def op_determinism_restored():
    """TF op determinism is process-wide and has no public off switch: put it back after the
    test so other tests in this worker run as they would alone."""
    from tensorflow.python.framework import config as tf_config

    was_enabled = tf_config.is_op_determinism_enabled()
    yield
    if not was_enabled:
        tf_config.disable_op_determinism()


def _simclr_weights(model_dir: Path, seed: int) -> dict[str, np.ndarray]:
    config = SimCLRConfig(backbone_kwargs=dict(ONE_STAGE), train_split=SUBSET,
                          global_batch_size=8, seed=seed, projection_hidden_units=(16,),
                          projection_dim=8)
    trainer = TrainerConfig(model_dir=str(model_dir), train_steps=3, log_every=3,
                            checkpoint_every=3, learning_rate=0.05)
    run_training("simclr", config, trainer, "one_device", deterministic=True, out=io.StringIO())
    return checkpoint_tensors(str(model_dir / "ckpt-3"))


def test_deterministic_runs_give_bitwise_equal_weights(tmp_path, op_determinism_restored):
    """SimCLR: random crops, colour jitter, blur and shuffling, all from the seed."""
    first = _simclr_weights(tmp_path / "first", seed=5)
    second = _simclr_weights(tmp_path / "second", seed=5)
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(second[name], first[name], err_msg=name)
    other = _simclr_weights(tmp_path / "other", seed=6)
    assert any(not np.array_equal(other[name], first[name]) for name in first)


# --- Several workers -----------------------------------------------------------------------


def _worker_pid(launcher_pid: int, index: int) -> int:
    """The process id of worker ``index`` started by the launcher (read from /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue  # gone meanwhile
        if parent == launcher_pid and any(
                item.startswith(b"TF_CONFIG=") and f'"index": {index}'.encode() in item
                for item in environ):
            return int(entry.name)
    raise AssertionError(f"no worker {index} under process {launcher_pid}")


@pytest.mark.slow
def test_a_signal_to_one_worker_stops_every_worker_after_the_same_step(tmp_path):
    """SIGTERM to the non-chief worker only: both stop after the same step (else the chief
    would wait for it in the next step's all-reduce), the chief saves that step, and the
    restarted workers resume from it."""
    tiny = [f"--train_split={SUBSET}", "--batch_size=8", "--log_every=1",
            "--checkpoint_every=100", "--seed=3", "--task=rotnet", f"--model_dir={tmp_path}",
            *(f"--backbone_param={name}={value}" for name, value in ONE_STAGE.items())]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    launcher = subprocess.Popen([str(BIN_DIR / "selfsup-train"), "--num_workers=2",
                                 "--train_steps=500", *tiny], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=env)
    lines = _Lines(launcher)
    assert lines.wait_for("[worker 0] step 3/"), lines.text()
    os.kill(_worker_pid(launcher.pid, 1), signal.SIGTERM)
    assert launcher.wait(timeout=300) == 143, lines.text()
    output = lines.text()
    steps = [int(line.split()[3].split("/")[0]) for line in output.splitlines()
             if line.startswith("[worker 0] step ")]
    stopped_at = steps[-1]
    assert (f"[worker 0] stopped by another worker's signal at step {stopped_at}; checkpoint "
            f"{tmp_path / f'ckpt-{stopped_at}'}") in output, output
    assert stopped_at < 500
    assert checkpoint_tensors(str(tmp_path / f"ckpt-{stopped_at}"))[ITERATIONS] == stopped_at

    resumed = subprocess.run([str(BIN_DIR / "selfsup-train"), "--num_workers=2",
                              f"--train_steps={stopped_at + 2}", *tiny], capture_output=True,
                             text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"[worker 0] resuming from step {stopped_at} " in resumed.stdout
