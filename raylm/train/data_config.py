"""How Ray Train workers share the materialized datasets, deterministically.

Training data is one stream that does not depend on the number of workers: every rank
reads the whole (materialized) train dataset in the same order and keeps the
micro-batches that are its own (:func:`own_batches`). The data position a checkpoint
holds is then a global one, the micro-batches consumed this epoch by all ranks together,
and a run resumed on another number of workers continues with the next one: no sample
is skipped or seen twice. Eval data is split once per rank (:func:`split_for_workers`):
an eval is never resumed half-way.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

TRAIN = "train"


def worker_datasets(datasets: dict[str, Any], world_size: int) -> dict[str, Any]:
    """What the trainer gets (with ``DataConfig(datasets_to_split=[])``): the train
    dataset whole and materialized (each rank reads it, so it is computed once), every
    other dataset split per rank."""
    out = {TRAIN: datasets[TRAIN].materialize()}
    out.update(split_for_workers({k: v for k, v in datasets.items() if k != TRAIN}, world_size))
    return out


def split_for_workers(datasets: dict[str, Any], world_size: int) -> dict[str, Any]:
    """``{"eval": ds}`` -> ``{"eval_shard0": shard0, "eval_shard1": ...}`` on the driver.

    Worker ``r`` asks for ``get_dataset_shard(f"eval_shard{r}")`` (see :func:`shard_name`).
    Ray Train's default ``streaming_split`` hands blocks to whichever worker asks first,
    so which rows a rank sees changes from run to run. ``Dataset.split(equal=True)`` of a
    materialized dataset gives each rank the same rows in the same order every time, and
    every shard the same number of rows. It runs here, before the workers hold the CPUs.
    """
    out = {}
    for name, ds in datasets.items():
        for rank, shard in enumerate(ds.split(world_size, equal=True)):
            out[shard_name(name, rank)] = shard
    return out


def shard_name(name: str, rank: int) -> str:
    return f"{name}_shard{rank}"


def own_batches(
    batches: Iterable[Any], start: int, rank: int, world_size: int
) -> Iterator[tuple[int, Any]]:
    """This rank's micro-batches of an epoch's stream, from global position ``start`` on.

    Micro-batches ``start``, ``start + 1``, ... go to ranks 0, 1, ... in turn; a batch is
    handed out only once its whole group of ``world_size`` exists, so every rank gets as
    many as the others and none waits in a collective for a rank that ran out (the last
    group of an epoch, if short, is dropped, as ``drop_last`` drops a short batch).
    Yields ``(end, batch)``: ``end`` is the global position after the batch's group, what
    the epoch has consumed on every rank once this batch is stepped.
    """
    mine = None
    for i, batch in enumerate(batches):
        if i < start:
            continue
        slot = (i - start) % world_size
        if slot == rank:
            mine = batch
        if slot == world_size - 1:
            yield i + 1, mine
            mine = None
