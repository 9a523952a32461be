"""Exports a whole pretext model (backbone + head) for users who want the pretext prediction.

``selfsup-export --what=pretext`` restores the run's full :class:`~selfsup.tasks.base.
PretextModel` from its latest checkpoint and writes it in the TF Serving layout
(``<export_dir>/<name>/<version>/``, atomic, never overwriting a version) with one signature:

* image tasks: ``serving_default`` on uint8 ``images`` ``[batch, height, width, 3]`` (RGB in
  [0, 255], resized to the training size);
* video tasks: ``serving_default`` on float32 ``frames`` ``[batch, time, height, width, 3]``
  (RGB in [0, 1], frames resized to the training size);

returning the task's prediction tensors: the model outputs that are not backbone endpoints
(``logits``: the head's output), plus ``ab`` for the colorization tasks (the ab prediction
decoded from the head output by the task itself). The card in ``assets.extra/`` says what each
output means; the warm-up requests are written as for encoders.

Supported: tasks whose model maps one image (or clip) batch to its outputs, i.e. whose
``dummy_inputs`` is a single ``[1, s, s, 3]`` tensor (``[1, time, s, s, 3]`` for video
encoders), e.g. rotnet, colorization, colorization_regression and the video rotnet3d. Tasks
fed several inputs (jigsaw tiles, image pairs, clip tuples, multitask) are refused with a
ConfigError.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from selfsup.export.layout import atomic_version_dir
from selfsup.export.model_card import CARD_DIR, JSON_NAME, MARKDOWN_NAME, jsonable
from selfsup.export.saved_model import (
    SERVING_DEFAULT,
    _Forward,
    _resize_if_needed,
    is_video_encoder,
    normalize_image_size,
    signature_input_specs,
)
from selfsup.export.warmup import warmup_inputs, write_warmup_requests
from selfsup.models.registry import ConfigError

IMAGES_INPUT = "images"
FRAMES_INPUT = "frames"
HEAD_OUTPUT = "logits"
AB_OUTPUT = "ab"
SUPPORTED_EXAMPLES = ("rotnet", "colorization", "colorization_regression")
# What the outputs of the tasks we know mean (others get a generic description).
OUTPUT_MEANINGS = {
    "rotnet": {
        HEAD_OUTPUT: "rotation logits; class k means the image looks rotated by k × 90° "
                     "counter-clockwise (0°, 90°, 180°, 270°; Gidaris et al. 2018), so an "
                     "upright image should score highest on class 0",
    },
    "rotnet3d": {
        HEAD_OUTPUT: "rotation logits of the clip; class k means every frame looks rotated by "
                     "k × 90° counter-clockwise (Jing et al. 2018, as RotNet's classes)",
    },
    "colorization": {
        HEAD_OUTPUT: "logits over the 313 quantised ab bins of CIE Lab, per output pixel "
                     "(Zhang et al. 2016)",
        AB_OUTPUT: "predicted ab channels of CIE Lab per output pixel: the annealed mean of "
                   "the bin distribution (Zhang et al. 2016, temperature from the run config)",
    },
    "colorization_regression": {
        HEAD_OUTPUT: "regressed ab channels divided by 110 per output pixel (Zhang et al. "
                     "2016's L2 baseline)",
        AB_OUTPUT: "predicted ab channels of CIE Lab per output pixel (logits × 110)",
    },
}


def check_pretext_exportable(task: Any, model: keras.Model) -> bool:
    """Whether ``task``'s ``model`` takes one image (or clip) batch; returns ``video`` or
    raises ConfigError naming what is supported."""
    inputs = task.dummy_inputs()
    backbone = getattr(model, "backbone", None)
    video = backbone is not None and is_video_encoder(backbone)
    size = task.config.image_size
    ok = (backbone is not None and isinstance(inputs, tf.Tensor)
          and inputs.shape.rank == (5 if video else 4)
          and tuple(inputs.shape[-3:]) == (size, size, 3))
    if not ok:
        raise ConfigError(
            f"--what=pretext supports tasks whose model maps one image (or clip) batch to its "
            f"outputs (e.g. {', '.join(SUPPORTED_EXAMPLES)}); task "
            f"{type(task).__name__} takes {_describe(inputs)}; use --what=encoder")
    return video


def _describe(inputs: Any) -> str:
    if isinstance(inputs, tf.Tensor):
        return f"a {inputs.shape.as_list()} tensor"
    if isinstance(inputs, list | tuple):
        return f"{len(inputs)} inputs"
    return type(inputs).__name__


def restore_pretext_model(model_dir: str | os.PathLike) -> tuple[keras.Model, Any, dict]:
    """The run's full model (backbone + head) restored from its latest checkpoint, its Task,
    and its run config; refuses (ConfigError) tasks :func:`check_pretext_exportable` rejects."""
    from selfsup.models.backbone import variable_map
    from selfsup.tasks.checkpoints import latest_checkpoint, read_run_config, task_from_run_config

    run_config = read_run_config(model_dir)
    task = task_from_run_config({**run_config, "synchronized_bn": False})
    model = task.build_model()
    check_pretext_exportable(task, model)
    model(task.dummy_inputs(), training=False)
    status = tf.train.Checkpoint(model=variable_map(model)).restore(latest_checkpoint(model_dir))
    status.expect_partial().assert_existing_objects_matched()
    return model, task, run_config


class PretextServingModule(tf.Module):
    """The exported object of a pretext model: ``serving_default`` (uint8 ``images`` or float32
    ``frames``) → the task's prediction tensors (see the module docstring)."""

    variables = None  # tf.Module computes it as a property; here a saved attribute.

    def __init__(self, model: keras.Model, task: Any, image_size: int | tuple[int, int],
                 video: bool, clip_length: int = 2) -> None:
        super().__init__(name="selfsup_pretext")
        self._image_size = normalize_image_size(image_size)
        self._video = video
        self._forward = _Forward(model)
        self._forward.task = task  # On the plain holder: kept out of the saved object graph.
        self._forward.endpoints = set(model.backbone(
            task.dummy_inputs(), training=False)) - {HEAD_OUTPUT}
        self.variables = list(self._forward.copies.values())
        if video:
            spec = tf.TensorSpec([None, None, None, None, 3], tf.float32, name=FRAMES_INPUT)
            self.serve = tf.function(self._serve_frames, input_signature=[spec])
            example = np.zeros((1, clip_length, *self._image_size, 3), np.float32)
        else:
            spec = tf.TensorSpec([None, None, None, 3], tf.uint8, name=IMAGES_INPUT)
            self.serve = tf.function(self._serve_images, input_signature=[spec])
            example = np.zeros((1, *self._image_size, 3), np.uint8)
        self.output_shapes = {name: [None, *value.shape[1:]]
                              for name, value in self.serve(example).items()}

    def _predictions(self, floats: tf.Tensor) -> dict[str, tf.Tensor]:
        outputs = self._forward(_resize_if_needed(floats, self._image_size), training=False)
        predictions = {k: v for k, v in outputs.items() if k not in self._forward.endpoints}
        decode = getattr(self._forward.task, "predicted_ab", None)
        if decode is not None and HEAD_OUTPUT in predictions:
            try:
                predictions[AB_OUTPUT] = tf.cast(decode(predictions[HEAD_OUTPUT]), tf.float32)
            except NotImplementedError:
                pass
        return predictions

    def _serve_images(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._predictions(tf.cast(images, tf.float32) / 255.0)

    def _serve_frames(self, frames: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._predictions(frames)

    def serving_signatures(self) -> dict[str, tf.types.experimental.ConcreteFunction]:
        """``{"serving_default": ...}``."""
        return {SERVING_DEFAULT: self.serve.get_concrete_function()}


def pretext_card(model_name: str, version: int, task_name: str, run_config: dict[str, Any],
                 image_size: tuple[int, int], video: bool,
                 output_shapes: dict[str, list]) -> dict[str, Any]:
    """The model card of a pretext export: what goes in, what each output is."""
    meanings = OUTPUT_MEANINGS.get(task_name, {})
    if video:
        inputs = "float32 [batch, time, height, width, 3] 'frames', RGB in [0, 1]"
    else:
        inputs = "uint8 [batch, height, width, 3] 'images', RGB in [0, 255]"
    return jsonable({
        "model_name": model_name, "version": version, "kind": "pretext_model",
        "pretext_task": task_name, "backbone": run_config.get("backbone"),
        "dataset": run_config.get("dataset"), "metrics": run_config.get("metrics", {}),
        "input": {"serving_default": inputs, "image_size": list(image_size),
                  "value_range": [0.0, 1.0] if video else [0, 255]},
        "outputs": {name: {"shape": shape, "dtype": "float32",
                           "meaning": meanings.get(name, f"the {task_name} model's {name!r} "
                                                         "output")}
                    for name, shape in output_shapes.items()},
    })


def pretext_card_markdown(card: dict[str, Any]) -> str:
    """The pretext card as markdown."""
    height, width = card["input"]["image_size"]
    lines = [
        f"# selfsup/{card['model_name']}/{card['version']}", "",
        f"The full `{card['pretext_task']}` pretext model (a `{card['backbone']}` encoder and "
        f"its task head) trained on `{card['dataset']}`, for its pretext predictions.", "",
        f"- `serving_default`: {card['input']['serving_default']}, resized to "
        f"{height}×{width}.", "",
        "| output | shape | meaning |", "|---|---|---|",
        *[f"| {name} | {out['shape']} | {out['meaning']} |"
          for name, out in card["outputs"].items()],
    ]
    return "\n".join(lines) + "\n"


def export_pretext_model(
    model: keras.Model,
    task: Any,
    run_config: dict[str, Any],
    export_dir: str | os.PathLike,
    model_name: str,
    version: int | None = None,
) -> pathlib.Path:
    """Exports the restored pretext ``model`` of ``task`` to ``<export_dir>/<model_name>/
    <version>/`` (atomic; an existing version raises VersionExistsError) and returns the path."""
    video = check_pretext_exportable(task, model)
    size = normalize_image_size(run_config["image_size"])
    clip_length = int(run_config.get("clip_length") or 2)
    with atomic_version_dir(export_dir, model_name, version) as (temp_dir, version):
        module = PretextServingModule(model, task, size, video, clip_length)
        signatures = module.serving_signatures()
        tf.saved_model.save(module, str(temp_dir), signatures=signatures)
        write_warmup_requests(temp_dir, model_name, warmup_inputs(
            signature_input_specs(signatures[SERVING_DEFAULT]), size, time_steps=clip_length))
        card = pretext_card(model_name, version, run_config["task"], run_config, size, video,
                            module.output_shapes)
        card_dir = pathlib.Path(temp_dir) / CARD_DIR
        card_dir.mkdir(parents=True, exist_ok=True)
        (card_dir / JSON_NAME).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
        (card_dir / MARKDOWN_NAME).write_text(pretext_card_markdown(card))
    return pathlib.Path(export_dir) / model_name / str(version)
