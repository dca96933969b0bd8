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
