"""Checkpoints: DeepSpeed's sharded engine state plus what DeepSpeed does not keep.

Every rank writes its own shard into its own temp dir and reports it; Ray Train merges
the reports into one checkpoint directory in ``output_dir/checkpoints``. Besides the
engine (weights, optimizer, LR schedule, step), a checkpoint carries each rank's RNG
states and the data position, so a restored run continues the same sample stream.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

TAG = "deepspeed"
STATE_FILE = "raylm_state.json"


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def save_checkpoint(engine, directory: str | Path, state: dict[str, Any]) -> None:
    directory = Path(directory)
    engine.save_checkpoint(str(directory), tag=TAG)
    # Plain lists and tensors only, so the load needs no unpickling (weights_only=True).
    version, words, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    rng = {
        "python": [version, list(words), gauss],
        "numpy": [name, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    torch.save(rng, directory / f"rng_rank{_rank()}.pt")
    if _rank() == 0:
        (directory / STATE_FILE).write_text(json.dumps(state))


def load_checkpoint(engine, directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    load_path, _ = engine.load_checkpoint(
        str(directory), tag=TAG, load_optimizer_states=True, load_lr_scheduler_states=True
    )
    if load_path is None:
        raise RuntimeError(f"DeepSpeed found no checkpoint under {directory}")
    rng_file = directory / f"rng_rank{_rank()}.pt"
    if rng_file.exists():  # absent when the world size grew; the seed stream is then new
        rng = torch.load(rng_file, weights_only=True)
        version, words, gauss = rng["python"]
        random.setstate((version, tuple(words), gauss))
        name, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return json.loads((directory / STATE_FILE).read_text())
