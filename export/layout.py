"""The TF Serving layout ``<export_dir>/<model_name>/<integer version>/``, written atomically.

TF Serving watches ``<export_dir>/<model_name>/`` and serves the highest integer sub-directory, so
a version directory must appear complete or not at all. :func:`atomic_version_dir` hands out a
hidden temporary directory next to the versions (TF Serving ignores names that are not integers)
and renames it into place only once everything inside has been written.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import re
import shutil
import tempfile
from collections.abc import Iterator

from selfsup.models.registry import ConfigError

_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
TEMP_PREFIX = ".tmp-export-"


class VersionExistsError(ConfigError):
    """The requested export version already exists; exports never overwrite a version."""


def check_model_name(model_name: str) -> str:
    """Returns ``model_name`` if it is a valid single directory name, else raises ConfigError."""
    if not isinstance(model_name, str) or not _MODEL_NAME.fullmatch(model_name):
        raise ConfigError(
            f"invalid model name {model_name!r}: use letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return model_name


def existing_versions(model_dir: str | os.PathLike) -> list[int]:
    """Sorted integer versions present in ``model_dir`` (empty if it does not exist)."""
    model_dir = pathlib.Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(
        int(entry.name) for entry in model_dir.iterdir()
        if entry.name.isdigit() and entry.is_dir()
    )


def next_version(model_dir: str | os.PathLike) -> int:
    """The version after the highest existing one, starting at 1."""
    versions = existing_versions(model_dir)
    return versions[-1] + 1 if versions else 1


def resolve_version(model_dir: str | os.PathLike, version: int | None) -> int:
    """Checks a requested version (or picks the next one when ``version`` is None)."""
    if version is None:
        return next_version(model_dir)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError(f"version must be a positive integer, got {version!r}")
    if (pathlib.Path(model_dir) / str(version)).exists():
        raise VersionExistsError(
            f"version {version} already exists in {model_dir}; pick another --version or omit it"
        )
    return version


@contextlib.contextmanager
def atomic_version_dir(
    export_dir: str | os.PathLike, model_name: str, version: int | None = None
) -> Iterator[tuple[pathlib.Path, int]]:
    """Yields ``(temp_dir, version)``; on success renames ``temp_dir`` to the version directory.

    On any exception the temporary directory is removed, and so are the directories this call
    created on the way (``<export_dir>`` and ``<export_dir>/<model_name>``) while they are empty,
    so a failed export leaves nothing behind.
    """
    model_dir = pathlib.Path(export_dir) / check_model_name(model_name)
    version = resolve_version(model_dir, version)
    created = [d for d in (model_dir, *model_dir.parents) if not d.exists()]
    model_dir.mkdir(parents=True, exist_ok=True)
    temp_dir = pathlib.Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=model_dir))
    try:
        yield temp_dir, version
        final_dir = model_dir / str(version)
        if final_dir.exists():  # Someone else exported this version meanwhile.
            raise VersionExistsError(f"version {version} already exists in {model_dir}")
        # rename() is atomic within a filesystem and fails if final_dir appeared and is non-empty.
        os.rename(temp_dir, final_dir)
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        for directory in created:  # Innermost first; rmdir only succeeds when empty.
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise
