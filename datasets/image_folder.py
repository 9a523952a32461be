"""Image folders checked once when they are opened: unreadable files are skipped and counted.

tfds's ``ImageFolder`` lists ``<root>/<split>/<label>/*.{jpg,jpeg,png}`` and decodes them inside
tf.data, so one truncated download would end a run mid-training with a tf.data traceback.
:class:`CheckedImageFolder` decodes every file of a split of at most
:data:`DECODE_CHECK_MAX_FILES` images once, when the folder is opened (one parallel tf.data pass
with ``ignore_errors``: the indices that come out are the files that decode), drops the others
from the split and keeps their names and a reason for the report. Bigger splits are not decoded
up front (a full pass over ImageNet would take longer than many runs); their pipelines drop
files that fail to decode with ``Dataset.ignore_errors`` and a logged warning.

What the decode does with the rest (tfds's ``Image`` feature: ``decode_image`` with 3 channels,
uint8): grayscale is repeated to RGB, alpha is dropped, 16-bit PNGs are scaled to 8 bits; tiny
images (1×1, 3×5) decode and are resized by the pipelines like any other.
"""

from __future__ import annotations

import dataclasses
import os

import tensorflow as tf
import tensorflow_datasets as tfds

from selfsup.models.registry import ConfigError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")  # what tfds's ImageFolder lists
# Splits up to this size are decoded once when opened (measured: 1000 64×80 PNG/JPEG files
# in 0.4-0.7 s on two busy cores, so ~10 s at the limit); bigger ones stream unchecked.
DECODE_CHECK_MAX_FILES = 20_000
SHOWN_NAMES = 5  # unreadable files named in a report; the count covers all of them
# Leading bytes of the formats tf.io.decode_image reads (to say why a file was skipped).
IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM",
                    b"RIFF")


@dataclasses.dataclass(frozen=True, order=True)
class SkippedFile:
    """A file left out of a split: its path below the folder root and why."""

    name: str
    reason: str


def skip_reason(path: str) -> str:
    """Why ``path`` (which failed to decode) was skipped: empty, not an image, or damaged."""
    with tf.io.gfile.GFile(path, "rb") as file:
        head = file.read(16)
    if not head:
        return "empty file"
    if not head.startswith(IMAGE_SIGNATURES):
        return "not an image"
    return "truncated or corrupt"


def undecodable_indices(paths: list[str]) -> list[int]:
    """Positions in ``paths`` of the files ``tf.io.decode_image`` cannot decode to RGB.

    One parallel tf.data pass; ``ignore_errors`` drops the elements whose decode failed, so
    the missing indices are the bad files (no per-file Python loop, no traceback).
    """
    if not paths:
        return []

    def decodes(index, path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return index, tf.shape(image)[0]

    dataset = tf.data.Dataset.from_tensor_slices((tf.range(len(paths), dtype=tf.int64), paths))
    dataset = dataset.map(decodes, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.ignore_errors().batch(1024)
    good = {int(index) for indices, _ in dataset.as_numpy_iterator() for index in indices}
    return [index for index in range(len(paths)) if index not in good]


class CheckedImageFolder(tfds.folder_dataset.ImageFolder):
    """tfds's ImageFolder without the files that do not decode (see the module docstring).

    ``skipped``: split → the files left out; ``unchecked``: splits too big to decode up front.
    """

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.root = os.path.expanduser(root)  # as the parent joins it into the file paths
        self.skipped: dict[str, tuple[SkippedFile, ...]] = {}
        self.unchecked: set[str] = set()
        # tfds keeps the split's examples in this (private) list; filtering it and the split
        # sizes is the whole difference to the parent class.
        for split, examples in self._split_examples.items():
            if len(examples) > DECODE_CHECK_MAX_FILES:
                self.unchecked.add(split)
                continue
            bad = set(undecodable_indices([example.image_path for example in examples]))
            if not bad:
                continue
            self.skipped[split] = tuple(sorted(
                SkippedFile(self._relative(examples[i].image_path),
                            skip_reason(examples[i].image_path)) for i in bad))
            self._split_examples[split] = [e for i, e in enumerate(examples) if i not in bad]
        self.info.set_splits(tfds.core.SplitDict([
            tfds.core.SplitInfo(name=split, shard_lengths=[len(examples)], num_bytes=0)
            for split, examples in self._split_examples.items()]))

    def _relative(self, path: str) -> str:
        return path[len(self.root):].lstrip("/") if path.startswith(self.root) else path


def skipped_message(split: str, skipped: tuple[SkippedFile, ...]) -> str:
    """One line: ``skipped 2 unreadable files in train: a/x.jpg (empty file), ...``."""
    shown = ", ".join(f"{file.name} ({file.reason})" for file in skipped[:SHOWN_NAMES])
    more = f" (first {SHOWN_NAMES} shown)" if len(skipped) > SHOWN_NAMES else ""
    noun = "file" if len(skipped) == 1 else "files"
    return f"skipped {len(skipped)} unreadable {noun} in {split}: {shown}{more}"


def open_image_folder(root: str) -> CheckedImageFolder:
    """The checked folder at ``root``; a one-line ConfigError when it holds no image at all."""
    if not tf.io.gfile.isdir(root):
        raise ConfigError(f"image folder {root!r} does not exist")
    builder = CheckedImageFolder(root)
    if not any(split.num_examples for split in builder.info.splits.values()):
        skipped = sum(len(files) for files in builder.skipped.values())
        found = f" ({skipped} unreadable files skipped)" if skipped else ""
        raise ConfigError(
            f"image folder {root!r} holds no readable images{found}; put "
            f"{'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} files in <root>/<split>/<label>/")
    return builder
