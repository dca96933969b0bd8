"""The compression report: one row per model (the teacher, then each step), ratios to the
teacher and to the step before, the targets each step is held to, as JSON, a Markdown
table, and a PNG of metric against latency with marker area proportional to size."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Published anchors (DistilBERT; ONNX Runtime's BERT-base int8), as the issue sets them:
# (step, what, compared with, threshold, "min" = at least / "max" = at most).
TARGETS = (
    ("distill", "metric_retention", "teacher", 0.97, "min"),
    ("distill", "throughput_speedup", "teacher", 1.8, "min"),
    ("quantize", "size_ratio", "previous", 0.30, "max"),
    ("quantize", "latency_speedup_b1", "previous", 1.8, "min"),
    ("quantize", "metric_drop_points", "previous", 0.5, "max"),
    ("chain", "latency_speedup_b1", "teacher", 4.0, "min"),
    ("chain", "size_ratio", "teacher", 0.15, "max"),
    ("chain", "metric_retention", "teacher", 0.97, "min"),
)
REPORT_FILES = ("report.json", "report.md", "report.png")


def _ratios(row: dict, base: dict, metric: str, mode: str) -> dict[str, float]:
    m, b = row["metrics"].get(metric), base["metrics"].get(metric)
    small = next(iter(row["latency_ms"]))  # batch sizes in increasing order
    out = {
        "parameter_ratio": row["parameters"] / base["parameters"],
        "size_ratio": row["size_bytes"] / base["size_bytes"],
        "latency_speedup_b1": base["latency_ms"][small] / row["latency_ms"][small],
        "throughput_speedup": row["throughput_rows_per_s"] / base["throughput_rows_per_s"],
    }
    if m is not None and b:
        out["metric_retention"] = m / b if mode == "max" else b / m
        # In points (x100) for metrics in [0, 1]; for others, in the metric's units.
        scale = 100.0 if 0 <= b <= 1 else 1.0
        out["metric_drop_points"] = (b - m) * scale if mode == "max" else (m - b) * scale
    return out


def why(row: dict[str, Any], what: str) -> str | None:
    """The measured reason a size target is missed, where the measurement has one."""
    if what != "size_ratio":
        return None
    comp = row.get("composition") or {}
    if "int8_weight_bytes" in comp:
        other = 1 - comp["int8_weight_bytes"] / row["size_bytes"]
        return (
            f"{other:.0%} of the int8 file is not int8 weights (fp32 biases and LayerNorms, "
            "quantization scales, the graph)"
        )
    if comp.get("embedding_parameters"):
        share = comp["embedding_parameters"] / row["parameters"]
        return f"embeddings are {share:.0%} of the parameters; fewer layers and pruning keep them"
    return None


def build_report(
    rows: list[dict[str, Any]], task: str, metric: str, mode: str, threads: int
) -> dict[str, Any]:
    """``rows``: measurements (:func:`raylm.compress.measure.measure_model`), each with a
    ``name``; the first is the teacher."""
    teacher = rows[0]
    for i, row in enumerate(rows):
        row["vs_teacher"] = _ratios(row, teacher, metric, mode)
        row["vs_previous"] = _ratios(row, rows[max(i - 1, 0)], metric, mode)
    checks = []
    by_name = {r["name"]: r for r in rows}
    for step, what, against, threshold, kind in TARGETS:
        row = rows[-1] if step == "chain" else by_name.get(step)
        if row is None or (step == "chain" and len(rows) < 3):
            continue  # the step did not run (a one-step chain is that step)
        value = row["vs_teacher" if against == "teacher" else "vs_previous"].get(what)
        if value is None:
            continue
        met = value >= threshold if kind == "min" else value <= threshold
        checks.append(
            {
                "step": step,
                "what": what,
                "against": against,
                "target": f"{'>=' if kind == 'min' else '<='} {threshold}",
                "value": value,
                "met": met,
                "missed_by": None if met else abs(value - threshold),
                "why": None if met else why(row, what),
            }
        )
    return {
        "task": task,
        "metric": metric,
        "metric_mode": mode,
        "threads": threads,
        "models": rows,
        "targets": checks,
    }


def _mb(n: int) -> str:
    return f"{n / 2**20:.2f} MB"


def markdown(report: dict[str, Any]) -> str:
    metric = report["metric"]
    sizes = list(report["models"][0]["latency_ms"])
    head = (
        ["model", "runtime", "parameters", "size"]
        + [f"latency b={b} (ms)" for b in sizes]
        + ["rows/s", metric, "x params", "x size", "speed-up b=1", f"{metric} kept"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" + "---:|" * (len(head) - 1)]
    for r in report["models"]:
        v = r["vs_teacher"]
        value = r["metrics"].get(metric)
        cells = [
            r["name"],
            r["runtime"],
            f"{r['parameters']:,}",
            _mb(r["size_bytes"]),
            *[f"{r['latency_ms'][b]:.2f}" for b in sizes],
            f"{r['throughput_rows_per_s']:,.0f}",
            "n/a" if value is None else f"{value:.4f}",
            f"{v['parameter_ratio']:.2f}",
            f"{v['size_ratio']:.2f}",
            f"{v['latency_speedup_b1']:.2f}x",
            "n/a" if "metric_retention" not in v else f"{v['metric_retention']:.1%}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    out = [
        f"Task {report['task']}; {metric} on the eval rows; latency = median forward pass, "
        f"{report['threads']} thread(s); ratios against the teacher.",
        "",
        *lines,
    ]
    if report["targets"]:
        out += ["", "| target | value | |", "|---|---:|---|"]
        for t in report["targets"]:
            verdict = "met" if t["met"] else f"missed by {t['missed_by']:.3g}"
            if t.get("why"):
                verdict += f": {t['why']}"
            out.append(
                f"| {t['step']}: {t['what']} vs {t['against']} {t['target']} "
                f"| {t['value']:.3g} | {verdict} |"
            )
    return "\n".join(out) + "\n"


def plot(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, rows = report["metric"], report["models"]
    small = list(rows[0]["latency_ms"])[0]
    largest = max(r["size_bytes"] for r in rows)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for r in rows:
        y = r["metrics"].get(metric)
        if y is None:
            continue
        x = r["latency_ms"][small]
        ax.scatter(x, y, s=1500 * r["size_bytes"] / largest + 20, alpha=0.5)
        ax.annotate(
            f"{r['name']}\n{_mb(r['size_bytes'])}", (x, y), ha="center", va="center", fontsize=8
        )
    ax.set_xscale("log")
    ax.set_xlabel(f"latency at batch {small}, ms ({report['threads']} thread(s), log scale)")
    ax.set_ylabel(metric)
    ax.set_title("compression: metric against latency (marker area = size on disk)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(report: dict[str, Any], output_dir: Path) -> dict[str, Path]:
    paths = {name.split(".")[1]: output_dir / name for name in REPORT_FILES}
    paths["json"].write_text(json.dumps(report, indent=2))
    paths["md"].write_text(markdown(report))
    plot(report, paths["png"])
    return paths
