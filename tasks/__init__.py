"""Pretext and downstream tasks, the trainer, and the evaluation protocols."""

from selfsup.tasks import (
    autoencoder,  # noqa: F401  (registers "autoencoder", "denoising_autoencoder")
    cmc,  # noqa: F401  (registers "cmc")
    colorization,  # noqa: F401  (registers "colorization", "colorization_regression")
    context_encoder,  # noqa: F401  (registers "context_encoder")
    counting,  # noqa: F401  (registers "counting")
    cpc,  # noqa: F401  (registers "cpc")
    deepcluster,  # noqa: F401  (registers "deepcluster")
    edges,  # noqa: F401  (registers "edges")
    gan,  # noqa: F401  (registers "dcgan", "bigan")
    jigsaw,  # noqa: F401  (registers "jigsaw")
    moco,  # noqa: F401  (registers "moco")
    multitask,  # noqa: F401  (registers "multitask")
    relative_position,  # noqa: F401  (registers "relative_position")
    rotnet,  # noqa: F401  (registers "rotnet")
    simclr,  # noqa: F401  (registers "simclr")
    split_brain,  # noqa: F401  (registers "split_brain")
    super_resolution,  # noqa: F401  (registers "super_resolution")
    vae,  # noqa: F401  (registers "vae")
)
from selfsup.tasks.base import TASKS, PretextModel, Task, TaskConfig, task_class

__all__ = ["TASKS", "PretextModel", "Task", "TaskConfig", "task_class"]
