"""Pretext and downstream tasks, the trainer, and the evaluation protocols."""

from selfsup.tasks import (
    counting,  # noqa: F401  (registers "counting")
    deepcluster,  # noqa: F401  (registers "deepcluster")
    rotnet,  # noqa: F401  (registers "rotnet")
)
from selfsup.tasks.base import TASKS, PretextModel, Task, TaskConfig, task_class

__all__ = ["TASKS", "PretextModel", "Task", "TaskConfig", "task_class"]
