"""Pretext and downstream tasks, the trainer, and the evaluation protocols."""

from selfsup.tasks import rotnet  # noqa: F401  (registers "rotnet")
from selfsup.tasks.base import TASKS, PretextModel, Task, TaskConfig, task_class

__all__ = ["TASKS", "PretextModel", "Task", "TaskConfig", "task_class"]
