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


def test_sigterm_checkpoints_stops_cleanly_and_resumes(
    uninterrupted, ray_cluster, corpus, tokenizers, tmp_path
):
    """SIGTERM (what Kubernetes, Docker and systemd send) to `raylm pretrain` on its own
    embedded cluster: the workers checkpoint at the next log step and stop, the command
    says so in a line and exits as interrupted (130) with no traceback and no native stack
    dump, no process it started is left, nothing is exported; resume=true then ends with
    the weights of the uninterrupted run."""
    import os
    import signal

    import psutil

    out = tmp_path / "sigterm"
    proc = subprocess.Popen(
        [sys.executable, "-m", "raylm", "pretrain", *overrides(corpus, tokenizers, out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for_step(out, 13, proc=proc)
        started = psutil.Process(proc.pid).children(recursive=True)
        assert len(started) > 3  # the embedded cluster's processes
        proc.send_signal(signal.SIGTERM)
        printed, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, printed
    # Ray Train's PlacementGroupCleaner actor asks the state API for "the" local cluster
    # and, with this test session's cluster beside the command's, finds two: its traceback
    # is about the test machine, not the command, and is left out here.
    own = "\n".join(x for x in printed.splitlines() if "PlacementGroupCleaner" not in x)
    assert "Traceback" not in own and "SIGTERM received" not in own, own
    stopped = [x for x in printed.splitlines() if x.startswith("stopped at step ")]
    assert stopped and stopped[0].endswith("after its checkpoint; resume=true continues from it")
    step = int(stopped[0].split()[3])
    assert 13 <= step < 30
    assert not (out / "model").exists()
    deadline = time.time() + 15
    while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in started):
        assert time.time() < deadline, [p for p in started if p.is_running()]
        time.sleep(0.5)

    raylm.run("pretrain", overrides(corpus, tokenizers, out, "resume=true"))
    assert [s for s, _ in losses(out)][-1] == 30
    assert_same_weights(out, uninterrupted)
