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


class KilledOnce(Objective):
    """SIGKILLs its own Ray Train worker (rank ``rank``) at step ``at``, once: the
    ``marker`` file it leaves keeps the restarted worker alive. The loss is the task's,
    so the run is the same run as one never killed."""

    def __init__(self, task, device, at: int = 13, marker: str = "", rank: int = 1, **settings):
        super().__init__(task, device, **settings)
        self.at, self.marker, self.rank, self.calls = at, marker, rank, 0

    def __call__(self, model, inputs):
        import os
        import signal
        import time
        from pathlib import Path

        import torch.distributed as dist

        self.calls += 1
        mine = not dist.is_initialized() or dist.get_rank() == self.rank
        if self.calls == self.at and mine and not Path(self.marker).exists():
            # Ray Train's controller registers a reported checkpoint at its next poll of
            # the workers (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 0.5 s here): wait past a few,
            # or the restart may find none yet and start over.
            time.sleep(3)
            Path(self.marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().__call__(model, inputs)
