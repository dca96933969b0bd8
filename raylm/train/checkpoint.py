"""Checkpoints: DeepSpeed's sharded engine state plus what DeepSpeed does not keep.

Every rank writes its own shard into its own temp dir and reports it; Ray Train merges
the reports into one checkpoint directory in ``output_dir/checkpoints``. Besides the
engine (weights, optimizer, LR schedule, step), a checkpoint carries each rank's RNG
states and the data position, so a restored run continues the same sample stream.

ZeRO partitions the optimizer state (and at stage 3 the weights) by the number of
workers, and DeepSpeed refuses to load it on another number. A run resumed on another
number converts the checkpoint to DeepSpeed's universal format (one file per parameter
and state, ``deepspeed.checkpoint.ds_to_universal``) and loads that: the engine must be
built with ``checkpoint.load_universal`` (:func:`needs_universal`, before
``deepspeed.initialize``).

A checkpoint is whole when every file each rank listed in its manifest (written last)
is there at its size. Ray Train registers a checkpoint only once every rank has
persisted it, so one cut off while written is never handed back; one damaged after that
(a truncated file) would be, and :func:`whole_checkpoint` then takes the newest whole
one before it and says which it skipped.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

TAG = "deepspeed"
STATE_FILE = "raylm_state.json"
MANIFEST = "manifest_rank{}.json"  # the files a rank wrote, with their sizes


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def save_checkpoint(engine, directory: str | Path, state: dict[str, Any]) -> dict[str, Any]:
    """Write this rank's part; returns the metadata for the Ray Train checkpoint (how
    many workers it was taken on, and whether ZeRO partitioned it by that number)."""
    from deepspeed.checkpoint import UNIVERSAL_CHECKPOINT_INFO

    directory = Path(directory)
    # The (empty) universal-checkpoint info makes the checkpoint convertible later.
    engine.save_checkpoint(str(directory), tag=TAG, client_state={UNIVERSAL_CHECKPOINT_INFO: {}})
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
    world = dist.get_world_size() if dist.is_initialized() else 1
    if _rank() == 0:
        (directory / STATE_FILE).write_text(json.dumps({**state, "world_size": world}))
    # Last: a part whose manifest is there was written whole (the dir is this rank's own).
    files = {str(f.relative_to(directory)): f.stat().st_size for f in directory.rglob("*")}
    (directory / MANIFEST.format(_rank())).write_text(
        json.dumps({k: v for k, v in files.items() if not Path(directory, k).is_dir()})
    )
    partitioned = any((directory / TAG).glob("*zero_pp_rank_*_states.pt"))
    return {"world_size": world, "zero_partitioned": partitioned}


def saved_state(directory: str | Path) -> dict[str, Any]:
    """The loop's state a checkpoint holds (step, data position, world size)."""
    return json.loads((Path(directory) / STATE_FILE).read_text())


def damage(directory: str | Path) -> str | None:
    """What makes a checkpoint directory not whole, or None. One from before manifests
    (no world size in its state) is taken as whole."""
    directory = Path(directory)
    try:
        world = saved_state(directory).get("world_size")
    except (OSError, ValueError):
        return f"its {STATE_FILE} is missing or unreadable"
    for rank in range(world or 0):
        manifest = directory / MANIFEST.format(rank)
        try:
            files = json.loads(manifest.read_text())
        except (OSError, ValueError):
            return f"worker {rank}'s part is incomplete (no {manifest.name})"
        for name, size in files.items():
            path = directory / name
            if not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size != size:
                return f"{name} is {path.stat().st_size} bytes, written as {size}"
    return None


def whole_checkpoint(checkpoint, say=print):
    """Ray Train's latest checkpoint if whole, else the newest whole one before it in the
    run's storage (a ``ray.train.Checkpoint``); ``say`` tells which were skipped, and a
    newer one never registered (its writing cut off). None if there is none."""
    import posixpath

    import pyarrow.fs as pafs
    from ray.train import Checkpoint

    if checkpoint is None:
        return None
    fs, path = checkpoint.filesystem, checkpoint.path.rstrip("/")
    parent, name = posixpath.split(path)
    found = sorted(
        posixpath.basename(i.path)
        for i in fs.get_file_info(pafs.FileSelector(parent))
        if i.type == pafs.FileType.Directory
        and posixpath.basename(i.path).startswith("checkpoint_")
    )
    for newer in (n for n in found if n > name):
        say(
            f"ignored the checkpoint {newer}: Ray Train never registered it (a worker stopped while it was written)"
        )
    for candidate in [name, *reversed([n for n in found if n < name])]:
        here = (
            checkpoint if candidate == name else Checkpoint(posixpath.join(parent, candidate), fs)
        )
        with here.as_directory() as d:
            problem = damage(d)
        if problem is None:
            return here
        say(f"skipped the checkpoint {candidate}: {problem}")
    return None


def needs_universal(metadata: dict[str, Any], world_size: int) -> bool:
    """True where a checkpoint's ZeRO partitions (its :func:`save_checkpoint` metadata)
    are for another number of workers."""
    saved = metadata.get("world_size", world_size)
    return saved != world_size and bool(metadata.get("zero_partitioned"))


@contextmanager
def universal_copy(directory: str | Path, name: str, tag: str = TAG) -> Iterator[Path]:
    """``directory``'s DeepSpeed checkpoint in the universal format, converted once per
    node into a node-local temp dir (the first rank there converts under a file lock, the
    others wait and share it) and removed once every rank has loaded it. Yields the
    folder to load with ``tag=`` its name. ``name`` keys the copy (the run and step)."""
    from filelock import FileLock

    root = Path(tempfile.gettempdir()) / f"raylm-universal-{name}"
    done = root / "universal"
    with FileLock(f"{root}.lock"):
        if not done.exists():
            tmp = root / "converting"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.parent.mkdir(parents=True, exist_ok=True)
            cmd = [
                sys.executable,
                "-m",
                "deepspeed.checkpoint.ds_to_universal",
                f"--input_folder={Path(directory) / tag}",
                f"--output_folder={tmp}",
                "--num_extract_workers=2",
                "--num_merge_workers=2",
            ]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                tail = (out.stderr or out.stdout).strip().splitlines()[-1:]
                raise RuntimeError(f"converting {directory} to a universal checkpoint: {tail}")
            tmp.rename(done)
    yield done
    if dist.is_initialized():
        dist.barrier()  # every rank on every node has loaded its copy
    if os.environ.get("LOCAL_RANK", "0") == "0":  # set by Ray Train's torch backend
        shutil.rmtree(root, ignore_errors=True)
        Path(f"{root}.lock").unlink(missing_ok=True)


def load_checkpoint(engine, directory: str | Path, universal: Path | None = None) -> dict[str, Any]:
    """Load a checkpoint of this loop; ``universal``: its :func:`universal_copy`, for an
    engine built with ``checkpoint.load_universal`` (another number of workers)."""
    directory = Path(directory)
    load_dir, tag = (universal.parent, universal.name) if universal else (directory, TAG)
    load_path, _ = engine.load_checkpoint(
        str(load_dir), tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
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
    return saved_state(directory)
