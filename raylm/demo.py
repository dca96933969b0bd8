"""``make demo``: raw text to a pretrained, exported GPT on an embedded local Ray cluster.

Makes a corpus at run time (no third-party text), trains a tokenizer, pretrains a tiny
GPT with 2 CPU workers under DeepSpeed ZeRO-2, and shows where everything landed. Each
step prints the CLI command that does the same.
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

from . import run
from .data.synthetic import write_corpus


def _step(title: str, command: str, overrides: list[str]):
    print(
        f"\n== {title}\n$ raylm {command} {' '.join(shlex.quote(o) for o in overrides)}", flush=True
    )
    return run(command, overrides)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="outputs/demo")
    p.add_argument("--steps", type=int, default=300)
    a = p.parse_args()
    out = Path(a.out).resolve()
    start = time.time()

    train = write_corpus(out / "data" / "train.txt", 3000, seed=0)
    evals = write_corpus(out / "data" / "eval.txt", 300, seed=1)
    print(f"corpus: {train} (3000 documents), {evals} (300 documents)")

    tok = out / "tokenizer"
    _step(
        "train a byte-level BPE tokenizer",
        "tokenizer",
        [
            f"data.train_files=[{train}]",
            f"tokenizer.path={tok}",
            "tokenizer.type=bpe",
            "tokenizer.vocab_size=1000",
            "overwrite=true",
        ],
    )

    run_dir = out / "pretrain"
    summary = _step(
        "pretrain gpt2-tiny: 2 workers, DeepSpeed ZeRO-2, CPU",
        "pretrain",
        [
            "model=gpt2-tiny",
            "task=clm",
            "deepspeed=zero2",
            "scaling=cpu",
            "scaling.num_workers=2",
            f"data.train_files=[{train}]",
            f"data.eval_files=[{evals}]",
            f"tokenizer.path={tok}",
            f"output_dir={run_dir}",
            f"trainer.max_steps={a.steps}",
            "trainer.seq_len=128",
            "trainer.micro_batch_size=8",
            "trainer.lr=2e-3",
            "trainer.warmup_steps=20",
            "trainer.eval_every=100",
            "trainer.checkpoint_every=100",
            "overwrite=true",
        ],
    )

    from transformers import pipeline

    generate = pipeline("text-generation", model=summary["model_dir"], device="cpu")
    text = generate("the quiet fox", max_new_tokens=16, do_sample=False)[0]["generated_text"]
    m = summary["metrics"]
    print(f"\n== done in {time.time() - start:.0f}s")
    print(
        f"final train loss {m.get('loss', float('nan')):.3f}, eval loss {m.get('eval_loss', float('nan')):.3f}, "
        f"eval perplexity {m.get('eval_perplexity', float('nan')):.2f}"
    )
    print(f"model (save_pretrained + tokenizer + raylm.json): {summary['model_dir']}")
    print(f"loss curve:  {summary['loss_curve']}")
    print(f"metrics:     {summary['metrics_file']}  (TensorBoard: {run_dir / 'tensorboard'})")
    print(f"sample:      {text!r}")


if __name__ == "__main__":
    main()
