"""Compression benchmark: a MiniLM-sized encoder (6 layers x 384, 12 heads) fine-tuned on a
task that is not trivially separable, then ``raylm compress`` (distill to half depth ->
prune heads and FFN neurons -> int8), against the issue's targets.

Everything runs in this one invocation on this machine: the data (generated: texts mixing
two topics, labeled by the majority one, 5 % label noise), a WordPiece tokenizer, the
teacher's fine-tuning, the compression chain and its report (same eval rows, same thread
count for every model). Writes bench/results/compress.{json,md,png}:

    python bench/compress.py                  # the README figures (about 15 min on 2 cores)
    python bench/compress.py --quick          # a smoke run of the same path
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

import raylm
from raylm.data.synthetic import mixed_documents, write_corpus, write_labeled

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, to check the path")
    p.add_argument("--teacher-steps", type=int, default=600)
    p.add_argument("--distill-steps", type=int, default=600)
    p.add_argument("--recovery-steps", type=int, default=200)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default=None, help="work dir (default: a temp dir)")
    a = p.parse_args()
    size = ["model.hidden_size=384", "model.num_layers=6", "model.num_heads=12"]
    if a.quick:
        a.teacher_steps, a.distill_steps, a.recovery_steps = 40, 40, 10
        size = ["model.hidden_size=64", "model.num_layers=4", "model.num_heads=4"]
    work = Path(a.out or tempfile.mkdtemp(prefix="raylm-bench-compress-"))
    start = time.time()

    data = work / "data"
    train = write_labeled(data / "train.jsonl", 0, rows=mixed_documents(6000, seed=0))
    evals = write_labeled(data / "eval.jsonl", 0, rows=mixed_documents(1000, seed=1))
    corpus = write_corpus(data / "corpus.txt", 3000, seed=0)
    raylm.run(
        "tokenizer",
        [
            f"data.train_files=[{corpus}]",
            f"tokenizer.path={work / 'tok'}",
            "tokenizer.type=wordpiece",
            "tokenizer.vocab_size=2000",
            "overwrite=true",
        ],
    )
    common = [
        f"data.train_files=[{train}]",
        f"data.eval_files=[{evals}]",
        f"scaling.num_workers={a.workers}",
        "trainer.seq_len=96",
        "trainer.micro_batch_size=16",
        "trainer.warmup_steps=30",
        "trainer.log_every=20",
        "trainer.eval_batches=1000",
        "overwrite=true",
    ]
    teacher = raylm.run(
        "finetune",
        [
            *common,
            "model=bert-base",
            "model.vocab_size=null",
            "model.dropout=0.1",
            *size,
            f"tokenizer.path={work / 'tok'}",
            f"output_dir={work / 'teacher'}",
            f"trainer.max_steps={a.teacher_steps}",
            "trainer.lr=5e-4",
            f"trainer.eval_every={max(a.teacher_steps // 4, 1)}",
            f"trainer.checkpoint_every={a.teacher_steps}",
        ],
    )
    summary = raylm.run(
        "compress",
        [
            *common,
            f"model.init_from={teacher['model_dir']}",
            f"output_dir={work / 'compressed'}",
            "compress.steps=[distill,prune,quantize]",
            f"trainer.max_steps={a.distill_steps}",
            "trainer.lr=3e-4",
            f"trainer.eval_every={max(a.distill_steps // 4, 1)}",
            f"trainer.checkpoint_every={a.distill_steps}",
            "trainer.metric=eval_accuracy",
            "compress.distill.alpha=0.5",
            "compress.distill.temperature=2.0",
            "compress.prune.heads=0.5",
            "compress.prune.neurons=0.5",
            f"compress.prune.recovery_steps={a.recovery_steps}",
            "compress.report.threads=1",
            "compress.report.repeats=30",
        ],
    )
    report = json.loads(Path(summary["report"]["json"]).read_text())
    report["bench"] = {
        "machine": {
            "platform": platform.platform(),
            "cpus": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "teacher": " ".join(size),
        "teacher_steps": a.teacher_steps,
        "distill_steps": a.distill_steps,
        "recovery_steps": a.recovery_steps,
        "seconds": time.time() - start,
        "quick": a.quick,
    }
    name = "compress_quick" if a.quick else "compress"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2))
    shutil.copy(summary["report"]["md"], RESULTS / f"{name}.md")
    shutil.copy(summary["report"]["png"], RESULTS / f"{name}.png")
    print(f"wrote {RESULTS / name}.{{json,md,png}} in {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
