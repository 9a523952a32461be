"""Image sources: any tensorflow-datasets image dataset, or a plain folder of images.

``--dataset`` takes a tfds name (``cifar10``, ``stl10``, ``imagenet2012`` with manual files, …)
or ``image_folder:<root>`` for ``<root>/<split>/<label>/<image>`` trees (tfds's ImageFolder,
checked when opened: files that do not decode are skipped and listed, see
:mod:`selfsup.datasets.image_folder`).
Fashion-MNIST is prepared offline from Debian's copy when that is installed (see
:mod:`selfsup.datasets.fashion_mnist_local`); everything else is tfds's normal path.
"""

from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

from selfsup.datasets.fashion_mnist_local import prepare_local_fashion_mnist
from selfsup.datasets.image_folder import (
    IMAGE_EXTENSIONS,
    CheckedImageFolder,
    open_image_folder,
    skipped_message,
)
from selfsup.models.registry import ConfigError

IMAGE_FOLDER_PREFIX = "image_folder:"


@dataclasses.dataclass(frozen=True)
class ImageSource:
    """A resolved dataset: its tfds builder and the feature keys holding image and label."""

    name: str
    builder: tfds.core.DatasetBuilder
    image_key: str
    label_key: str | None

    @property
    def is_folder(self) -> bool:
        """Whether this is an ``image_folder:`` (files checked when opened)."""
        return isinstance(self.builder, CheckedImageFolder)

    def skipped_report(self, split: str) -> str | None:
        """One line naming the files of ``split`` skipped as unreadable (None: none were)."""
        skipped = self.builder.skipped.get(split.split("[")[0]) if self.is_folder else None
        return skipped_message(split, skipped) if skipped else None

    @property
    def splits(self) -> list[str]:
        return sorted(self.builder.info.splits.keys())

    @property
    def num_classes(self) -> int | None:
        if self.label_key is None:
            return None
        return self.builder.info.features[self.label_key].num_classes

    def num_examples(self, split: str) -> int:
        return self.builder.info.splits[split].num_examples

    @property
    def default_image_size(self) -> int:
        """The images' own side length when the dataset fixes it, else 224 (ImageNet)."""
        shape = self.builder.info.features[self.image_key].shape
        return shape[0] if shape and shape[0] and shape[0] == shape[1] else 224

    @property
    def eval_split(self) -> str:
        """The held-out split used for reporting: ``test`` when present, else ``validation``."""
        for split in ("test", "validation", "val"):
            if split in self.builder.info.splits:
                return split
        raise ConfigError(f"dataset {self.name!r} has no test or validation split "
                          f"(splits: {', '.join(self.splits)})")

    def check_split(self, split: str) -> None:
        """ConfigError unless ``split`` exists and holds images (folders: whole splits only)."""
        base = split.split("[")[0]
        layout = (f" (an image folder's splits are <root>/<split>/<label>/ folders of "
                  f"{'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} files)" if self.is_folder else "")
        if base not in self.builder.info.splits:
            raise ConfigError(f"dataset {self.name!r} has no split {base!r}; "
                              f"splits: {', '.join(self.splits)}{layout}")
        if self.is_folder and base != split:
            raise ConfigError(f"image folders take whole splits, not {split!r}: "
                              f"use --train_split={base} (or a folder of the images wanted)")
        if not self.num_examples(base):
            skipped = self.skipped_report(base)
            raise ConfigError(f"split {base!r} of {self.name!r} holds no readable images"
                              f"{'; ' + skipped if skipped else ''}{layout}")


def _tfds_builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise ConfigError(
            f"unknown dataset {name!r}: not a tensorflow-datasets name "
            f"(see tfds.list_builders()) nor {IMAGE_FOLDER_PREFIX}<dir>") from None
    if builder.is_prepared():
        return builder
    if builder.name == "fashion_mnist" and prepare_local_fashion_mnist(data_dir):
        return tfds.builder(name, data_dir=data_dir)
    try:
        builder.download_and_prepare()
    except Exception as error:  # tfds raises many types for missing files / no network
        raise ConfigError(
            f"dataset {name!r} is not prepared in {builder.data_dir} and could not be "
            f"downloaded or built ({type(error).__name__}: {str(error).splitlines()[0][:200]}); "
            "prepare it with tfds (manual files go in <data_dir>/downloads/manual)") from None
    return builder


def open_source(dataset: str, data_dir: str | None = None) -> ImageSource:
    """Resolves ``dataset`` to an :class:`ImageSource`, preparing tfds data when needed."""
    if dataset.startswith(IMAGE_FOLDER_PREFIX):
        builder = open_image_folder(dataset[len(IMAGE_FOLDER_PREFIX):])
    else:
        builder = _tfds_builder(dataset, data_dir)
    features = builder.info.features
    image_keys = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
    if not image_keys:
        raise ConfigError(f"dataset {dataset!r} has no image feature")
    supervised = builder.info.supervised_keys
    image_key = supervised[0] if supervised and supervised[0] in image_keys else image_keys[0]
    label_key = supervised[1] if supervised else None
    if label_key is not None and not isinstance(features[label_key], tfds.features.ClassLabel):
        label_key = None
    return ImageSource(dataset, builder, image_key, label_key)
