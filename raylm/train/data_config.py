"""Deterministic sharding of the materialized datasets across Ray Train workers."""

from __future__ import annotations

from typing import Any


def split_for_workers(datasets: dict[str, Any], world_size: int) -> dict[str, Any]:
    """``{"train": ds}`` -> ``{"train_shard0": shard0, "train_shard1": ...}`` on the driver.

    Passed to the trainer with ``DataConfig(datasets_to_split=[])``; worker ``r`` asks
    for ``get_dataset_shard(f"train_shard{r}")`` (see :func:`shard_name`).

    Ray Train's default ``streaming_split`` hands blocks to whichever worker asks first,
    so which rows a rank sees changes from run to run. ``Dataset.split(equal=True)`` of a
    materialized dataset gives each rank the same rows in the same order every time:
    ZeRO stages can be compared step for step, and a restarted worker resumes exactly
    where its checkpoint says. Every shard has the same number of rows, so no rank runs
    out of batches before the others. It runs here, before the workers hold the CPUs.
    """
    out = {}
    for name, ds in datasets.items():
        for rank, shard in enumerate(ds.split(world_size, equal=True)):
            out[shard_name(name, rank)] = shard
    return out


def shard_name(name: str, rank: int) -> str:
    return f"{name}_shard{rank}"
