"""Pretext and downstream tasks, the trainer, and the evaluation protocols."""

from selfsup.tasks import (
    action_recognition,  # noqa: F401  (registers "action_recognition")
    autoencoder,  # noqa: F401  (registers "autoencoder", "denoising_autoencoder")
    cmc,  # noqa: F401  (registers "cmc")
    colorization,  # noqa: F401  (registers "colorization", "colorization_regression")
    context_encoder,  # noqa: F401  (registers "context_encoder")
    counting,  # noqa: F401  (registers "counting")
    cpc,  # noqa: F401  (registers "cpc")
    cubic_puzzle,  # noqa: F401  (registers "cubic_puzzle")
    deepcluster,  # noqa: F401  (registers "deepcluster")
    dpc,  # noqa: F401  (registers "dpc")
    edges,  # noqa: F401  (registers "edges")
    gan,  # noqa: F401  (registers "dcgan", "bigan")
    jigsaw,  # noqa: F401  (registers "jigsaw")
    moco,  # noqa: F401  (registers "moco")
    multitask,  # noqa: F401  (registers "multitask")
    relative_position,  # noqa: F401  (registers "relative_position")
    rotnet,  # noqa: F401  (registers "rotnet")
    rotnet3d,  # noqa: F401  (registers "rotnet3d")
    simclr,  # noqa: F401  (registers "simclr")
    split_brain,  # noqa: F401  (registers "split_brain")
    super_resolution,  # noqa: F401  (registers "super_resolution")
    vae,  # noqa: F401  (registers "vae")
    video_prediction,  # noqa: F401  (registers "video_prediction")
    video_simclr,  # noqa: F401  (registers "video_simclr")
)
from selfsup.tasks.base import TASKS, PretextModel, Task, TaskConfig, task_class

__all__ = ["TASKS", "PretextModel", "Task", "TaskConfig", "task_class"]
