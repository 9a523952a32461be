"""What an evaluation probes: the encoders of a training run, or an exported SavedModel.

An *encoder* here is a callable ``encoder(images, training=False) -> {endpoint: tensor}`` on
float32 RGB images ``[batch, height, width, 3]`` in [0, 1] (clips ``[batch, time, height, width,
3]`` for video), endpoints in input-to-output order; a Keras backbone already is one.

* :func:`run_encoders`: a run's latest checkpoint (column ``"trained"``) and a freshly
  initialised twin of the same architecture (``"random_init"``).
* :func:`saved_model_encoder`: a SavedModel from a local directory or an http(s) URL (through
  the TF Hub cache; a URL to a ``.tar.gz`` or one that serves ``?tf-hub-format=compressed``),
  column ``"saved_model"``. An export of ``selfsup-export`` has ``endpoints`` (every backbone
  endpoint, unpooled), so the probe sees exactly the features of the checkpoint it came from,
  and records its training dataset and image size. Any other TF2 image feature-vector
  SavedModel (``__call__(images)`` → ``[batch, features]``, e.g. from tfhub.dev / Kaggle Models)
  gives one endpoint, ``"feature_vector"``; the caller then names the dataset and image size
  (unless a selfsup model card next to it records them: exports older than ``endpoints``).

Both return a :class:`SubjectInfo` describing what was loaded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable
from typing import Any

from selfsup.models.registry import ConfigError

TRAINED = "trained"
RANDOM_INIT = "random_init"
SAVED_MODEL = "saved_model"
# The one endpoint of a SavedModel that only has a feature-vector ``__call__``.
FEATURE_VECTOR = "feature_vector"
_URL = re.compile(r"^https?://", re.IGNORECASE)

Encoder = Callable[..., dict]


@dataclasses.dataclass(frozen=True)
class SubjectInfo:
    """What was loaded for an evaluation.

    ``source``: ``"run"`` or ``"saved_model"``; ``location``: the model dir, or the SavedModel
    path/URL as given; ``local_path``: where it was read from (the Hub cache dir for a URL);
    ``endpoints``: names in encoder order; ``dataset``/``image_size``: what the encoder was
    trained on, None when the SavedModel does not record it (``image_size`` is an int for square
    images, else ``(height, width)``); ``video``: the encoder takes clips (``clip_length``: the
    run's clip length); ``checkpoint`` and ``run_config`` only for a run; ``selfsup_export``: the
    SavedModel is a ``selfsup-export`` (it has ``endpoints`` and metadata).
    """

    source: str
    location: str
    local_path: str
    endpoints: tuple[str, ...]
    dataset: str | None
    image_size: int | tuple[int, int] | None
    video: bool = False
    clip_length: int | None = None
    task: str | None = None
    backbone: str | None = None
    backbone_kwargs: dict[str, Any] | None = None
    data_dir: str | None = None
    checkpoint: str | None = None
    run_config: dict[str, Any] | None = None
    selfsup_export: bool = False

    def data_settings(self, dataset: str | None = None,
                      image_size: int | None = None) -> tuple[str, int | tuple[int, int]]:
        """``(dataset, image_size)`` to evaluate on: the given values (e.g. flags) where set,
        else the recorded ones; a ConfigError names the flag when neither is known."""
        dataset = dataset or self.dataset
        image_size = image_size or self.image_size
        missing = [flag for flag, value in (("--dataset", dataset), ("--image_size", image_size))
                   if not value]
        if missing:
            raise ConfigError(
                f"{self.location} does not record its training "
                f"{' and '.join(m.lstrip('-') for m in missing)}; pass {' and '.join(missing)}")
        return dataset, image_size

    def description(self) -> dict[str, Any]:
        """What to record with results, as ``linear_probe.json`` always has: ``model_dir``,
        ``checkpoint``, ``task``, ``backbone`` for a run; ``saved_model`` (as given),
        ``saved_model_path``, ``task``, ``backbone`` for a SavedModel."""
        where = ({"model_dir": self.location, "checkpoint": self.checkpoint}
                 if self.source == "run" else
                 {"saved_model": self.location, "saved_model_path": self.local_path})
        return {**where, "task": self.task, "backbone": self.backbone}

    def as_json(self) -> dict[str, Any]:
        """The fields worth recording with results (no run config)."""
        fields = dataclasses.asdict(self)
        fields.pop("run_config")
        fields["endpoints"] = list(self.endpoints)
        if isinstance(self.image_size, tuple):
            fields["image_size"] = list(self.image_size)
        return fields


def _labelled_run_dataset(model_dir: str, run_config: dict[str, Any]) -> str | None:
    """The run's dataset, unless it has no labels to probe with (audio-visual data)."""
    from selfsup.datasets.av_sources import is_av_dataset

    dataset = run_config.get("dataset")
    if dataset and is_av_dataset(dataset):
        raise ConfigError(f"{model_dir} trained on {dataset} (frames with sound, no labels): "
                          "give --dataset=<a labelled image dataset> to probe its encoder on, "
                          "e.g. --dataset=fashion_mnist")
    return dataset


def run_encoders(model_dir: str | os.PathLike, *, seed: int = 0, with_random_init: bool = True,
                 dataset: str | None = None) -> tuple[dict[str, Encoder], SubjectInfo]:
    """The trained encoder of the run in ``model_dir`` (latest checkpoint) and, with
    ``with_random_init``, a random-init encoder of the same architecture seeded with ``seed``
    (the baseline every probe table of Jing & Tian's survey, §7, compares against).
    ``info.dataset`` is ``dataset`` if given, else the run's, which must then have labels
    (an ``av_correspondence`` run's frames-with-sound data has none: one-line error).

    Returns ``({"trained": encoder, "random_init": encoder}, info)``.
    """
    from selfsup.tasks.checkpoints import (
        build_encoder,
        encoder_example_input,
        latest_checkpoint,
        restore_encoder,
    )

    model_dir = os.fspath(model_dir)
    if not os.path.isdir(model_dir):
        raise ConfigError(f"model dir {model_dir} does not exist")
    trained, run_config = restore_encoder(model_dir)
    encoders: dict[str, Encoder] = {TRAINED: trained}
    if with_random_init:
        encoders[RANDOM_INIT] = build_encoder(run_config, seed)
    example = encoder_example_input(trained, run_config)
    endpoints = tuple(trained(example, training=False))
    video = getattr(trained, "input_rank", 4) == 5
    info = SubjectInfo(
        source="run", location=model_dir, local_path=model_dir, endpoints=endpoints,
        dataset=dataset or _labelled_run_dataset(model_dir, run_config),
        image_size=run_config.get("image_size"),
        video=video, clip_length=run_config.get("clip_length") if video else None,
        task=run_config.get("task"), backbone=run_config.get("backbone"),
        backbone_kwargs=run_config.get("backbone_kwargs"), data_dir=run_config.get("data_dir"),
        checkpoint=latest_checkpoint(model_dir), run_config=run_config)
    return encoders, info


def resolve_saved_model(handle: str | os.PathLike) -> str:
    """The local directory of a SavedModel given as a path or an http(s) URL (downloaded and
    unpacked into the TF Hub cache, ``$TFHUB_CACHE_DIR``); ConfigError if it is not one."""
    handle = os.fspath(handle)
    path = handle
    if _URL.match(handle):
        import tensorflow_hub as hub  # Imported lazily: it pulls in tf-keras.

        try:
            path = hub.resolve(handle)
        except Exception as error:  # noqa: BLE001  (any download/unpack failure is the user's)
            message = str(error).strip().splitlines()
            raise ConfigError(f"cannot download SavedModel {handle}: "
                              f"{message[0] if message else type(error).__name__}") from None
    import tensorflow as tf

    if not tf.io.gfile.isdir(path):
        raise ConfigError(f"SavedModel {handle} does not exist (or is not a directory)")
    if not any(tf.io.gfile.exists(os.path.join(path, name))
               for name in ("saved_model.pb", "saved_model.pbtxt")):
        raise ConfigError(f"{handle} is not a SavedModel directory (no saved_model.pb)")
    return path


def read_encoder_info(loaded: Any) -> dict[str, Any] | None:
    """The ``selfsup_encoder.json`` metadata of a loaded selfsup export, else None."""
    import tensorflow as tf

    from selfsup.export.saved_model import ENCODER_INFO_ATTRIBUTE, ENCODER_INFO_FORMAT

    asset = getattr(loaded, ENCODER_INFO_ATTRIBUTE, None)
    if asset is None or not hasattr(asset, "asset_path"):
        return None
    info = json.loads(tf.io.read_file(asset.asset_path).numpy().decode("utf-8"))
    return info if info.get("format") == ENCODER_INFO_FORMAT else None


def read_model_card_info(path: str) -> dict[str, Any] | None:
    """What an export's model card (``assets.extra/model_card.json``, written by every
    ``selfsup-export``, including those older than ``selfsup_encoder.json``) says about the
    training setup, in the metadata asset's keys; None without a card."""
    import tensorflow as tf

    from selfsup.export.model_card import CARD_DIR, HUB_VIDEO_TASK, JSON_NAME

    card_path = os.path.join(path, CARD_DIR, JSON_NAME)
    if not tf.io.gfile.exists(card_path):
        return None
    with tf.io.gfile.GFile(card_path) as file:
        card = json.load(file)
    return {"task": card.get("pretext_task"), "backbone": card.get("backbone"),
            "dataset": card.get("dataset"),
            "image_size": (card.get("input") or {}).get("image_size"),
            "video": card.get("hub_task") == HUB_VIDEO_TASK}


def _square_or_pair(size: list[int] | None) -> int | tuple[int, int] | None:
    if not size:
        return None
    return int(size[0]) if size[0] == size[1] else (int(size[0]), int(size[1]))


def saved_model_encoder(handle: str | os.PathLike) -> tuple[Encoder, SubjectInfo]:
    """An encoder callable for the SavedModel at ``handle`` (local dir or http(s) URL).

    A ``selfsup-export`` gives every backbone endpoint in encoder order (its ``endpoints``
    function, unpooled: the probe pools maps itself, so the numbers equal those of the
    checkpoint); any other SavedModel with a ``__call__`` gives ``{"feature_vector": output}``.
    The callable is inference only (``training=True`` raises ValueError).
    """
    import tensorflow as tf

    location = os.fspath(handle)
    path = resolve_saved_model(location)
    try:
        loaded = tf.saved_model.load(path)
    except (OSError, ValueError, tf.errors.OpError) as error:
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConfigError(f"cannot load SavedModel {location}: {first}") from None
    metadata = read_encoder_info(loaded)
    selfsup_export = metadata is not None and hasattr(loaded, "endpoints")
    if selfsup_export:
        names = tuple(metadata["endpoints"])
        forward = loaded.endpoints

        def outputs(images: tf.Tensor) -> dict[str, tf.Tensor]:
            # A loaded function returns its dict sorted by key: restore the encoder order.
            endpoints = forward(images, training=False)
            return {name: endpoints[name] for name in names}
    elif callable(loaded):
        names = (FEATURE_VECTOR,)

        def outputs(images: tf.Tensor) -> dict[str, tf.Tensor]:
            features = loaded(images)
            if not isinstance(features, tf.Tensor):
                raise ConfigError(f"{location}: __call__ returned {type(features).__name__}, "
                                  "not a [batch, features] tensor")
            return {FEATURE_VECTOR: tf.cast(features, tf.float32)}
    else:
        raise ConfigError(f"{location} has neither endpoints nor __call__: not a TF2 image "
                          "feature-vector SavedModel")

    def encoder(images: Any, training: bool = False) -> dict[str, tf.Tensor]:
        if training:
            raise ValueError("a SavedModel encoder is evaluated frozen (training=False)")
        return outputs(tf.convert_to_tensor(images, tf.float32))

    if metadata is None:
        metadata = read_model_card_info(path) or {}
    info = SubjectInfo(
        source=SAVED_MODEL, location=location, local_path=path, endpoints=names,
        dataset=metadata.get("dataset"), image_size=_square_or_pair(metadata.get("image_size")),
        video=bool(metadata.get("video", False)), clip_length=metadata.get("clip_length"),
        task=metadata.get("task"), backbone=metadata.get("backbone"),
        backbone_kwargs=metadata.get("backbone_kwargs"),
        selfsup_export=selfsup_export)
    # Keeps the loaded object (and its variables) alive as long as the encoder.
    encoder.saved_model = loaded
    return encoder, info
