"""Serving latency and throughput under each ingress mode: the raylm Serve app under
load, next to a FastAPI ingress that answers without a model (Serve's own floor in that
mode), next to the same model called directly in-process (the forward itself), next to
the same echo on plain uvicorn without Ray, and next to one bare Ray actor round trip.
In the default mode also the app with batching off and with two torch threads (what
@serve.batch buys on CPU). Each mode runs on its own cluster, in a child process.

A closed-loop load generator (aiohttp) keeps C requests in flight for a fixed time at
each concurrency; each request classifies one text. Writes JSON and a PNG:

    python bench/serve_latency.py                       # the demo-sized classifier
    python bench/serve_latency.py --model-dir outputs/demo/finetune/model
    python bench/serve_latency.py --preset gpt2-small --docs-per-text 4 \
        --out bench/results/serve_latency_gpt2-small.json   # where the forward dominates
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from train_throughput import machine

import raylm
from raylm.data.synthetic import documents, labeled_documents

RESULTS = Path(__file__).parent / "results"


def demo_classifier(root: Path, preset: str = "gpt2-tiny") -> Path:
    """A 4-label classifier on a 1000-token BPE tokenizer; gpt2-tiny is the size
    ``make demo`` fine-tunes. The weights are random, which changes no timing."""
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer

    from raylm.data.tokenizer import save_atomically, train_tokenizer
    from raylm.models.build import build_model

    save_atomically(train_tokenizer(documents(2000), "bpe", 1000), root / "tok")
    tok = AutoTokenizer.from_pretrained(root / "tok")
    cfg = OmegaConf.to_container(raylm.compose("finetune", [f"model={preset}"]).model)
    torch.manual_seed(0)
    model = build_model("seq_cls", cfg, len(tok), tok, ["city", "farm", "forest", "sea"])
    tok.pad_token = tok.eos_token
    d = root / "cls" / "model"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    (d / "raylm.json").write_text(json.dumps({"task": "seq_cls", "labels": model.config.id2label}))
    return d


def summarize(latencies_s: list[float], seconds: float) -> dict:
    ms = np.asarray(latencies_s) * 1000
    return {
        "requests": len(ms),
        "requests_per_s": len(ms) / seconds,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def direct(model_dir: Path, texts: list[str], seconds: float) -> dict:
    """The model in this process, one text per call: the floor Serve is measured against."""
    from raylm.predict.predictor import Classifier

    torch.set_num_threads(1)  # as a replica with serve.threads=1
    clf = Classifier(str(model_dir))
    for t in texts[:20]:
        clf.probabilities([t])
    lat, i, end = [], 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        clf.probabilities([texts[i % len(texts)]])
        lat.append(time.perf_counter() - t0)
        i += 1
    return summarize(lat, seconds)


async def load(url: str, texts: list[str], concurrency: int, seconds: float) -> dict:
    import aiohttp

    lat: list[float] = []
    errors = 0
    async with aiohttp.ClientSession() as session:

        async def one(i: int) -> float:
            t0 = time.perf_counter()
            async with session.post(url, json={"texts": [texts[i % len(texts)]]}) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"status {r.status}")
            return time.perf_counter() - t0

        for i in range(2 * concurrency):  # warm-up: connections, batch queues
            await one(i)

        async def worker(w: int) -> None:
            nonlocal errors
            i = w
            while time.perf_counter() < end:
                try:
                    lat.append(await one(i))
                except RuntimeError:
                    errors += 1
                i += concurrency

        start = time.perf_counter()
        end = start + seconds
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {**summarize(lat, elapsed), "errors": errors}


def echo_app():
    """A FastAPI ingress that answers without any model: Serve's own floor here."""
    from fastapi import FastAPI
    from ray import serve

    api = FastAPI()

    @serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
    @serve.ingress(api)
    class Echo:
        @api.post("/v1/classify")
        async def classify(self, body: dict):
            return {"results": [{"label": "none"} for _ in body["texts"]]}

    return Echo.bind()


PLAIN_APP = """
from fastapi import FastAPI
app = FastAPI()

@app.post("/v1/classify")
async def classify(body: dict):
    return {"results": [{"label": "none"} for _ in body["texts"]]}
"""


