"""TF Hub's compressed format: ``<export_dir>/<name>.tar.gz`` plus its model doc ``<name>.md``.

``hub.load(url)`` of a URL ending in ``.tar.gz`` (or answering ``?tf-hub-format=compressed``)
downloads the archive, unpacks it into ``TFHUB_CACHE_DIR`` and loads the SavedModel found at
the archive root. So the archive holds the content of one SavedModel directory
(``saved_model.pb``, ``variables/``, ``assets/``, ``assets.extra/`` ...) at its root, the way
``tar -czf <name>.tar.gz --owner=0 --group=0 -C <saved_model_dir> <entries>`` would write it:
every member owned by uid/gid 0 with no user/group name, every name relative and starting with
a word character (no ``./`` prefix).

Both files appear atomically: they are written in a hidden staging directory next to them and
hard-linked into place, which fails (instead of replacing) if a file of that name exists, so an
existing archive is never overwritten and a failed export leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import tarfile
import tempfile
from typing import Any

from selfsup.export.layout import check_model_name
from selfsup.export.model_card import CARD_DIR, JSON_NAME, hub_model_doc
from selfsup.models.registry import ConfigError

STAGING_PREFIX = ".tmp-hub-"


class ArchiveExistsError(ConfigError):
    """``<name>.tar.gz`` or ``<name>.md`` already exists; Hub exports never overwrite them."""


def hub_tar_paths(export_dir: str | os.PathLike, model_name: str) -> tuple[pathlib.Path,
                                                                          pathlib.Path]:
    """``(<export_dir>/<name>.tar.gz, <export_dir>/<name>.md)``."""
    base = pathlib.Path(export_dir) / check_model_name(model_name)
    return base.with_name(base.name + ".tar.gz"), base.with_name(base.name + ".md")


def check_hub_tar_free(export_dir: str | os.PathLike, model_name: str) -> None:
    """Raises :class:`ArchiveExistsError` if either output file of the Hub export exists."""
    for path in hub_tar_paths(export_dir, model_name):
        if path.exists():
            raise ArchiveExistsError(
                f"{path} already exists; pick another --model_name or remove it")


def _root_owned(member: tarfile.TarInfo) -> tarfile.TarInfo:
    member.uid = member.gid = 0
    member.uname = member.gname = ""
    return member


def write_saved_model_tar(saved_model_dir: str | os.PathLike,
                          tar_path: str | os.PathLike) -> pathlib.Path:
    """Writes the content of ``saved_model_dir`` to a gzip tar at ``tar_path``: entries at the
    archive root in sorted order, owned by uid/gid 0."""
    with tarfile.open(tar_path, "w:gz") as tar:
        for entry in sorted(pathlib.Path(saved_model_dir).iterdir()):
            tar.add(entry, arcname=entry.name, filter=_root_owned)
    return pathlib.Path(tar_path)


def _link_into_place(sources: list[pathlib.Path], targets: list[pathlib.Path]) -> None:
    """Hard-links every source to its target, all or none (never replacing an existing file)."""
    done: list[pathlib.Path] = []
    try:
        for source, target in zip(sources, targets, strict=True):
            try:
                os.link(source, target)
            except FileExistsError as error:
                raise ArchiveExistsError(f"{target} already exists") from error
            done.append(target)
    except BaseException:
        for target in done:
            target.unlink(missing_ok=True)
        raise


def export_hub_tar(
    backbone: Any,
    export_dir: str | os.PathLike,
    model_name: str,
    *,
    image_size: int | tuple[int, int],
    metadata: dict[str, Any],
    asset_path: str | None = None,
) -> tuple[pathlib.Path, pathlib.Path]:
    """Exports ``backbone`` as ``<export_dir>/<model_name>.tar.gz`` (TF Hub's compressed
    SavedModel) and ``<export_dir>/<model_name>.md`` (its tfhub.dev model doc, whose
    ``asset-path`` is ``asset_path``, by default the archive's file name). Returns both paths.

    The SavedModel is the same as :func:`~selfsup.export.saved_model.export_encoder` writes
    (signatures, model card and warm-up requests included).
    """
    from selfsup.export.saved_model import export_encoder

    tar_path, doc_path = hub_tar_paths(export_dir, model_name)
    check_hub_tar_free(export_dir, model_name)
    export_dir = pathlib.Path(export_dir)
    created = [d for d in (export_dir, *export_dir.parents) if not d.exists()]
    export_dir.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix=STAGING_PREFIX, dir=export_dir) as staging:
            staging = pathlib.Path(staging)
            version_dir = export_encoder(backbone, staging / "saved_model", model_name, 1,
                                         image_size=image_size, metadata=metadata)
            card = json.loads((version_dir / CARD_DIR / JSON_NAME).read_text())
            staged_tar = write_saved_model_tar(version_dir, staging / tar_path.name)
            staged_doc = staging / doc_path.name
            staged_doc.write_text(hub_model_doc(card, asset_path or tar_path.name))
            _link_into_place([staged_tar, staged_doc], [tar_path, doc_path])
    except BaseException:
        for directory in created:  # Innermost first; rmdir only succeeds when empty.
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise
    return tar_path, doc_path

