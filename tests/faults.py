"""Training objectives that raise a real fault inside a real Ray Train worker. Workers
import this module by name, as they do tests/custom_heads.py (see conftest's PYTHONPATH)."""

import torch

from raylm.train.objective import Objective


class AllocatesTooMuch(Objective):
    """At its first step, asks torch's CPU allocator for 128 TiB: the allocator's own
    out-of-memory error, refused at once without touching a page of memory."""

    def __call__(self, model, inputs):
        torch.empty(2**45, dtype=torch.uint8)
        return super().__call__(model, inputs)


class LossBecomesNaN(Objective):
    """From micro-step ``at`` on, the loss is NaN (as an overflow makes it): backward then
    fills gradients and, after the step, the weights with NaN."""

    def __init__(self, task, device, at: int = 6, **settings):
        super().__init__(task, device, **settings)
        self.at, self.calls = at, 0

    def __call__(self, model, inputs):
        loss, output = super().__call__(model, inputs)
        self.calls += 1
        return (loss * float("nan") if self.calls >= self.at else loss), output
