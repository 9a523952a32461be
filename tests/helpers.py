"""Small helpers shared by tests (no fixtures with hidden state)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

BIN_DIR = Path(sys.executable).parent


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