def plain_http(texts: list[str], concurrency: list[int], seconds: float, port: int) -> list:
    """The same echo on plain uvicorn + FastAPI, no Ray: the HTTP stack's own floor."""
    import subprocess
    import sys
    import urllib.request

    d = Path(tempfile.mkdtemp(prefix="raylm-bench-plain-"))
    (d / "plain_app.py").write_text(PLAIN_APP)
    cmd = [sys.executable, "-m", "uvicorn", "plain_app:app", "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--log-level", "warning"], cwd=d)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/docs", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/v1/classify"
        return [
            {"concurrency": c, **asyncio.run(load(url, texts, c, seconds))} for c in concurrency
        ]
    finally:
        proc.terminate()
        proc.wait()


def actor_round_trip_ms(n: int = 500) -> float:
    """Median ray.get(actor.f.remote()) on this cluster: one Ray hop, nothing else."""
    import ray

    @ray.remote(num_cpus=0)
    class Echo:
        def f(self, x):
            return x

    actor = Echo.remote()
    ray.get(actor.f.remote(0))
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        ray.get(actor.f.remote(i))
        times.append(time.perf_counter() - t0)
    ray.kill(actor)
    return float(np.median(times) * 1000)


def serve_mode(a: argparse.Namespace) -> dict:
    """One ingress mode (its own cluster: Serve reads the mode when its processes start):
    Serve's echo floor and the raylm app, and with ``--batching`` what @serve.batch and
    a second torch thread buy."""
    import ray
    from ray import serve

    from raylm.serve import build_app
    from raylm.serve.app import QUIET_LOGGING
    from raylm.serve.ingress import use

    use(a.child)
    texts = bench_texts(a.docs_per_text)
    ray.init(include_dashboard=False, log_to_driver=False)
    out = {"ray_actor_round_trip_p50_ms": actor_round_trip_ms(), "serve": {}}
    logs = QUIET_LOGGING  # as raylm serve runs it
    serve.start(http_options={"host": "127.0.0.1", "port": a.port}, logging_config=logs)
    common = {"models": {"cls": str(a.model_dir)}, "threads": 1, "max_ongoing_requests": 256}
    batched = {"batch_size": a.batch_size, "batch_wait_s": a.batch_wait_s}
    apps = {"echo": echo_app, "batched": lambda: build_app({**common, **batched})}
    if a.batching:
        apps["unbatched"] = lambda: build_app({**common, "batch_size": 1})
        apps["batched_threads2"] = lambda: build_app({**common, **batched, "threads": 2})
        apps["unbatched_threads2"] = lambda: build_app({**common, "batch_size": 1, "threads": 2})
    for name, app in apps.items():
        serve.run(app(), name=name, route_prefix=f"/{name}", logging_config=logs)
        url = f"http://127.0.0.1:{a.port}/{name}/v1/classify"
        rows = []
        for c in a.concurrency:
            row = {"concurrency": c, **asyncio.run(load(url, texts, c, a.seconds))}
            print(a.child, name, json.dumps(row), flush=True)
            rows.append(row)
        out["serve"][name] = rows
        serve.delete(name)
    serve.shutdown()
    ray.shutdown()
    return out


def bench_texts(docs_per_text: int) -> list[str]:
    docs = [r["text"] for r in labeled_documents(500 * docs_per_text, seed=5)]
    return [" ".join(docs[i : i + docs_per_text]) for i in range(0, len(docs), docs_per_text)]


def at(rows: list[dict], concurrency: int) -> dict:
    return next(r for r in rows if r["concurrency"] == concurrency)


