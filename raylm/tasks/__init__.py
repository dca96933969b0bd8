"""Tasks: each one's encoding, batches, loss, scores, Auto class and endpoint in one home.

``get_task("seq_cls")`` is how the rest of raylm learns what differs between tasks; a new
task is a module here that subclasses :class:`Task` and is decorated with
:func:`register_task`.
"""

from . import clm, masked_lm, seq_cls, token_cls  # noqa: F401  (each registers itself)
from .base import TASKS, Batcher, Task, get_task, register_task

__all__ = ["TASKS", "Batcher", "Task", "get_task", "register_task"]
