"""Out of memory, said once: what ran out, at which settings, and which knobs free memory.

A worker that runs out of memory otherwise ends in a page of DeepSpeed and Ray traceback
(and, with ``trainer.max_failures``, the same page again per restart) that never names a
setting. Device OOM (``torch.OutOfMemoryError``) and the host allocator's refusal are
caught in the worker; a worker that Ray's memory monitor killed for the node's memory is
recognised on the driver. Each becomes one :class:`ConfigError` line.
"""

from __future__ import annotations

from typing import Any

from ..config import ConfigError

KEY = "trainer.micro_batch_size"
# What an experienced DeepSpeed user would turn, in the order they cost the least speed.
KNOBS = (
    "lower trainer.micro_batch_size (raise trainer.grad_accum to keep the global batch), "
    "raise deepspeed.zero_stage or offload (deepspeed=zero3_offload), or set deepspeed=auto "
    "to pick what fits (`raylm plan <the same overrides>` prints its estimate)"
)
# The host allocators' words: torch's CPU allocator, and DeepSpeed's pinned buffers.
HOST_OOM = ("DefaultCPUAllocator: can't allocate memory", "not enough memory", "std::bad_alloc")


def memory_kind(exc: BaseException) -> str | None:
    """``"GPU"`` or ``"host"`` if ``exc`` (or what it wraps) means memory ran out, else None."""
    import torch

    try:
        from ray.exceptions import OutOfMemoryError as RayOutOfMemory
    except ImportError:  # pragma: no cover (ray is a dependency)
        RayOutOfMemory = ()  # noqa: N806

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, torch.OutOfMemoryError):
            return "GPU"
        if isinstance(exc, MemoryError) or (
            isinstance(exc, RuntimeError) and any(s in str(exc) for s in HOST_OOM)
        ):
            return "host"
        if isinstance(exc, RayOutOfMemory):
            return "host"  # Ray's memory monitor killed the worker for the node's memory
        exc = exc.__cause__ or getattr(exc, "cause", None) or exc.__context__
    return None


def out_of_memory(kind: str, c: dict[str, Any], step: int | None = None) -> ConfigError:
    tr, ds = c["trainer"], c["deepspeed"]
    where = f" at step {step}" if step is not None else ""
    offload = [k for k in ("offload_optimizer", "offload_param") if ds.get(k)]
    setting = (
        f"deepspeed.zero_stage={ds['zero_stage']}"
        + (f" with {' and '.join(offload)}" if offload else "")
        + f", micro-batch {tr['micro_batch_size']} x seq_len {tr['seq_len']}"
        + f", {c['scaling']['num_workers']} workers"
    )
    return ConfigError(KEY, f"out of {kind} memory{where} ({setting}): {KNOBS}")
