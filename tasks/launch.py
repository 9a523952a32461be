"""``selfsup-train --num_workers=N``: N local worker processes training one model together.

Each worker is ``python -m selfsup.tasks.train_main`` with the user's other flags,
``--strategy=multi_worker`` and its own ``TF_CONFIG`` naming all N workers on 127.0.0.1 (free
ports) and its index; worker 0 is the chief (it writes the checkpoints and summaries). The
launcher prints every worker's output lines prefixed ``[worker i]``, waits for all of them,
and if one fails stops the others (MultiWorkerMirroredStrategy would otherwise wait for the
lost peer forever) and exits with the failed worker's code. On a real cluster, start one
``selfsup-train --strategy=multi_worker`` per host with that host's ``TF_CONFIG`` instead.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import TextIO

from selfsup.models.registry import ConfigError

LOCALHOST = "127.0.0.1"
STOP_GRACE_SECONDS = 10.0  # a stopped worker may be saving a checkpoint


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports that were free on 127.0.0.1 a moment ago.

    All sockets are held open until every port is chosen (so the OS hands out distinct ones),
    then closed for the workers to bind; another program could take one in between.
    """
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((LOCALHOST, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def tf_config(addresses: Sequence[str], index: int) -> dict:
    """The ``TF_CONFIG`` of worker ``index`` of a cluster of workers at ``addresses``."""
    return {"cluster": {"worker": list(addresses)}, "task": {"type": "worker", "index": index}}


def worker_args(args: Sequence[str]) -> list[str]:
    """The command-line flags for one worker: ``args`` less ``--num_workers``, plus
    ``--strategy=multi_worker`` (absl takes the last value of a flag)."""
    kept, skip_next = [], False
    for arg in args:
        if skip_next:
            skip_next = False
            continue
        if arg in ("--num_workers", "-num_workers"):
            skip_next = True
            continue
        if arg.lstrip("-").startswith("num_workers="):
            continue
        kept.append(arg)
    return [*kept, "--strategy=multi_worker"]


def check_launch_flags(num_workers: int, strategy: str, strategy_given: bool) -> None:
    """``--num_workers`` must be positive; above 1 it implies ``--strategy=multi_worker``."""
    if num_workers < 1:
        raise ConfigError(f"num_workers must be positive, got {num_workers}")
    if num_workers > 1 and strategy_given and strategy != "multi_worker":
        raise ConfigError(f"--num_workers={num_workers} runs --strategy=multi_worker, "
                          f"not --strategy={strategy}")


def _forward_lines(stream: TextIO, prefix: str, out: TextIO, lock: threading.Lock) -> None:
    for line in stream:
        with lock:
            out.write(f"{prefix}{line}")
            out.flush()


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _stop(processes: Sequence[subprocess.Popen]) -> None:
    """SIGTERM to every live worker, then SIGKILL to those still running after the grace."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for process in processes:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def launch_local_workers(num_workers: int, args: Sequence[str], out: TextIO = sys.stdout,
                         err: TextIO = sys.stderr, program: Sequence[str] | None = None,
                         poll_seconds: float = 0.2) -> int:
    """Runs ``num_workers`` training workers on 127.0.0.1 with ``args``; returns the exit code
    (0 when all succeed, else the first failed worker's code; the others are stopped).

    ``program``: the worker command before its flags (default: this Python running
    ``selfsup.tasks.train_main``).
    """
    addresses = [f"{LOCALHOST}:{port}" for port in free_ports(num_workers)]
    program = list(program or [sys.executable, "-m", "selfsup.tasks.train_main"])
    command = [*program, *worker_args(args)]
    lock = threading.Lock()
    processes: list[subprocess.Popen] = []
    threads: list[threading.Thread] = []
    previous_handler = None
    if threading.current_thread() is threading.main_thread():
        # SIGTERM to the launcher stops the workers the same way (they may save first).
        previous_handler = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        for index in range(num_workers):
            env = {**os.environ, "TF_CONFIG": json.dumps(tf_config(addresses, index))}
            process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, bufsize=1)
            processes.append(process)
            thread = threading.Thread(target=_forward_lines, daemon=True,
                                      args=(process.stdout, f"[worker {index}] ", out, lock))
            thread.start()
            threads.append(thread)
        while True:
            codes = [process.poll() for process in processes]
            failed = [(i, code) for i, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                index, code = failed[0]
                _stop(processes)
                for thread in threads:  # the workers' last lines (their errors) come first
                    thread.join(timeout=5)
                print(f"selfsup-train: error: worker {index} exited with code {code}; "
                      f"stopped the other workers", file=err, flush=True)
                return code if code > 0 else 128 - code  # killed by signal -code
            if all(code == 0 for code in codes):
                return 0
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        _stop(processes)
        return 130
    finally:
        _stop(processes)  # nothing may outlive the launcher
        for thread in threads:
            thread.join(timeout=5)
        for process in processes:
            process.stdout.close()
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
