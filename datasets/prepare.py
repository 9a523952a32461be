"""``python -m selfsup.datasets.prepare [names...]``: make datasets available offline.

Run by the setup command for the embedded default (Fashion-MNIST from Debian's package); any
other tfds name is prepared the normal tfds way (which needs network or manual files).
"""

from __future__ import annotations

import os

# TensorFlow prints INFO lines (oneDNN, CUDA probing) on import; a user can still lower it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import sys

from absl import app, flags

from selfsup.models.registry import ConfigError

flags.DEFINE_string("data_dir", None, "tensorflow-datasets data dir (default: tfds's own).")


def main(argv: list[str]) -> None:
    from selfsup.datasets.sources import open_source

    names = argv[1:] or ["fashion_mnist"]
    try:
        for name in names:
            source = open_source(name, flags.FLAGS.data_dir)
            counts = ", ".join(f"{split} {source.num_examples(split)}" for split in source.splits)
            print(f"{name}: ready in {source.builder.data_dir} ({counts})")
    except ConfigError as error:
        print(f"selfsup prepare: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
