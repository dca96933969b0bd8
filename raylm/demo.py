"""``make demo``: raw text to a pretrained GPT and a fine-tuned classifier, on an
embedded local Ray cluster.

Makes a corpus at run time (no third-party text), trains a tokenizer, pretrains a tiny
GPT with 2 CPU workers under DeepSpeed ZeRO-2, fine-tunes it as a topic classifier,
compresses that (distill, prune, int8) with a report of what each step cost, serves the
compressed model over HTTP with Ray Serve, and shows where everything landed. Each step prints the CLI command that does the same.
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

from . import run
from .data.synthetic import write_corpus, write_labeled


def _step(title: str, command: str, overrides: list[str]):
    print(
        f"\n== {title}\n$ raylm {command} {' '.join(shlex.quote(o) for o in overrides)}", flush=True
    )
    return run(command, overrides)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="outputs/demo")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--port", type=int, default=8000, help="HTTP port of the served classifier")
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
    sample = generate("the quiet fox", max_new_tokens=16, do_sample=False)[0]["generated_text"]
    m = summary["metrics"]

    # Fine-tune the pretrained GPT as a topic classifier on a labeled set made here.
    labeled_train = write_labeled(out / "data" / "labeled_train.jsonl", 1200, seed=2)
    labeled_eval = write_labeled(out / "data" / "labeled_eval.jsonl", 300, seed=3)
    cls_dir = out / "finetune"
    cls = _step(
        "fine-tune it as a topic classifier (seq_cls)",
        "finetune",
        [
            f"model.init_from={summary['model_dir']}",
            "task=seq_cls",
            "scaling.num_workers=2",
            f"data.train_files=[{labeled_train}]",
            f"data.eval_files=[{labeled_eval}]",
            f"output_dir={cls_dir}",
            "trainer.max_steps=150",
            "trainer.seq_len=64",
            "trainer.micro_batch_size=16",
            "trainer.lr=1e-3",
            "trainer.warmup_steps=10",
            "trainer.eval_every=50",
            "trainer.checkpoint_every=150",
            "overwrite=true",
        ],
    )
    compressed = _step(
        "compress the classifier: distill to half depth, prune heads and neurons, int8",
        "compress",
        [
            f"model.init_from={cls['model_dir']}",
            "compress.steps=[distill,prune,quantize]",
            "compress.prune.heads=0.5",
            "compress.prune.neurons=0.5",
            "scaling.num_workers=2",
            f"data.train_files=[{labeled_train}]",
            f"data.eval_files=[{labeled_eval}]",
            f"output_dir={out / 'compress'}",
            "trainer.max_steps=100",
            "trainer.seq_len=64",
            "trainer.micro_batch_size=16",
            "trainer.lr=1e-3",
            "trainer.warmup_steps=10",
            "trainer.eval_every=50",
            "trainer.checkpoint_every=100",
            "overwrite=true",
        ],
    )
    import collections
    import json

    counts = collections.Counter(
        json.loads(x)["label"] for x in labeled_eval.read_text().splitlines()
    )
    majority = max(counts.values()) / sum(counts.values())
    classify = pipeline("text-classification", model=cls["model_dir"], device="cpu")
    sentences = [
        "the old sailor drifts near the harbor.",
        "the tall tractor plows beside the barn.",
        "the dark owl watches above the trail.",
        "the bright bus honks behind the market.",
    ]

    print(f"\n== done in {time.time() - start:.0f}s")
    print(
        f"pretrain: final train loss {m.get('loss', float('nan')):.3f}, eval loss "
        f"{m.get('eval_loss', float('nan')):.3f}, eval perplexity {m.get('eval_perplexity', float('nan')):.2f}"
    )
    print(f"  model (save_pretrained + tokenizer + raylm.json): {summary['model_dir']}")
    print(f"  loss curve: {summary['loss_curve']}")
    print(f"  metrics:    {summary['metrics_file']}  (TensorBoard: {run_dir / 'tensorboard'})")
    print(f"  sample:     {sample!r}")
    print(
        f"finetune: eval accuracy {cls['metrics']['eval_accuracy']:.3f} "
        f"(majority-class baseline {majority:.3f}), macro-F1 {cls['metrics']['eval_macro_f1']:.3f}, "
        f"best step {cls['best']['step']}"
    )
    print(f"  model:      {cls['model_dir']}")
    print(f"  confusion:  {cls['confusion_matrix']}")
    for text, pred in zip(sentences, classify(sentences), strict=True):
        print(f"  {pred['label']:>6} ({pred['score']:.2f})  {text}")
    int8 = compressed["models"]["quantize"]
    teacher, last = compressed["rows"][0], compressed["rows"][-1]
    print(
        f"compress: {last['vs_teacher']['latency_speedup_b1']:.1f}x faster at batch 1, "
        f"{last['vs_teacher']['size_ratio']:.2f}x the size, eval accuracy "
        f"{last['metrics']['eval_accuracy']:.3f} (classifier {teacher['metrics']['eval_accuracy']:.3f})"
    )
    print(f"  report:     {compressed['report']['md']} (+ .json, .png)")
    print(f"  int8 model: {int8}")
    serve_and_ask(int8, sentences, a.port)


def serve_and_ask(model_dir: str, sentences: list[str], port: int) -> None:
    """``raylm serve`` a classifier on this cluster and send it real HTTP requests."""
    import requests
    from omegaconf import OmegaConf
    from ray import serve

    from . import compose
    from .serve.job import app_args, start

    overrides = [f"model_dir={model_dir}", f"serve.port={port}"]
    print(f"\n== serve it over HTTP with Ray Serve\n$ raylm serve {' '.join(overrides)}")
    c = OmegaConf.to_container(compose("serve", overrides), resolve=True)
    url = start(c, app_args(c))
    try:
        print(f"serving at {url} (OpenAPI: {url}/docs)")
        r = requests.post(f"{url}/v1/classify", json={"texts": sentences}, timeout=60)
        print(f"POST /v1/classify -> {r.status_code}")
        for text, res in zip(sentences, r.json()["results"], strict=True):
            print(f"  {res['label']:>6} ({res['score']:.2f})  {text}")
        bad = requests.post(f"{url}/v1/classify", json={"texts": []}, timeout=60)
        print(f"POST /v1/classify {{'texts': []}} -> {bad.status_code} {bad.json()['error']}")
        print(
            f"try: curl -s {url}/v1/classify -H 'content-type: application/json' "
            """-d '{"texts": ["the swift fox hunts near the river."]}'"""
        )
    finally:
        serve.shutdown()


if __name__ == "__main__":
    main()
