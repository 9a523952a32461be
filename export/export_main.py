"""``selfsup-export``: exports a trained encoder as a TF Hub / TF Serving SavedModel.

Examples::

    selfsup-export --model_dir=runs/rotnet --export_dir=exports
    # → exports/rotnet_resnet_small/1/  (next free version unless --version is given)
    selfsup-export --model_dir=runs/rotnet --export_dir=exports --format=hub_tar
    # → exports/rotnet_resnet_small.tar.gz and exports/rotnet_resnet_small.md (TF Hub)
    selfsup-export --model_dir=runs/rotnet --export_dir=exports --what=pretext
    # → exports/rotnet_resnet_small_pretext/1/  (backbone + head: rotation logits)
    selfsup-export --model_dir=runs/pointcloud_ae --export_dir=exports
    # → exports/pointcloud_ae_pointnet/1/  (float32 points [batch, n, 3] → features)

Mistakes the user can fix (missing flags, bad paths, an existing version) print one line on
stderr and exit with status 2.
"""

from __future__ import annotations

import os

# TensorFlow prints INFO lines (oneDNN, CUDA probing) on import; a user can still lower it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import pathlib
import re
from typing import Any

from absl import app, flags

from selfsup.export.cli import one_line_flag_parser, usage_error

PROGRAM = "selfsup-export"

FORMAT_SAVED_MODEL = "saved_model"
FORMAT_HUB_TAR = "hub_tar"
FORMATS = [FORMAT_SAVED_MODEL, FORMAT_HUB_TAR]
WHAT_ENCODER = "encoder"
WHAT_PRETEXT = "pretext"
WHATS = [WHAT_ENCODER, WHAT_PRETEXT]
PRETEXT_SUFFIX = "_pretext"
HUB_TAR_CONFLICT = ("--format=hub_tar exports the encoder without a version; drop --version "
                    "and --what=pretext, or use --format=saved_model")

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defines this program's flags (at run time, so importing this module defines none)."""
    if "export_dir" in FLAGS:
        return
    flags.DEFINE_string("model_dir", None, "Training directory with the checkpoint and run config.")
    flags.DEFINE_string("export_dir", None, "Base dir; writes <export_dir>/<model_name>/<version>.")
    flags.DEFINE_string("model_name", None, "Served model name (default: <task>_<backbone>).")
    flags.DEFINE_integer("version", None, "Integer version to write (default: next free one).",
                         lower_bound=1)
    flags.DEFINE_enum("format", FORMAT_SAVED_MODEL, FORMATS,
                      "saved_model: TF Serving layout <export_dir>/<name>/<version>/; hub_tar: "
                      "TF Hub's compressed <export_dir>/<name>.tar.gz and model doc <name>.md.")
    flags.DEFINE_enum("what", WHAT_ENCODER, WHATS,
                      "encoder: the feature-vector encoder; pretext: the whole pretext model "
                      "(backbone + head) returning the task's predictions (saved_model only).")
    flags.DEFINE_string("asset_path", None, "hub_tar: the URL the tar.gz will be hosted at, "
                        "written as the model doc's asset-path (default: <name>.tar.gz).")


def default_model_name(run_config: dict[str, Any]) -> str:
    """``<task>_<backbone>`` lower-cased, with characters unsafe in a directory name as ``_``;
    a ``hub:<path or URL>`` backbone is named ``hub_<last path component>``."""
    backbone = run_config["backbone"]
    if backbone.startswith("hub:"):
        last = backbone[len("hub:"):].rstrip("/").rsplit("/", 1)[-1]
        backbone = "hub_" + last.removesuffix(".tar.gz")
    name = f"{run_config['task']}_{backbone}".lower()
    return re.sub(r"[^a-z0-9_.\-]+", "_", name).strip("._-") or "encoder"


