"""What the training loop reports about itself: data wait, and out-of-memory as one line."""

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
