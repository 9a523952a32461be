"""Files written whole or not at all: results, configs and pictures that other programs read.

Each is written to a hidden temporary file in the target's directory and renamed over the
target (an atomic replace on POSIX), so a reader (a resumed run, a concurrent evaluation, a
crash half-way) never sees half a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_bytes_atomically(path: str | Path, data: bytes) -> Path:
    """Writes ``data`` to ``path`` (creating its directory) in one atomic replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_bytes(data)
    partial.replace(path)
    return path


def write_text_atomically(path: str | Path, text: str) -> Path:
    """Writes UTF-8 ``text`` to ``path`` in one atomic replace."""
    return write_bytes_atomically(path, text.encode("utf-8"))


def write_json_atomically(path: str | Path, data: Any, sort_keys: bool = False) -> Path:
    """Writes ``data`` as indented JSON (and a final newline) in one atomic replace."""
    return write_text_atomically(path, json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")
