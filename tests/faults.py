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


class StopsAt(Objective):
    """Asks the run to stop at step ``at``, as SIGTERM to the command does: it leaves the
    driver's stop request in ``output_dir``, so the run checkpoints at that step's log
    (``trainer.log_every=1``) and ends; ``resume=true`` continues from there. The loss is
    the task's."""

    def __init__(self, task, device, at: int = 7, output_dir: str = "", **settings):
        super().__init__(task, device, **settings)
        self.at, self.output_dir = at, output_dir

    def __call__(self, model, inputs):
        from pathlib import Path

        from raylm.train.metrics import STOP_FILE

        if model.global_steps == self.at - 1:  # computing step `at`
            (Path(self.output_dir) / STOP_FILE).write_text("")
        return super().__call__(model, inputs)


class KilledWhileCheckpointing(Objective):
    """SIGKILLs its worker (rank ``rank``) while Ray Train writes the checkpoint of step
    ``at`` to storage: the copy goes through, its largest file is then cut to half its
    size (where the write had got to), and the process is killed before it returns, so
    the checkpoint is never registered. Once: the ``marker`` file it leaves keeps the
    restarted worker alive. The loss is the task's."""

    def __init__(self, task, device, at: int = 15, marker: str = "", rank: int = 1, **settings):
        super().__init__(task, device, **settings)
        self.at, self.marker, self.rank, self.engine = at, marker, rank, None

    def __call__(self, model, inputs):
        if self.engine is None:
            self.engine = model
            self._cut_off_uploads()
        return super().__call__(model, inputs)

    def _cut_off_uploads(self):
        import os
        import signal
        import time
        from pathlib import Path

        import torch.distributed as dist
        from ray.train.v2._internal.execution import storage

        copy = storage._pyarrow_fs_copy_files  # what persist_current_checkpoint calls

        def cut_off(source, destination, **kwargs):
            copy(source, destination, **kwargs)
            mine = dist.get_rank() == self.rank
            if self.engine.global_steps == self.at and mine and not Path(self.marker).exists():
                # As KilledOnce: let Ray Train's controller register the checkpoint before.
                time.sleep(3)
                files = [p for p in Path(destination).rglob("*") if p.is_file()]
                largest = max(files, key=lambda p: p.stat().st_size)
                os.truncate(largest, largest.stat().st_size // 2)
                Path(self.marker).write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)

        storage._pyarrow_fs_copy_files = cut_off
