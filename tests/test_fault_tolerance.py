"""Failures and restarts: a killed driver ends where an uninterrupted run ends, because
checkpoints carry engine, RNG and data position. (A killed worker: tests/test_cluster.py
kills a whole node, worker included, and checks the same.)"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import FAST, losses, train_worker_pids, wait_for_step
from safetensors.torch import load_file

import raylm

pytestmark = pytest.mark.slow

# Wide enough that a step takes a noticeable fraction of a second on CPU, so the test can
# kill a process between the first checkpoint and the last step. Dropout on: restoring
# RNG state matters for the result.
RUN = [
    *FAST,
    "model.hidden_size=192",
    "model.num_layers=4",
    "model.num_heads=4",
    "model.dropout=0.1",
    "trainer.max_steps=30",
    "trainer.checkpoint_every=10",
    "trainer.log_every=1",
    "trainer.eval_every=1000",
]


def overrides(corpus, tokenizers, out: Path, *extra: str) -> list[str]:
    return [
        *RUN,
        f"data.train_files=[{corpus['train']}]",
        f"tokenizer.path={tokenizers['bpe']}",
        f"output_dir={out}",
        *extra,
    ]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = (
        load_file(a / "model" / "model.safetensors"),
        load_file(b / "model" / "model.safetensors"),
    )
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.fixture(scope="module")
def uninterrupted(ray_cluster, corpus, tokenizers, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ft") / "reference"
    raylm.run("pretrain", overrides(corpus, tokenizers, out))
    return out


def test_resume_after_driver_killed(uninterrupted, ray_cluster, corpus, tokenizers, tmp_path):
    out = tmp_path / "stopped"
    address = ray_cluster.get_runtime_context().gcs_address
    args = overrides(corpus, tokenizers, out, f"ray.address={address}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "raylm", "pretrain", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        step = wait_for_step(out, 13, proc=proc)
    finally:
        proc.kill()
        proc.wait()
    assert step < 30
    assert not (out / "model").exists()
    # Ray ends a dead driver's actors; wait until its workers are gone.
    deadline = time.time() + 60
    while train_worker_pids() and time.time() < deadline:
        time.sleep(0.2)

    # Without resume=true the earlier run is protected...
    with pytest.raises(raylm.ConfigError, match="set resume=true"):
        raylm.run("pretrain", overrides(corpus, tokenizers, out))
    # ...with it, training continues from the last checkpoint and ends where the uninterrupted run did.
    raylm.run("pretrain", overrides(corpus, tokenizers, out, "resume=true"))
    assert [s for s, _ in losses(out)] == list(range(1, 31))
    assert_same_weights(out, uninterrupted)