def targets(mode: dict, direct_p50_ms: float, top: int) -> dict:
    """The issue's two targets, both sides from this run: p50 at concurrency 1 within
    echo floor + direct forward + 1 ms, and at least half the echo's requests/s at the top
    concurrency."""
    serve_rows = mode["serve"]
    p50, floor = at(serve_rows["batched"], 1)["p50_ms"], at(serve_rows["echo"], 1)["p50_ms"]
    ratio = (
        at(serve_rows["batched"], top)["requests_per_s"]
        / at(serve_rows["echo"], top)["requests_per_s"]
    )
    target = floor + direct_p50_ms + 1.0
    return {
        "p50_ms": p50,
        "p50_target_ms": target,
        "p50_met": p50 <= target,
        "overhead_over_floor_and_forward_ms": p50 - floor - direct_p50_ms,
        f"requests_per_s_vs_echo_at_c{top}": ratio,
        "throughput_met": ratio >= 0.5,
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=120)
    for mode, m in results["modes"].items():
        for name, style in (("batched", "o-"), ("echo", "x--")):
            rows = m["serve"][name]
            cs = [r["concurrency"] for r in rows]
            label = f"{mode}: {'raylm' if name == 'batched' else 'echo floor'}"
            a.plot(cs, [r["requests_per_s"] for r in rows], style, label=label)
            b.plot(cs, [r["p50_ms"] for r in rows], style, label=label)
    b.axhline(results["direct"]["p50_ms"], color="gray", lw=1, label="direct forward p50")
    for ax, title in ((a, "throughput (requests/s)"), (b, "p50 latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent requests")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path)
    p.add_argument("--preset", default="gpt2-tiny", help="model preset when no --model-dir")
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    p.add_argument("--modes", nargs="+", default=["proxy", "throughput", "haproxy"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--batch-wait-s", type=float, default=0.0)
    p.add_argument(
        "--docs-per-text", type=int, default=1, help="longer texts: join this many documents"
    )
    p.add_argument("--port", type=int, default=8321)
    p.add_argument("--out", type=Path, default=RESULTS / "serve_latency.json")
    p.add_argument("--child", help=argparse.SUPPRESS)  # one ingress mode, in its own process
    p.add_argument("--batching", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        a.out.write_text(json.dumps(serve_mode(a)))
        return

    import subprocess
    import sys

    from raylm.serve.ingress import DEFAULT

    tmp = Path(tempfile.mkdtemp(prefix="raylm-bench-serve-"))
    model_dir = a.model_dir or demo_classifier(tmp, a.preset)
    texts = bench_texts(a.docs_per_text)
    results = {
        "machine": machine(),
        "model_dir": str(model_dir),
        "model": str(a.model_dir) if a.model_dir else a.preset,
        "seconds_per_point": a.seconds,
        "mean_words_per_text": sum(len(t.split()) for t in texts) / len(texts),
        "direct": direct(model_dir, texts, a.seconds),
        "plain_fastapi": plain_http(texts, a.concurrency, a.seconds, a.port + 1),
        "modes": {},
    }
    for mode in a.modes:
        child = tmp / f"{mode}.json"
        cmd = [sys.executable, __file__, "--child", mode, "--model-dir", str(model_dir)]
        cmd += ["--seconds", str(a.seconds), "--port", str(a.port), "--out", str(child)]
        cmd += ["--batch-size", str(a.batch_size), "--batch-wait-s", str(a.batch_wait_s)]
        cmd += ["--docs-per-text", str(a.docs_per_text), "--concurrency"]
        cmd += [str(c) for c in a.concurrency] + (["--batching"] if mode == DEFAULT else [])
        subprocess.run(cmd, check=True)
        results["modes"][mode] = json.loads(child.read_text())

    top = max(a.concurrency)
    for m in results["modes"].values():
        m["targets"] = targets(m, results["direct"]["p50_ms"], top)
    if DEFAULT in results["modes"]:
        rows = results["modes"][DEFAULT]["serve"]
        results["batching_at_max_concurrency"] = {
            "threads1_batched_over_unbatched": at(rows["batched"], top)["requests_per_s"]
            / at(rows["unbatched"], top)["requests_per_s"],
            "threads2_batched_over_unbatched": at(rows["batched_threads2"], top)["requests_per_s"]
            / at(rows["unbatched_threads2"], top)["requests_per_s"],
        }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(results, indent=2))
    plot(results, a.out.with_suffix(".png"))
    summary = {m: v["targets"] for m, v in results["modes"].items()}
    print(json.dumps({"direct_p50_ms": results["direct"]["p50_ms"], **summary}, indent=2))
    print(f"wrote {a.out} and {a.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
