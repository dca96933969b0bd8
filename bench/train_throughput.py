"""Training throughput: ``raylm pretrain`` next to plain PyTorch loops, same model and batch.

Everything runs in this one invocation on this machine, so the ratios hold even where
absolute times drift (a shared 2-core machine drifts by a third between minutes):

- ``raylm``: the real command (Ray Train workers, Ray Data, DeepSpeed); its figures come
  from its own metrics.jsonl (rank 0, all-reduced over workers).
- ``ddp``: a plain PyTorch DistributedDataParallel loop over the same number of worker
  processes (gloo on CPU, NCCL on GPU), each with the CPUs a raylm worker gets, the same
  model, micro-batch, AdamW and gradient clipping; no Ray, no DeepSpeed. What a user's
  own torchrun script would do, and the baseline of issue 12's CPU target.
- ``deepspeed``: the same worker processes running raylm's DeepSpeed engine config
  (``raylm.train.deepspeed_config``) without Ray: it splits raylm's cost into DeepSpeed's
  and Ray's.
- ``single``: one process over the whole global batch with all the machine's threads
  (the earlier README baseline); on GPU also ``compiled`` (the same under torch.compile).

The baselines are interleaved with ``--repeats`` raylm runs (ddp, deepspeed, raylm, ddp,
deepspeed, raylm, ..., ddp, deepspeed); each raylm run is judged against the mean of the
baselines on either side of it, and the figure is the median over runs.
Writes JSON (and prints it):

    python bench/train_throughput.py                              # CPU, gpt2-tiny
    python bench/train_throughput.py --model gpt2-small --use-gpu --workers 1 \\
        --seq-len 1024 --micro-batch 16 --precision bf16 --zero 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import raylm
from raylm.data.synthetic import write_corpus
from raylm.models import build_model, flops_per_token
from raylm.train.metrics import peak_flops, peak_memory_bytes

LOG_EVERY = 5  # steps per timing window, as raylm's trainer.log_every below
WARMUP_STEPS = 5


def machine() -> dict:
    info = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loop(kind: str, rank: int, world: int, spec: dict[str, Any]) -> dict[str, Any] | None:
    """One process of a baseline: build, warm up, time windows of LOG_EVERY steps."""
    import torch.distributed as dist

    use_gpu, precision = spec["use_gpu"], spec["precision"]
    device = torch.device(f"cuda:{rank}" if use_gpu else "cpu")
    if use_gpu:
        torch.cuda.set_device(device)
    torch.manual_seed(0)
    model = build_model("clm", spec["model_cfg"], spec["vocab"]).to(device).train()
    whole = kind in ("single", "compiled")  # one process over the whole global batch
    batch = spec["micro_batch"] * (spec["workers"] if whole else 1)
    x = torch.randint(0, spec["vocab"], (batch, spec["seq_len"]), device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    if kind == "deepspeed":
        import deepspeed

        from raylm.train.deepspeed_config import deepspeed_config
        from raylm.train.loop import param_groups

        ds_config = deepspeed_config(spec["c"], world, 10**6)
        engine, *_ = deepspeed.initialize(
            model=model, config=ds_config, model_parameters=param_groups(model, 0.01)
        )

        def step() -> None:
            loss = engine(input_ids=x, labels=x).loss
            engine.backward(loss)
            engine.step()
    else:
        net = model
        if kind == "ddp":
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[rank] if use_gpu else None
            )
        if kind == "compiled":
            net = torch.compile(model)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=use_gpu)

        def step() -> None:
            with torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None):
                loss = net(input_ids=x, labels=x).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

    def sync() -> None:
        if use_gpu:
            torch.cuda.synchronize()
        if dist.is_initialized():
            dist.barrier()

    for _ in range(WARMUP_STEPS):
        step()
    windows = []
    for _ in range(max(1, spec["steps"] // LOG_EVERY)):
        sync()
        t = time.perf_counter()
        for _ in range(LOG_EVERY):
            step()
        sync()
        windows.append(time.perf_counter() - t)
    if rank:
        return None
    tokens = batch * spec["seq_len"] * LOG_EVERY * world
    tps = tokens / statistics.median(windows)
    peak = peak_flops(precision) if use_gpu else None
    return {
        "tokens_per_s": tps,
        "mfu": flops_per_token(model.config, spec["seq_len"]) * tps / (peak * world)
        if peak
        else None,
        "peak_memory_gb": peak_memory_bytes() / 2**30,
        "processes": world,
        "threads_per_process": torch.get_num_threads(),
        "window_tokens_per_s": [round(tokens / w) for w in windows],
    }


def _process(rank: int, kind: str, world: int, port: int, spec: dict, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
    )
    if not spec["use_gpu"]:
        os.environ["DS_ACCELERATOR"] = "cpu"
        torch.set_num_threads(spec["threads"][kind])
    from raylm._internal.logs import quiet_libraries

    quiet_libraries(False)
    if world > 1 or kind == "deepspeed":
        import torch.distributed as dist

        dist.init_process_group("nccl" if spec["use_gpu"] else "gloo", rank=rank, world_size=world)
    result = _loop(kind, rank, world, spec)
    if result is not None:
        Path(out).write_text(json.dumps(result))


def baseline(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run one baseline in fresh processes (none of this process's threads or memory)."""
    import torch.multiprocessing as mp

    world = 1 if kind in ("single", "compiled") else spec["workers"]
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        mp.spawn(_process, args=(kind, world, _free_port(), spec, f.name), nprocs=world)
        result = json.loads(Path(f.name).read_text())
    print(f"{kind}: {result['tokens_per_s']:,.0f} tokens/s", flush=True)
    return result