def export_trained_encoder(
    backbone: Any,
    run_config: dict[str, Any],
    export_dir: str | os.PathLike,
    model_name: str | None = None,
    version: int | None = None,
) -> pathlib.Path:
    """Exports a restored encoder using its run config for the name, image size and model card."""
    from selfsup.export.saved_model import export_encoder
    from selfsup.models.registry import ConfigError

    missing = [k for k in ("task", "backbone", "dataset", "image_size") if k not in run_config]
    if missing:
        raise ConfigError(f"run config lacks {', '.join(missing)}")
    return export_encoder(
        backbone,
        export_dir,
        model_name or default_model_name(run_config),
        version,
        image_size=run_config["image_size"],
        metadata=dict(run_config),
    )


def _export(model_dir: str, export_dir: str, model_name: str | None, version: int | None,
            export_format: str = FORMAT_SAVED_MODEL, what: str = WHAT_ENCODER,
            asset_path: str | None = None) -> str:
    from selfsup.export.layout import check_model_name, resolve_version
    from selfsup.models.registry import ConfigError

    if export_format == FORMAT_HUB_TAR and (what != WHAT_ENCODER or version is not None):
        raise ConfigError(HUB_TAR_CONFLICT)
    if model_name is not None:
        check_model_name(model_name)
        # Fail before the (slow) restore when the requested output already exists.
        if export_format == FORMAT_HUB_TAR:
            from selfsup.export.hub_tar import check_hub_tar_free

            check_hub_tar_free(export_dir, model_name)
        else:
            resolve_version(os.path.join(export_dir, model_name), version)

    if what == WHAT_PRETEXT:
        from selfsup.export.pretext import export_pretext_model, restore_pretext_model

        model, task, run_config = restore_pretext_model(model_dir)
        name = model_name or default_model_name(run_config) + PRETEXT_SUFFIX
        return str(export_pretext_model(model, task, run_config, export_dir, name, version))

    from selfsup.tasks.checkpoints import restore_encoder
    from selfsup.tasks.linear_eval import read_probe_metrics
    from selfsup.tasks.point_probe import is_point_run, point_probe_metrics

    backbone, run_config = restore_encoder(model_dir)
    metrics = read_probe_metrics(model_dir)
    if is_point_run(run_config):
        metrics.update(point_probe_metrics(model_dir))
    run_config = {**run_config, "metrics": metrics}
    if export_format == FORMAT_HUB_TAR:
        from selfsup.export.hub_tar import export_hub_tar

        tar_path, doc_path = export_hub_tar(
            backbone, export_dir, model_name or default_model_name(run_config),
            image_size=run_config["image_size"], metadata=dict(run_config),
            asset_path=asset_path)
        return f"{tar_path}\n{doc_path}"
    return str(export_trained_encoder(backbone, run_config, export_dir, model_name, version))


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        return usage_error(PROGRAM, f"unexpected arguments: {' '.join(argv[1:])}")
    for name in ("model_dir", "export_dir"):
        if not getattr(FLAGS, name):
            return usage_error(PROGRAM, f"--{name} is required")
    # Checked before importing TensorFlow, so these mistakes are reported at once.
    if FLAGS.format == FORMAT_HUB_TAR and (FLAGS.what != WHAT_ENCODER or FLAGS.version):
        return usage_error(PROGRAM, HUB_TAR_CONFLICT)
    if not os.path.isdir(FLAGS.model_dir):
        return usage_error(PROGRAM, f"--model_dir {FLAGS.model_dir} is not a directory")
    if os.path.exists(FLAGS.export_dir) and not os.path.isdir(FLAGS.export_dir):
        return usage_error(PROGRAM,
                           f"--export_dir {FLAGS.export_dir} exists and is not a directory")

    from selfsup.models.registry import ConfigError

    try:
        path = _export(FLAGS.model_dir, FLAGS.export_dir, FLAGS.model_name, FLAGS.version,
                       FLAGS.format, FLAGS.what, FLAGS.asset_path)
    except (ConfigError, FileNotFoundError, NotADirectoryError, PermissionError) as error:
        return usage_error(PROGRAM, str(error))
    print(path)
    return 0


def run() -> None:
    """Console-script entry point."""
    define_flags()
    app.run(main, flags_parser=one_line_flag_parser(PROGRAM))
