"""What the training loop minimises: the task's own loss, or a method's objective that
wraps it (distillation).

An objective is built on each worker from ``cfg["objective"]``, a dict whose ``target``
names a class (``package.module:Class``) and whose other keys are its settings, so a
compression method plugs a loss into the same loop, checkpoints and fault tolerance
without a second loop. Absent, the task's loss is trained.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from ..tasks import Task


class Objective:
    """``objective(engine, inputs) -> (loss, output)``. The task objective: the loss
    transformers computes from the labels."""

    def __init__(self, task: Task, device, **settings: Any):
        self.task = task
        self.device = device

    def __call__(self, model, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
        output = model(**inputs)
        return self.task.loss(output, inputs), output


def build_objective(spec: dict[str, Any] | None, task: Task, device) -> Objective:
    if not spec:
        return Objective(task, device)
    settings = dict(spec)
    module, _, name = settings.pop("target").partition(":")
    cls = getattr(importlib.import_module(module), name)
    return cls(task, device, **settings)
