"""Pretraining on a real local Ray cluster with real DeepSpeed engines on CPU (gloo)."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest
import torch
from conftest import FAST, losses, read_metrics

import raylm
from raylm.train.export import probe_inputs

pytestmark = pytest.mark.slow


def pretrain(tmp_path, name, corpus, tokenizer, *overrides):
    out = tmp_path / name
    summary = raylm.run(
        "pretrain",
        [
            *FAST,
            f"data.train_files=[{corpus['train']}]",
            f"data.eval_files=[{corpus['eval']}]",
            f"tokenizer.path={tokenizer}",
            f"output_dir={out}",
            *overrides,
        ],
    )
    return out, summary


def prepared(out, corpus, tokenizer, *overrides) -> dict:
    """The prepared config of a FAST pretraining run, for tests that call fit with a fault
    objective in it."""
    from raylm.train.job import prepare

    return prepare(
        raylm.compose(
            "pretrain",
            [
                *FAST,
                f"data.train_files=[{corpus['train']}]",
                f"tokenizer.path={tokenizer}",
                f"output_dir={out}",
                *overrides,
            ],
        )
    )


def assert_loss_falls(out, factor):
    curve = losses(out)
    first, last = curve[0][1], curve[-1][1]
    assert last < first * factor, f"loss {first:.3f} -> {last:.3f}"
    evals = [r["eval_loss"] for r in read_metrics(out) if "eval_loss" in r]
    assert evals and evals[-1] < first * factor
    return curve


def logits_of(model, vocab, seq_len=32):
    with torch.no_grad():
        out = model(input_ids=probe_inputs(vocab, seq_len))
    return (
        out.logits if hasattr(out, "logits") and out.logits is not None else out.prediction_logits
    )


@pytest.fixture(scope="module")
def clm_run(ray_cluster, corpus, tokenizers, tmp_path_factory):
    started = time.time()
    out, summary = pretrain(
        tmp_path_factory.mktemp("clm"),
        "clm",
        corpus,
        tokenizers["bpe"],
        "trainer.max_steps=40",
        "trainer.eval_every=20",
        "trainer.checkpoint_every=20",
    )
    return out, {**summary, "wall_s": time.time() - started}


def test_clm_learns_and_exports(clm_run):
    from transformers import AutoModelForCausalLM

    out, summary = clm_run
    curve = assert_loss_falls(out, 0.6)
    assert [s for s, _ in curve][-1] == 40
    row = read_metrics(out)[-2]
    assert (
        row["tokens_per_s"] > 0
        and row["peak_memory_gb"] > 0
        and "grad_norm" in row
        and row["lr"] > 0
        and 0 <= row["data_wait_pct"] < 50
    )
    # Reported by the run itself: from raylm.run's start to the first optimizer step, which
    # is within this run's wall time.
    (first,) = [r["time_to_first_step_s"] for r in read_metrics(out) if "time_to_first_step_s" in r]
    assert 0 < first < summary["wall_s"]
    assert (out / "loss_curve.png").stat().st_size > 1000
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    # The artifact: a plain transformers directory, verified against the trained engine.
    model_dir = out / "model"
    assert (model_dir / "model.safetensors").exists() and (model_dir / "tokenizer.json").exists()
    meta = json.loads((model_dir / "raylm.json").read_text())
    assert meta["task"] == "clm" and meta["step"] == 40
    assert meta["config"]["trainer"]["max_steps"] == 40 and len(meta["config_hash"]) == 16
    assert meta["export_check"]["max_abs_logit_diff"] <= 1e-4
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    # Independently of raylm's export check: DeepSpeed's own final checkpoint holds the same weights.
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    ckpt = summary["checkpoint"]
    ds_weights = get_fp32_state_dict_from_zero_checkpoint(ckpt, tag="deepspeed")
    exported = model.state_dict()
    for name, tensor in ds_weights.items():
        torch.testing.assert_close(exported[name], tensor, rtol=0, atol=0)


def test_init_from_continues_an_exported_model(clm_run, corpus, tmp_path):
    """model.init_from: weights and tokenizer come from a save_pretrained directory."""
    first, _ = clm_run
    model_dir = first / "model"
    out, _ = pretrain(
        tmp_path,
        "continued",
        corpus,
        tmp_path / "no-tokenizer-here",
        f"model.init_from={model_dir}",
        "trainer.max_steps=10",
        "trainer.eval_every=10",
        "trainer.checkpoint_every=10",
        "trainer.warmup_steps=0",
        "trainer.lr=3e-4",
    )
    start, before = losses(out)[0][1], losses(first)
    # Starts nearer where the first run ended than where it began: not from scratch.
    assert start < (before[0][1] + before[-1][1]) / 2, (start, before)
    meta = json.loads((out / "model" / "raylm.json").read_text())
    assert meta["model"] == str(model_dir) and meta["export_check"]["max_abs_logit_diff"] <= 1e-4
    # An architecture that cannot do the task is refused before any worker starts.
    with pytest.raises(raylm.ConfigError, match="does not fit model.init_from") as err:
        pretrain(
            tmp_path, "bad", corpus, tmp_path / "none", f"model.init_from={model_dir}", "task=mlm"
        )
    assert err.value.key == "task"


def test_mlm_learns_and_exports(ray_cluster, corpus, tokenizers, tmp_path):
    from transformers import AutoModelForMaskedLM

    out, _ = pretrain(
        tmp_path,
        "mlm",
        corpus,
        tokenizers["wordpiece"],
        "model=bert-tiny",
        "task=mlm",
        "trainer.max_steps=40",
        "trainer.eval_every=20",
        "trainer.checkpoint_every=40",
    )
    assert_loss_falls(out, 0.7)
    model = AutoModelForMaskedLM.from_pretrained(out / "model").eval()
    assert type(model).__name__ == "BertForMaskedLM"
    assert (
        json.loads((out / "model" / "raylm.json").read_text())["export_check"]["max_abs_logit_diff"]
        <= 1e-4
    )


def test_mlm_nsp_learns_both_objectives(ray_cluster, corpus, tokenizers, tmp_path):
    from transformers import AutoModelForMaskedLM, AutoModelForPreTraining

    out, _ = pretrain(
        tmp_path,
        "nsp",
        corpus,
        tokenizers["wordpiece"],
        "model=bert-tiny",
        "task=mlm_nsp",
        "trainer.seq_len=96",
        "trainer.max_steps=60",
        "trainer.eval_every=30",
        "trainer.checkpoint_every=60",
    )
    assert_loss_falls(out, 0.7)
    nsp = [r["eval_nsp_accuracy"] for r in read_metrics(out) if "eval_nsp_accuracy" in r]
    assert nsp[-1] > 0.75, nsp  # topics make "is next" learnable; chance is about 0.5
    pre = AutoModelForPreTraining.from_pretrained(out / "model").eval()
    assert type(pre).__name__ == "BertForPreTraining"
    # The MLM head alone loads with AutoModelForMaskedLM and gives the same token logits.
    mlm = AutoModelForMaskedLM.from_pretrained(out / "model").eval()
    torch.testing.assert_close(logits_of(mlm, 100), logits_of(pre, 100))


ZERO_RUN = [
    "trainer.max_steps=20",
    "trainer.eval_every=20",
    "trainer.checkpoint_every=10",
    "model.dropout=0.1",
]


def killed_at_step_13(marker: Path) -> list[str]:
    """A worker SIGKILLs itself at step 13, after the step-10 checkpoint (tests/faults.py)."""
    return [
        "+objective.target=faults:KilledOnce",
        "+objective.at=13",
        f"+objective.marker={marker}",
    ]


@pytest.fixture(scope="module")
def zero_runs(ray_cluster, corpus, tokenizers, tmp_path_factory):
    """The same seed and data under ZeRO 0 (never interrupted), 1, 2 and 3, each of the
    last three losing a worker to SIGKILL at step 13 and restarting from step 10."""
    tmp = tmp_path_factory.mktemp("zero")
    runs = {}
    for stage in (0, 1, 2, 3):
        kill = killed_at_step_13(tmp / f"killed{stage}") if stage else []
        runs[stage], _ = pretrain(
            tmp,
            f"zero{stage}",
            corpus,
            tokenizers["bpe"],
            f"deepspeed=zero{stage}",
            *ZERO_RUN,
            *kill,
        )
    return runs


def assert_killed_and_restored(out: Path, marker: Path) -> None:
    assert marker.exists(), "the worker was not killed"
    resumed = [r["resumed_step"] for r in read_metrics(out) if "resumed_step" in r]
    assert resumed == [10], resumed


def assert_weights_match(a: Path, b: Path) -> None:
    from safetensors.torch import load_file

    wa, wb = (
        load_file(a / "model" / "model.safetensors"),
        load_file(b / "model" / "model.safetensors"),
    )
    assert wa.keys() == wb.keys()
    for name in wb:
        assert wa[name].shape == wb[name].shape and wa[name].numel() > 0
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-3, atol=1e-4, msg=name)


def test_zero_stages_follow_zero0_through_a_killed_worker(zero_runs):
    """ZeRO 1, 2 and 3, each with a worker SIGKILLed at step 13: every loss of the curve
    is ZeRO-0's, and the exported weights are those of the uninterrupted ZeRO-0 run."""
    reference = losses(zero_runs[0])
    assert len(reference) == 4
    for stage in (1, 2, 3):
        assert_killed_and_restored(zero_runs[stage], zero_runs[stage].parent / f"killed{stage}")
        curve = losses(zero_runs[stage])
        assert [s for s, _ in curve] == [s for s, _ in reference]
        for (_, a), (_, b) in zip(curve, reference, strict=True):
            assert math.isclose(a, b, rel_tol=1e-4), (stage, curve, reference)
        assert_weights_match(zero_runs[stage], zero_runs[0])