def run_raylm(overrides: list[str], run_dir: Path) -> dict[str, Any]:
    raylm.run("pretrain", overrides)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first = next((r["time_to_first_step_s"] for r in rows if "time_to_first_step_s" in r), None)
    rows = [r for r in rows if "tokens_per_s" in r][1:]  # the first window includes start-up
    return {
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rows),
        "mfu": statistics.median(r["mfu"] for r in rows) if "mfu" in rows[0] else None,
        "peak_memory_gb": max(r["peak_memory_gb"] for r in rows),
        "data_wait_pct": statistics.median(r["data_wait_pct"] for r in rows),
        "time_to_first_step_s": first,
        "window_tokens_per_s": [round(r["tokens_per_s"]) for r in rows],
        "epochs": max(r["epoch"] for r in rows) + 1,
    }


def mean_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out = dict(runs[-1])
    out["tokens_per_s"] = statistics.mean(r["tokens_per_s"] for r in runs)
    out["runs_tokens_per_s"] = [round(r["tokens_per_s"]) for r in runs]
    if runs[0]["mfu"] is not None:
        out["mfu"] = statistics.mean(r["mfu"] for r in runs)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gpt2-tiny")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--zero", default="2")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--steps", type=int, default=300, help="timed steps per run")
    p.add_argument("--repeats", type=int, default=3, help="raylm runs, each between baselines")
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--out", default="bench/results/train_throughput.json")
    p.add_argument("overrides", nargs="*", help="more raylm pretrain overrides (key=value)")
    a = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="raylm-bench-"))
    # One epoch covers the run (about 50 tokens a document), so no window pays for an
    # epoch restart of the data iterator; 4000 documents are enough on CPU.
    tokens = (a.steps + LOG_EVERY) * a.micro_batch * a.workers * a.seq_len
    corpus = write_corpus(work / "train.txt", max(4000, tokens * 12 // 10 // 50))
    raylm.run(
        "tokenizer",
        [
            f"data.train_files=[{corpus}]",
            f"tokenizer.path={work / 'tok'}",
            "tokenizer.vocab_size=1000",
        ],
    )
    overrides = [
        f"model={a.model}",
        f"deepspeed=zero{a.zero}",
        f"scaling={'gpu' if a.use_gpu else 'cpu'}",
        f"scaling.num_workers={a.workers}",
        f"data.train_files=[{corpus}]",
        f"tokenizer.path={work / 'tok'}",
        f"output_dir={work / 'run'}",
        f"trainer.max_steps={a.steps + LOG_EVERY}",
        f"trainer.seq_len={a.seq_len}",
        f"trainer.micro_batch_size={a.micro_batch}",
        f"trainer.precision={a.precision}",
        f"trainer.log_every={LOG_EVERY}",
        "trainer.checkpoint_every=100000",
        "trainer.eval_every=100000",
        *a.overrides,
    ]
    from omegaconf import OmegaConf

    from raylm.train.job import prepare

    cfg = raylm.compose("pretrain", overrides)
    c = prepare(cfg)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    cpus = max(1, int(c["scaling"]["cpus_per_worker"]))
    spec = {
        "model_cfg": model_cfg,
        "vocab": c["vocab_size"],
        "seq_len": a.seq_len,
        "micro_batch": a.micro_batch,
        "workers": a.workers,
        "steps": a.steps,
        "precision": a.precision,
        "use_gpu": a.use_gpu,
        "c": c,
        # A raylm worker gets scaling.cpus_per_worker CPUs, and Ray sets its thread count
        # to match; the single-process loop has the machine.
        "threads": {"ddp": cpus, "deepspeed": cpus, "single": os.cpu_count() or 1},
    }
    # Interleaved: ddp, deepspeed, raylm, ddp, deepspeed, raylm, ..., ddp, deepspeed. Each
    # raylm run is judged against the baselines on either side of it; the figure is the
    # median over runs.
    kinds = ["ddp", "deepspeed"]
    runs: dict[str, list[dict[str, Any]]] = {k: [baseline(k, spec)] for k in kinds}
    runs["raylm"] = []
    for i in range(a.repeats):
        import ray

        runs["raylm"].append(
            run_raylm([*overrides, f"output_dir={work / f'run{i}'}"], work / f"run{i}")
        )
        ray.shutdown()  # the baselines run with no Ray cluster beside them
        print(f"raylm: {runs['raylm'][-1]['tokens_per_s']:,.0f} tokens/s", flush=True)
        for k in kinds:
            runs[k].append(baseline(k, spec))
    single = baseline("single", spec)
    compiled = baseline("compiled", spec) if a.use_gpu else None

    def ratios(k: str, of: str = "raylm") -> list[float]:
        ref = runs[k]
        return [
            r["tokens_per_s"]
            / statistics.mean([ref[i]["tokens_per_s"], ref[i + 1]["tokens_per_s"]])
            for i, r in enumerate(runs[of])
        ]

    ours = dict(runs["raylm"][len(runs["raylm"]) // 2])
    ours["tokens_per_s"] = statistics.median(r["tokens_per_s"] for r in runs["raylm"])
    ours["runs_tokens_per_s"] = [round(r["tokens_per_s"]) for r in runs["raylm"]]
    result = {
        "benchmark": "train_throughput",
        "machine": machine(),
        "config": {
            "model": a.model,
            "seq_len": a.seq_len,
            "micro_batch": a.micro_batch,
            "workers": a.workers,
            "zero_stage": a.zero,
            "precision": a.precision,
            "global_batch": a.micro_batch * a.workers,
            "steps": a.steps,
            "repeats": a.repeats,
            "overrides": a.overrides,
        },
        "raylm": ours,
        "ddp_pytorch": mean_of(runs["ddp"]),
        "deepspeed_no_ray": mean_of(runs["deepspeed"]),
        "single_pytorch": single,
        "raylm_vs_ddp": statistics.median(ratios("ddp")),
        "raylm_vs_ddp_runs": [round(x, 3) for x in ratios("ddp")],
        "raylm_vs_deepspeed_no_ray": statistics.median(ratios("deepspeed")),
        "deepspeed_no_ray_vs_ddp": statistics.mean(r["tokens_per_s"] for r in runs["deepspeed"])
        / statistics.mean(r["tokens_per_s"] for r in runs["ddp"]),
        "raylm_vs_single": ours["tokens_per_s"] / single["tokens_per_s"],
    }
    if compiled:
        result["compiled_pytorch"] = compiled
        result["raylm_vs_compiled"] = ours["tokens_per_s"] / compiled["tokens_per_s"]
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
