"""What makes a checkpoint directory whole, and when a resume must go through DeepSpeed's
universal format: the checks the training loop runs before loading one (no Ray needed)."""

from __future__ import annotations

import json

from raylm.train.checkpoint import MANIFEST, STATE_FILE, TAG, damage, needs_universal


def written(tmp_path, world: int = 2):
    """A checkpoint directory as save_checkpoint leaves it, for ``world`` ranks."""
    (tmp_path / TAG).mkdir()
    (tmp_path / STATE_FILE).write_text(json.dumps({"step": 10, "world_size": world}))
    for rank in range(world):
        shard = tmp_path / TAG / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"
        shard.write_bytes(b"x" * (100 + rank))
        files = {f"{TAG}/{shard.name}": shard.stat().st_size}
        if rank == 0:
            files[STATE_FILE] = (tmp_path / STATE_FILE).stat().st_size
        (tmp_path / MANIFEST.format(rank)).write_text(json.dumps(files))
    return tmp_path


def test_a_whole_checkpoint_has_no_damage(tmp_path):
    assert damage(written(tmp_path)) is None


def test_a_truncated_missing_or_unlisted_part_is_named(tmp_path):
    d = written(tmp_path)
    shard = d / TAG / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    shard.write_bytes(b"x" * 40)
    assert damage(d) == f"{TAG}/{shard.name} is 40 bytes, written as 101"
    shard.unlink()
    assert damage(d) == f"{TAG}/{shard.name} is missing"
    (d / MANIFEST.format(1)).unlink()  # rank 1 stopped before its manifest: not whole
    assert damage(d) == "worker 1's part is incomplete (no manifest_rank1.json)"
    (d / STATE_FILE).write_text("{not json")
    assert damage(d) == f"its {STATE_FILE} is missing or unreadable"


def test_a_checkpoint_from_before_manifests_is_taken_as_whole(tmp_path):
    (tmp_path / STATE_FILE).write_text(json.dumps({"step": 10}))
    assert damage(tmp_path) is None


def test_only_zero_partitions_for_another_world_size_need_the_universal_format():
    partitioned = {"world_size": 2, "zero_partitioned": True}
    assert needs_universal(partitioned, 1) and needs_universal(partitioned, 4)
    assert not needs_universal(partitioned, 2)
    assert not needs_universal({"world_size": 2, "zero_partitioned": False}, 1)  # ZeRO-0 fp32
    assert not needs_universal({}, 1)  # a checkpoint from before the metadata