def test_zero3_cpu_offload_trains_like_zero0(zero_runs, corpus, tokenizers, tmp_path):
    """ZeRO-3 with parameters and optimizer states offloaded on CPU (torch's AdamW steps them:
    no JIT-compiled op on a CPU-only run), a worker SIGKILLed at step 13 on the way."""
    marker = tmp_path / "killed"
    out, _ = pretrain(
        tmp_path,
        "offload",
        corpus,
        tokenizers["bpe"],
        "deepspeed=zero3_offload",
        *ZERO_RUN,
        *killed_at_step_13(marker),
    )
    assert_killed_and_restored(out, marker)
    assert_weights_match(out, zero_runs[0])
    reference = losses(zero_runs[0])
    curve = losses(out)
    assert [s for s, _ in curve] == [s for s, _ in reference]
    for (_, a), (_, b) in zip(curve, reference, strict=True):
        assert math.isclose(a, b, rel_tol=1e-3), (curve, reference)
    assert (
        json.loads((out / "model" / "raylm.json").read_text())["export_check"]["max_abs_logit_diff"]
        <= 1e-4
    )


# Dropout off: two workers' dropout masks are not one worker's, so only without it is
# one worker with two accumulated micro-batches the same run as two workers.
RESHARD_RUN = [
    "trainer.max_steps=20",
    "trainer.eval_every=20",
    "trainer.checkpoint_every=10",
    "trainer.log_every=1",
    "model.dropout=0.0",
]
ON = {
    2: ["scaling.num_workers=2", "trainer.grad_accum=1"],
    1: ["scaling.num_workers=1", "trainer.grad_accum=2"],
}


