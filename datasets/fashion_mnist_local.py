"""Offline Fashion-MNIST: prepares tfds's standard ``fashion_mnist`` from Debian's copy.

Debian's package ``dataset-fashion-mnist`` installs the original IDX files (Xiao et al. 2017,
MIT licence) under ``/usr/share/datasets/fashion-mnist``. The builder below is the standard tfds
``FashionMNIST`` builder with its download step replaced by reading those files, so what it
writes is byte-for-byte the standard ``fashion_mnist/<version>`` dataset: afterwards plain
``tfds.load("fashion_mnist")`` finds it prepared and never goes to the network.
"""

from __future__ import annotations

import os
from pathlib import Path

import tensorflow_datasets as tfds
from tensorflow_datasets.core import utils as tfds_utils
from tensorflow_datasets.image_classification import mnist as tfds_mnist

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
_IDX_FILES = {
    "train_data": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_data": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


def local_source_dir() -> Path | None:
    """The directory holding the four IDX files, or None when they are not installed.

    ``SELFSUP_FASHION_MNIST_DIR`` overrides the Debian location.
    """
    source = Path(os.environ.get("SELFSUP_FASHION_MNIST_DIR", DEBIAN_FASHION_MNIST_DIR))
    if all((source / name).is_file() for name in _IDX_FILES.values()):
        return source
    return None


class LocalFashionMNIST(tfds_mnist.FashionMNIST, skip_registration=True):
    """tfds ``fashion_mnist`` whose source files come from a local directory, not the web."""

    name = "fashion_mnist"

    # tfds derives a builder's code path from its top-level package; ``selfsup`` is a namespace
    # package, which that lookup cannot handle, so point at the standard builder's module.
    @tfds_utils.classproperty
    @classmethod
    def code_path(cls):
        return tfds_mnist.FashionMNIST.code_path

    def __init__(self, *, source_dir: Path, **kwargs) -> None:
        self._source_dir = Path(source_dir)
        super().__init__(**kwargs)

    def _split_generators(self, dl_manager):
        files = dl_manager.extract(
            {key: str(self._source_dir / name) for key, name in _IDX_FILES.items()})
        return [
            tfds.core.SplitGenerator(
                name=split,
                gen_kwargs=dict(num_examples=count, data_path=files[f"{prefix}_data"],
                                label_path=files[f"{prefix}_labels"]),
            )
            for split, prefix, count in (
                (tfds.Split.TRAIN, "train", tfds_mnist._TRAIN_EXAMPLES),
                (tfds.Split.TEST, "test", tfds_mnist._TEST_EXAMPLES),
            )
        ]


def prepare_local_fashion_mnist(data_dir: str | None = None) -> bool:
    """Writes tfds ``fashion_mnist`` into ``data_dir`` from local files; False if none exist."""
    source = local_source_dir()
    if source is None:
        return False
    builder = LocalFashionMNIST(source_dir=source, data_dir=data_dir)
    builder.download_and_prepare()
    return True
