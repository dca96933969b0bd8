"""Training throughput: ``raylm pretrain`` next to a plain PyTorch loop, same model and batch.

Both run in this one invocation on this machine. raylm's figures come from its own
metrics.jsonl (rank 0, all-reduced over workers); the plain loop is a single process
with torch.optim.AdamW over the same global batch (micro_batch x workers), no Ray, no
DeepSpeed. Writes JSON (and prints it):

    python bench/train_throughput.py                              # CPU, gpt2-tiny
    python bench/train_throughput.py --model gpt2-small --use-gpu --workers 1 \\
        --seq-len 1024 --micro-batch 16 --precision bf16 --zero 2
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

import raylm
from raylm.data.synthetic import write_corpus
from raylm.models import build_model, flops_per_token
from raylm.train.metrics import peak_flops, peak_memory_bytes


def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "cpus": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def plain_pytorch(
    model_cfg: dict, vocab: int, seq_len: int, batch: int, steps: int, precision: str, use_gpu: bool
) -> dict:
    device = "cuda" if use_gpu else "cpu"
    torch.manual_seed(0)
    model = build_model("clm", model_cfg, vocab).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=use_gpu)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    x = torch.randint(0, vocab, (batch, seq_len), device=device)
    warmup, times = 3, []
    for i in range(steps + warmup):
        t = time.perf_counter()
        with torch.autocast(device_type=device, dtype=dtype, enabled=dtype is not None):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if use_gpu:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    tps = batch * seq_len / statistics.median(times)
    peak = peak_flops(precision) if use_gpu else None
    return {
        "tokens_per_s": tps,
        "mfu": flops_per_token(model.config, seq_len) * tps / peak if peak else None,
        "peak_memory_gb": peak_memory_bytes() / 2**30,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gpt2-tiny")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--zero", default="2")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--out", default="bench/results/train_throughput.json")
    a = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="raylm-bench-"))
    # One epoch covers the run (about 50 tokens a document), so no window pays for an
    # epoch restart of the data iterator; 4000 documents are enough on CPU.
    tokens = a.steps * a.micro_batch * a.workers * a.seq_len
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
        f"trainer.max_steps={a.steps}",
        f"trainer.seq_len={a.seq_len}",
        f"trainer.micro_batch_size={a.micro_batch}",
        f"trainer.precision={a.precision}",
        "trainer.log_every=5",
        "trainer.checkpoint_every=100000",
        "trainer.eval_every=100000",
    ]
    raylm.run("pretrain", overrides)
    rows = [json.loads(x) for x in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "tokens_per_s" in r][1:]  # the first window includes start-up
    ours = {
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rows),
        "mfu": statistics.median(r["mfu"] for r in rows) if "mfu" in rows[0] else None,
        "peak_memory_gb": max(r["peak_memory_gb"] for r in rows),
        "window_tokens_per_s": [round(r["tokens_per_s"]) for r in rows],
        "epochs": max(r["epoch"] for r in rows) + 1,
    }

    cfg = raylm.compose("pretrain", overrides)
    from omegaconf import OmegaConf

    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    vocab = model_cfg["vocab_size"] or len(raylm.data.load_tokenizer(str(work / "tok")))
    plain = plain_pytorch(
        model_cfg, vocab, a.seq_len, a.micro_batch * a.workers, a.steps, a.precision, a.use_gpu
    )
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
        },
        "raylm": ours,
        "plain_pytorch": plain,
        "raylm_vs_plain": ours["tokens_per_s"] / plain["tokens_per_s"],
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
