"""Files written whole or not at all: results, configs and pictures that other programs read.

Each is written to a hidden temporary file in the target's directory and renamed over the
target (an atomic replace on POSIX), so a reader (a resumed run, a concurrent evaluation, a
crash half-way) never sees half a file. Whole folders (the prepared offline datasets) are
filled in a hidden sibling folder and renamed into place the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
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


@contextlib.contextmanager
def directory_written_atomically(target: str | Path) -> Iterator[Path]:
    """Yields an empty hidden sibling folder of ``target`` to fill; when the block ends without
    an error it is renamed to ``target`` (if another process made ``target`` meanwhile, theirs
    stays), and the scratch folder is removed in every case, so ``target`` never holds half."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex}"
    scratch.mkdir()
    try:
        yield scratch
        try:
            os.rename(scratch, target)
        except OSError:
            if not target.is_dir():  # another process may have won the race: fine
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
