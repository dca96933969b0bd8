"""The memory planner (``deepspeed=auto``, ``raylm plan``) and ZeRO-3's partitioned build."""

from __future__ import annotations

import json

import pytest
from conftest import read_metrics
from omegaconf import OmegaConf

import raylm
from raylm.config import ConfigError
from raylm.train.plan import (
    OPTIONS,
    Budget,
    GiB,
    Option,
    apply,
    make_plan,
    model_shape,
    model_states,
)

GPT2_SMALL_GPU = [
    "model=gpt2-small",
    "scaling=gpu",
    "scaling.num_workers=1",
    "trainer.micro_batch_size=16",
    "trainer.seq_len=1024",
    "trainer.precision=bf16",
]


def composed(overrides):
    return OmegaConf.to_container(raylm.compose("pretrain", overrides), resolve=True)


def test_model_states_follow_deepspeeds_estimators():
    """Where DeepSpeed ships an estimator (ZeRO-2/3, mixed precision, one node) the plan's
    figures are DeepSpeed's; with one rank ZeRO-0/1 hold what ZeRO-2 holds."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs as z3
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs as z2

    params, layer = 124_439_808, 38_597_376  # GPT-2 124M; its largest module is wte
    for gpus in (1, 2, 8):

        def ours(option, gpus=gpus):
            return model_states(option, params, layer, gpus, gpus, mixed=True)

        assert ours(Option(2)) == z2(params, gpus, cpu_offload=False)[::-1]
        assert ours(Option(2, True)) == z2(params, gpus, cpu_offload=True)[::-1]
        assert ours(Option(3)) == z3(params, layer, gpus, cpu_offload=False)[1::-1]
        assert ours(Option(3, True)) == z3(params, layer, gpus, cpu_offload_params=False)[1::-1]
        assert ours(Option(3, True, True)) == z3(params, layer, gpus)[1::-1]
    one = [model_states(Option(s), params, layer, 1, 1, True)[0] for s in (0, 1, 2)]
    assert one[0] == one[1] == one[2]
    # More ranks: each stage holds less per device than the one before.
    eight = [model_states(Option(s), params, layer, 8, 8, True)[0] for s in (0, 1, 2, 3)]
    assert eight == sorted(eight, reverse=True) and len(set(eight)) == 4


def test_plan_halves_the_micro_batch_before_it_offloads_and_says_when_nothing_fits():
    c = composed(GPT2_SMALL_GPU)
    shape = model_shape(c["task"], c["model"], 50257)
    assert 124e6 < shape.params < 125e6  # GPT-2 124M, counted on the meta device

    def plan(gpu_gb):
        return make_plan(c, shape, Budget(int(gpu_gb * GiB), 64 * GiB, 1, "test"))

    roomy, tight, tiny = plan(80), plan(8), plan(3)
    assert (roomy.chosen, roomy.micro_batch, roomy.grad_accum) == (Option(0), 16, 1)
    # Same global batch (16) in smaller steps, still without offload.
    assert (tight.chosen, tight.micro_batch, tight.grad_accum) == (Option(0), 4, 4)
    assert tiny.chosen.offload_optimizer and tiny.micro_batch * tiny.grad_accum == 16
    assert "<- chosen" in tiny.table() and "124.4M parameters" in tiny.table()
    # One rank: ZeRO-1/2 without offload are ZeRO-0 and are not offered.
    assert {r.option for r in roomy.rows} == {
        o for o in OPTIONS if o.zero_stage in (0, 3) or o.offload_optimizer
    }

    none = plan(0.5)
    assert none.chosen is None
    with pytest.raises(ConfigError) as err:
        apply({**c, "resolved_config": composed(GPT2_SMALL_GPU)}, none)
    assert err.value.key == "deepspeed" and "no ZeRO stage or offload fits" in str(err.value)


def test_raylm_plan_prints_the_table_and_writes_nothing(
    ray_cluster, corpus, tokenizers, tmp_path, capsys
):
    out = tmp_path / "never"
    summary = raylm.run(
        "plan",
        [
            f"data.train_files=[{corpus['train']}]",
            f"tokenizer.path={tokenizers['bpe']}",
            f"output_dir={out}",
            "plan.host_memory_gb=64",
        ],
    )
    text = capsys.readouterr().out
    assert summary["chosen"] == "zero0" and "zero0" in text and "<- chosen" in text
    assert "64.0 GiB host per node for 2 worker(s) (plan.host_memory_gb)" in text
    assert not out.exists()


def test_auto_picks_zero3_when_zero2_does_not_fit_and_builds_it_partitioned(
    ray_cluster, corpus, tokenizers, tmp_path, capsys
):
    """A 51M-parameter GPT on two CPU workers with a host budget between what ZeRO-2 and
    ZeRO-3 need: deepspeed=auto runs ZeRO-3 (raylm.json says so), and under
    deepspeed.zero.Init building the model costs each rank well under the whole model's
    206 MB (without it each rank materialises all of it)."""
    model = ["model.hidden_size=512", "model.num_layers=16", "model.num_heads=8"]
    base = [
        f"data.train_files=[{corpus['train']}]",
        f"tokenizer.path={tokenizers['bpe']}",
        "deepspeed=auto",
        *model,
        "trainer.seq_len=32",
        "trainer.micro_batch_size=2",
        "trainer.max_steps=2",
        "trainer.log_every=1",
        "trainer.warmup_steps=1",
        "trainer.checkpoint_every=2",
    ]
    c = composed(base)
    from raylm.data import load_tokenizer

    shape = model_shape(c["task"], c["model"], len(load_tokenizer(str(tokenizers["bpe"]))))
    rows = {r.option: r for r in make_plan(c, shape, Budget(None, 1024 * GiB, 2, "t")).rows}
    need = {s: 2 * rows[Option(s)].device_bytes + rows[Option(s)].host_bytes for s in (2, 3)}
    assert need[3] < need[2]
    budget_gb = (need[2] + need[3]) / 2 / 0.9 / GiB

    out = tmp_path / "auto"
    raylm.run("pretrain", [*base, f"output_dir={out}", f"plan.host_memory_gb={budget_gb:.4f}"])
    table = capsys.readouterr().out.splitlines()
    assert any(x.startswith("zero3 ") and x.endswith("<- chosen") for x in table), table
    config = json.loads((out / "model" / "raylm.json").read_text())["config"]
    assert config["deepspeed"]["zero_stage"] == 3 and config["deepspeed"]["auto"] is True
    full = shape.params * 4
    built = [r["build_host_memory_gb"] for r in read_metrics(out) if "build_host_memory_gb" in r]
    assert built and built[0] * GiB < 0.75 * full, (built, full / GiB)
