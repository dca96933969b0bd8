"""Rank-0 metrics: metrics.jsonl, TensorBoard events, MFU and memory, the loss-curve PNG."""

from __future__ import annotations

import json
import math
import resource
from pathlib import Path
from typing import Any

import torch

METRICS_FILE = "metrics.jsonl"
STOP_FILE = "stop_requested"  # the driver got SIGTERM: checkpoint and stop (job.fit)
DIVERGED_FILE = "diverged.json"  # a run stopped on a NaN / inf loss: its step and loss
LOSS_CURVE_FILE = "loss_curve.png"

# Dense peak TFLOP/s per GPU for 16-bit tensor-core math (vendor datasheets); fp32 runs
# are measured against TF32, half of that. Matched by substring of the device name.
PEAK_TFLOPS_16BIT = {
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 125.0,
    "L4": 121.0,
    "V100": 125.0,
    "T4": 65.0,
    "RTX 4090": 165.0,
}


def peak_flops(precision: str) -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, tflops in PEAK_TFLOPS_16BIT.items():
        if key in name:
            return tflops * 1e12 * (1.0 if precision in ("bf16", "fp16") else 0.5)
    return None


def peak_memory_bytes() -> int:
    """GPU: peak allocated by torch. CPU: the worker process's peak resident set."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def host_memory_bytes() -> int:
    """This process's resident set now (the baseline :func:`peak_memory_bytes` is read against)."""
    import psutil

    return int(psutil.Process().memory_info().rss)


class MetricsLog:
    """Appends one JSON object per log event and mirrors scalars to TensorBoard.

    On resume, rows past the restored step are dropped first: they were written by the
    interrupted attempt after its last checkpoint and will be written again.
    """

    def __init__(self, output_dir: str | Path, resume_step: int | None):
        from tensorboardX import SummaryWriter

        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / METRICS_FILE
        rows = read_metrics(self.path) if resume_step is not None else []
        with open(self.path, "w") as f:
            for row in rows:
                if row.get("step", 0) <= resume_step:
                    f.write(json.dumps(row) + "\n")
        purge = None if resume_step is None else resume_step + 1
        self.tb = SummaryWriter(str(self.dir / "tensorboard"), purge_step=purge)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"step": step, **metrics}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.tb.add_scalar(key, value, step)
        self.tb.flush()

    def close(self) -> None:
        self.tb.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_loss_curve(output_dir: str | Path) -> Path | None:
    """Train and eval loss against step, written next to metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(Path(output_dir) / METRICS_FILE)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    if not train:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    ax.plot(*zip(*train, strict=True), label="train loss", lw=1.5)
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="eval loss", lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(Path(output_dir).name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(output_dir) / LOSS_CURVE_FILE
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_confusion(confusion: list[list[int]], labels: list[str], path: str | Path) -> Path:
    """Rows: true label, columns: predicted; counts written in each cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(labels)
    fig, ax = plt.subplots(figsize=(1.2 * n + 2.5, 1.2 * n + 1.5), dpi=120)
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    peak = max(max(row) for row in confusion) or 1
    for i in range(n):
        for j in range(n):
            color = "white" if confusion[i][j] > peak / 2 else "black"
            ax.text(j, i, str(confusion[i][j]), ha="center", va="center", color=color)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