@pytest.fixture(scope="module")
def two_worker_reference(ray_cluster, corpus, tokenizers, tmp_path_factory) -> Path:
    out, _ = pretrain(
        tmp_path_factory.mktemp("reshard"), "ref", corpus, tokenizers["bpe"], *RESHARD_RUN, *ON[2]
    )
    return out


@pytest.mark.parametrize("stage,first", [(1, 2), (2, 1), (3, 2)])
def test_resume_on_another_number_of_workers_continues_the_same_run(
    two_worker_reference, corpus, tokenizers, tmp_path, stage, first
):
    """ZeRO partitions optimizer state (at stage 3, weights too) by the number of workers.
    A run stopped at step 7 on ``first`` workers resumes on the other number (2 -> 1 or
    1 -> 2), stops at step 14 and ends on the first number again: both directions at each
    stage, each resume through DeepSpeed's universal checkpoint. The global batch is kept
    (micro 8 x 2 workers, or x 2 accumulated on one), so an uninterrupted 2-worker ZeRO-0
    run is the reference: every logged loss and the exported weights match it, which
    holds only if no sample was skipped or seen twice across the reshards."""
    other, reference = 3 - first, two_worker_reference
    out = tmp_path / "resharded"

    def segment(workers: int, *extra: str) -> None:
        pretrain(
            tmp_path,
            "resharded",
            corpus,
            tokenizers["bpe"],
            f"deepspeed=zero{stage}",
            *RESHARD_RUN,
            *ON[workers],
            *extra,
        )

    def stop_at(step: int) -> list[str]:
        return [
            "+objective.target=faults:StopsAt",
            f"+objective.at={step}",
            f"+objective.output_dir={out}",
        ]

    with pytest.raises(KeyboardInterrupt):
        segment(first, *stop_at(7))
    with pytest.raises(KeyboardInterrupt):
        segment(other, "resume=true", *stop_at(14))
    segment(first, "resume=true")

    rows = read_metrics(out)
    resumed = [
        (r["resumed_step"], r.get("resumed_from_workers")) for r in rows if "resumed_step" in r
    ]
    assert resumed == [(7, first), (14, other)], resumed
    curve, expected = dict(losses(out)), dict(losses(reference))
    assert sorted(curve) == list(range(1, 21))
    for step, loss in expected.items():
        assert math.isclose(curve[step], loss, rel_tol=1e-4), (step, curve, expected)
    assert_weights_match(out, reference)


