"""The training loop's own parts: data wait, the ranks' one stream of batches, out-of-memory as one line."""

from __future__ import annotations

import time

import pytest
import torch

from raylm.train.loop import timed
from raylm.train.oom import KEY, memory_kind, out_of_memory


def test_timed_counts_only_the_wait_for_each_item():
    def slow_source():
        for i in range(3):
            time.sleep(0.05)  # the producer's time: what the loop waits for
            yield i

    clock = {"wait": 0.0}
    items = []
    for item in timed(slow_source(), clock):
        time.sleep(0.1)  # the consumer's time: not waiting for data
        items.append(item)
    assert items == [0, 1, 2]
    assert 0.15 <= clock["wait"] < 0.25


def _config(**ds):
    return {
        "trainer": {"micro_batch_size": 16, "seq_len": 1024},
        "deepspeed": {"zero_stage": 2, "offload_optimizer": False, "offload_param": False, **ds},
        "scaling": {"num_workers": 4},
    }


def test_out_of_memory_is_recognised_from_the_real_errors():
    import ray.exceptions

    with pytest.raises(RuntimeError) as host:
        torch.empty(2**45, dtype=torch.uint8)  # 128 TiB: torch's CPU allocator refuses
    assert memory_kind(host.value) == "host"
    assert memory_kind(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate")) == "GPU"
    assert memory_kind(ray.exceptions.OutOfMemoryError("killed by the memory monitor")) == "host"
    wrapped = RuntimeError("worker failed")
    wrapped.__cause__ = torch.OutOfMemoryError("CUDA out of memory")
    assert memory_kind(wrapped) == "GPU"
    assert memory_kind(RuntimeError("shape mismatch")) is None
    assert memory_kind(ValueError("not memory")) is None


def test_out_of_memory_message_names_the_settings_and_the_knobs():
    err = out_of_memory("GPU", _config(zero_stage=3, offload_optimizer=True), step=7)
    assert err.key == KEY == "trainer.micro_batch_size"
    text = str(err)
    assert text.startswith(
        "trainer.micro_batch_size: out of GPU memory at step 7 (deepspeed.zero_stage=3 with "
        "offload_optimizer, micro-batch 16 x seq_len 1024, 4 workers): lower "
        "trainer.micro_batch_size"
    )
    for knob in ("trainer.grad_accum", "deepspeed.zero_stage", "deepspeed=auto", "raylm plan"):
        assert knob in text
    assert "\n" not in text


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2), (2, 3), (3, 2)])
def test_the_ranks_stream_continues_on_another_number_of_workers(before, after):
    """Micro-batches 0..22 of an epoch: ``before`` ranks take 3 steps each, then ``after``
    ranks continue from the position all of them reached. Each batch up to the epoch's
    last whole group is stepped exactly once, and every rank gets as many as the others."""
    from raylm.train.data_config import own_batches

    def run(start: int, world: int, steps: int | None) -> tuple[list[int], int]:
        taken, end = [], start
        for rank in range(world):
            got = list(own_batches(range(23), start, rank, world))[:steps]
            assert len(got) == len(list(own_batches(range(23), start, 0, world))[:steps])
            taken += [batch for _, batch in got]
            end = got[-1][0] if got else start
        return taken, end

    first, position = run(0, before, 3)
    assert position == 3 * before
    rest, _ = run(position, after, None)
    seen = sorted(first + rest)
    assert seen == list(range(len(seen)))  # nothing skipped, nothing twice
    assert 23 - len(seen) < after  # only the epoch's short last group is dropped


def test_a_changed_global_batch_is_one_warning_naming_the_grad_accum_that_keeps_it():
    from raylm.train.loop import batch_changed

    assert batch_changed(16, 8, 1, 2) is None
    assert batch_changed(None, 8, 1, 1) is None  # a checkpoint from before the record
    assert batch_changed(16, 8, 1, 1) == (
        "warning: the global batch is now 8 sequences (micro-batch 8 x grad_accum 1 x "
        "1 workers), the checkpoint's was 16; trainer.grad_accum=2 keeps it"
    )
    assert batch_changed(16, 8, 1, 3).endswith("the checkpoint's was 16")  # no whole grad_accum