def test_a_checkpoint_cut_off_or_damaged_is_skipped_for_the_whole_one_before(
    two_worker_reference, corpus, tokenizers, tmp_path
):
    """Checkpoints every 5 steps. A worker is SIGKILLed while its step-15 checkpoint is
    written to storage (a file of it cut to half, tests/faults.py): Ray Train never
    registers it, the run restarts from step 10 and says it ignored the cut-off one.
    Then the finished run's last checkpoint (step 20) is damaged (a file truncated) and
    the run resumed: it skips that one for step 15's, says so, and trains to step 20
    again. Both times the run ends with the uninterrupted run's weights."""
    from raylm.train.checkpoint import TAG
    from raylm.train.job import RUN_NAME

    marker = tmp_path / "killed"
    every_5 = [
        *[o for o in RESHARD_RUN if "checkpoint_every" not in o],
        "trainer.checkpoint_every=5",
    ]
    args = (tmp_path, "cut", corpus, tokenizers["bpe"], "deepspeed=zero2", *every_5, *ON[2])
    fault = [
        "+objective.target=faults:KilledWhileCheckpointing",
        "+objective.at=15",
        f"+objective.marker={marker}",
    ]
    out, _ = pretrain(*args, *fault)
    assert marker.exists(), "the worker was not killed"
    (row,) = [r for r in read_metrics(out) if "resumed_step" in r]
    assert row["resumed_step"] == 10
    (ignored,) = row["skipped_checkpoints"]
    assert (
        ignored.startswith("ignored the checkpoint checkpoint_") and "never registered" in ignored
    )
    assert_weights_match(out, two_worker_reference)

    store = out / "checkpoints" / RUN_NAME
    last = max(p for p in store.glob("checkpoint_*") if p.is_dir())  # not Ray's snapshot json
    shard = max((last / TAG).glob("*optim_states.pt"), key=lambda p: p.stat().st_size)
    size = shard.stat().st_size
    os.truncate(shard, size // 3)
    pretrain(*args, "resume=true")
    row = [r for r in read_metrics(out) if "resumed_step" in r][-1]
    assert row["resumed_step"] == 15
    assert (
        f"skipped the checkpoint {last.name}: {TAG}/{shard.name} is {size // 3} bytes, written as {size}"
        in row["skipped_checkpoints"]
    )
    assert [s for s, _ in losses(out)] == list(range(1, 21))
    assert_weights_match(out, two_worker_reference)


def test_out_of_memory_in_a_worker_is_one_line_naming_the_knobs(
    ray_cluster, corpus, tokenizers, tmp_path
):
    """A real allocator failure inside a real Ray Train worker (tests/faults.py asks for
    128 TiB at the first step) ends as one ConfigError line, and no model is exported."""
    from raylm.config import ConfigError
    from raylm.train.job import fit

    out = tmp_path / "oom"
    c = prepared(out, corpus, tokenizers["bpe"], "trainer.max_steps=5", "trainer.max_failures=0")
    c["objective"] = {"target": "faults:AllocatesTooMuch"}
    with pytest.raises(ConfigError) as err:
        fit(c)
    text = str(err.value)
    assert text.startswith(
        "trainer.micro_batch_size: out of host memory at step 1 (deepspeed.zero_stage=2, "
        "micro-batch 8 x seq_len 64, 2 workers): lower trainer.micro_batch_size"
    ), text
    assert "deepspeed=auto" in text and "\n" not in text
    assert not (out / "model").exists()


def test_a_nan_loss_stops_the_run_with_its_step_and_exports_nothing(
    ray_cluster, corpus, tokenizers, tmp_path
):
    """The loss turns NaN at step 8 (tests/faults.py): the run stops at the next check
    (the step-10 log), says so in one line, exports no model of NaNs, keeps the step-5
    checkpoint, and is not restarted into the same divergence (max_failures is 2)."""
    from raylm.config import ConfigError
    from raylm.train.job import fit

    out = tmp_path / "nan"
    c = prepared(
        out, corpus, tokenizers["bpe"], "trainer.max_steps=20", "trainer.checkpoint_every=5"
    )
    c["objective"] = {"target": "faults:LossBecomesNaN", "at": 8}
    with pytest.raises(ConfigError) as err:
        fit(c)
    assert str(err.value).startswith(
        "trainer.lr: the loss became nan by step 10 (checked every trainer.log_every=5 steps"
    ), str(err.value)
    assert "the checkpoint of step 5 is from before it" in str(err.value)
    assert not (out / "model").exists()
    steps = [r["step"] for r in read_metrics(out) if "loss" in r]
    assert steps == [5]  # the diverged window was never logged as a loss
