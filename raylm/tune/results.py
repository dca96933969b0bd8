"""What a sweep leaves in ``output_dir``: the trials table (CSV, Markdown), ``best.yaml``
with the one-line command that reruns the winner, ``best_model`` (a link to the winning
trial's exported model), and PNGs: metric against step for every trial, and the final
metric against each swept value. With two metrics, the Pareto front instead of one best.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shlex
from pathlib import Path
from typing import Any

import yaml
from ray.tune import Callback

from .._internal.redact import redact
from .._internal.storage import RunDir, join, override
from ..config import ConfigError
from ..models.artifact import ARTIFACT_FILE, Artifact
from .space import last_wins, trial_overrides

HISTORY_DIR = "history"
RESULT_FILES = (
    "trials.csv",
    "trials.md",
    "best.yaml",
    "best_model",
    "curves.png",
    "values.png",
    "pareto.png",
)


def _better(a: float, b: float, mode: str) -> bool:
    return a > b if mode == "max" else a < b


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


class TrialHistory(Callback):
    """Driver side: every result Tune receives, one JSON line per report in
    ``history/<trial>.jsonl`` (appended, so a resumed sweep continues it).

    Tune's own ``result.json`` / ``progress.csv`` are not a whole history: when a trial
    restarts from a checkpoint (PBT's exploit, a retry, a resume) Tune copies them back
    from storage as they were at its last sync, dropping the reports made since.
    """

    def __init__(self, history_dir: str):
        self.history_dir = history_dir

    def on_trial_result(self, iteration, trials, trial, result, **info):
        row = {k: v for k, v in result.items() if _finite(v) and not isinstance(v, bool)}
        row["config"] = dict(result.get("config") or trial.config)
        path = Path(self.history_dir) / f"{trial.trial_id}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps(row, default=str) + "\n")


def read_history(history_dir: str | Path, trial: str) -> list[dict[str, Any]]:
    path = Path(history_dir) / f"{trial}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def collect(grid, spec: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per trial: its values, history, status and exported model."""
    metrics = spec["metric"] if isinstance(spec["metric"], list) else [spec["metric"]]
    modes = spec["mode"] if isinstance(spec["mode"], list) else [spec["mode"]]
    out = []
    for result in grid:
        trial = Path(result.path).name
        # A step reported twice (a trial PBT paused reruns from its checkpoint): the later.
        by_step = {h.get("step"): h for h in read_history(spec["history_dir"], trial)}
        history = sorted(by_step.values(), key=lambda h: h.get("step") or 0)
        model = join(spec["trials_dir"], trial, "model")
        text = RunDir(join(spec["trials_dir"], trial)).read_text(f"model/{ARTIFACT_FILE}")
        artifact = Artifact.loads(text) if text else None
        rec = {
            "trial": trial,
            "config": dict(result.config or {}),
            "history": history,
            "error": result.error,
            "steps": max((h["step"] for h in history if _finite(h.get("step"))), default=None),
        }
        if result.error is not None:
            rec["status"] = "error"
        elif spec["base"] == "compress":
            rec["status"] = "finished" if history else "stopped"
        elif artifact is not None:
            early = bool(artifact.best and artifact.best.get("early_stopped"))
            rec["status"] = "early-stopped" if early else "finished"
        else:
            rec["status"] = "stopped"
        for m, mode in zip(metrics, modes, strict=False):
            values = [h[m] for h in history if _finite(h.get(m))]
            rec[f"final_{m}"] = values[-1] if values else None
            rec[f"best_{m}"] = (max if mode == "max" else min)(values) if values else None
            # The score of what the trial hands over: its exported model (the best eval
            # under trainer.metric), else its last report.
            exported = artifact.metrics.get(m) if artifact else None
            rec[f"model_{m}"] = exported if _finite(exported) else rec[f"final_{m}"]
        rec["model"] = str(model) if artifact is not None else ""
        out.append(rec)
    return out


def pareto_front(records: list[dict], metrics: list[str], modes: list[str]) -> list[dict]:
    """Records no other record dominates (at least as good on every metric, better on one)."""
    pts = [r for r in records if all(_finite(r[f"model_{m}"]) for m in metrics)]

    def dominates(a: dict, b: dict) -> bool:
        ge = all(
            not _better(b[f"model_{m}"], a[f"model_{m}"], o)
            for m, o in zip(metrics, modes, strict=False)
        )
        gt = any(
            _better(a[f"model_{m}"], b[f"model_{m}"], o)
            for m, o in zip(metrics, modes, strict=False)
        )
        return ge and gt

    return [a for a in pts if not any(dominates(b, a) for b in pts if b is not a)]


def rerun_command(base: str, overrides: list[str], out: str) -> str:
    return " ".join(
        ["raylm", base, *map(shlex.quote, overrides), shlex.quote(override("output_dir", out))]
    )


def _table_rows(records: list[dict], spec: dict[str, Any]) -> tuple[list[str], list[list]]:
    metrics = spec["metric"] if isinstance(spec["metric"], list) else [spec["metric"]]
    keys = [p.key for p in spec["space"]]
    head = ["trial", "status", "steps", *keys]
    for m in metrics:
        head += [f"final {m}", f"best {m}", f"model {m}"]
    rows = []
    for r in records:
        row = [r["trial"], r["status"], r["steps"], *[r["config"].get(k) for k in keys]]
        for m in metrics:
            row += [r[f"final_{m}"], r[f"best_{m}"], r[f"model_{m}"]]
        rows.append(row)
    return head, rows


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def write_tables(records: list[dict], spec: dict[str, Any], out: Path) -> None:
    head, rows = _table_rows(records, spec)
    with open(out / "trials.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(head)
        w.writerows(rows)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    (out / "trials.md").write_text("\n".join(lines) + "\n")


def plot_curves(records: list[dict], metric: str, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in records:
        pts = [(h["step"], h[metric]) for h in r["history"] if _finite(h.get(metric))]
        if not pts:
            continue
        xs, ys = zip(*pts, strict=False)
        style = "--" if r["status"] == "error" else "-"
        (line,) = ax.plot(xs, ys, style, lw=1.2, label=f"{r['trial']} ({r['status']})")
        end = "x" if r["status"] in ("stopped", "error") else "o"
        ax.plot(xs[-1], ys[-1], end, color=line.get_color(), ms=7)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per trial (x: stopped early)")
    ax.grid(alpha=0.3)
    if len(records) <= 12:
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_values(records: list[dict], spec: dict[str, Any], metric: str, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    space = spec["space"]
    fig, axes = plt.subplots(1, len(space), figsize=(4 * len(space), 3.6), squeeze=False)
    for ax, p in zip(axes[0], space, strict=False):
        pts = [(r["config"].get(p.key), r[f"model_{metric}"]) for r in records]
        pts = [(x, y) for x, y in pts if x is not None and _finite(y)]
        if p.kind == "choice":
            labels = [str(v) for v in p.tune_values()]
            xs = [labels.index(str(x)) if str(x) in labels else -1 for x, _ in pts]
            ax.set_xticks(range(len(labels)), labels, rotation=20, fontsize=8)
        else:
            xs = [x for x, _ in pts]
            if p.log:
                ax.set_xscale("log")
        ax.scatter(xs, [y for _, y in pts], s=30)
        ax.set_xlabel(p.key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{metric} of each trial's model against each swept value")
    fig.tight_layout()
    path = out / "values.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_pareto(records, front, metrics, modes, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mx, my = metrics[:2]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    pts = [r for r in records if _finite(r[f"model_{mx}"]) and _finite(r[f"model_{my}"])]
    ax.scatter(
        [r[f"model_{mx}"] for r in pts],
        [r[f"model_{my}"] for r in pts],
        c="0.6",
        s=30,
        label="trial",
    )
    f = sorted(front, key=lambda r: r[f"model_{mx}"])
    ax.plot(
        [r[f"model_{mx}"] for r in f],
        [r[f"model_{my}"] for r in f],
        "o-",
        c="C3",
        ms=8,
        label="Pareto front",
    )
    for r in f:
        ax.annotate(
            r["trial"],
            (r[f"model_{mx}"], r[f"model_{my}"]),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    ax.set_xlabel(f"{mx} ({modes[0]})")
    ax.set_ylabel(f"{my} ({modes[1]})")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("trials and their Pareto front")
    fig.tight_layout()
    path = out / "pareto.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_results(grid, spec: dict[str, Any]) -> dict[str, Any]:
    out: Path = spec["output_dir"]
    records = collect(grid, spec)
    multi = isinstance(spec["metric"], list)
    metrics = spec["metric"] if multi else [spec["metric"]]
    modes = spec["mode"] if multi else [spec["mode"]]
    write_tables(records, spec, out)
    paths = {"csv": out / "trials.csv", "md": out / "trials.md"}
    if spec["base"] != "compress":
        paths["curves"] = plot_curves(records, metrics[0], out)
    paths["values"] = plot_values(records, spec, metrics[0], out)
    for r in records:
        if r["status"] == "error":
            print(f"trial {r['trial']} failed: {_error_line(r['error'])}")
    done = [r for r in records if r["status"] in ("finished", "early-stopped")]
    if not done:
        raise ConfigError(
            "search",
            f"no trial finished ({len(records)} ran); each trial's log is in {out / 'tune'}",
        )

    def entry(r: dict) -> dict[str, Any]:
        overrides = last_wins([*spec["overrides"], *trial_overrides(r["config"], spec["space"])])
        return {
            "trial": r["trial"],
            **{m: r[f"model_{m}"] for m in metrics},
            "overrides": overrides,
            "command": rerun_command(spec["base"], overrides, join(spec["location"], "rerun")),
        }

    best_yaml: dict[str, Any] = {
        "base": spec["base"],
        "metric": spec["metric"],
        "mode": spec["mode"],
    }
    if multi:
        front = pareto_front(done, metrics, modes)
        best_yaml["pareto_front"] = [entry(r) for r in front]
        paths["pareto"] = plot_pareto(records, front, metrics, modes, out)
        best = None
    else:
        m, mode = metrics[0], modes[0]
        scored = [r for r in done if _finite(r[f"model_{m}"])]
        best = scored[0] if scored else done[0]
        for r in scored:
            if _better(r[f"model_{m}"], best[f"model_{m}"], mode):
                best = r
        best_yaml.update(entry(best))
        best_yaml["value"] = best_yaml.pop(m)
        if spec["search"]["name"] == "pbt":
            best_yaml["note"] = (
                "pbt: these are the winner's final values; its weights also come from the "
                "checkpoints it copied, so best_model (not a rerun) is what pbt found"
            )
    (out / "best.yaml").write_text(yaml.safe_dump(redact(best_yaml), sort_keys=False, width=10**6))
    paths["best"] = out / "best.yaml"
    store = RunDir(spec["location"])
    link = out / "best_model"
    if best is not None and best["model"] and store.remote:
        paths["best_model"] = best["model"]  # no links in an object store: best.yaml names it
    elif best is not None and best["model"]:
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink(os.path.relpath(best["model"], out), link)
        paths["best_model"] = link
    if store.remote:
        for key, path in paths.items():
            if isinstance(path, Path):
                store.push(path.name, path)
                paths[key] = store.uri(path.name)
    print((out / "trials.md").read_text())
    if best is not None:
        m = metrics[0]
        print(f"best: trial {best['trial']} {m} {_cell(best[f'model_{m}'])}")
        print(f"rerun: {best_yaml['command']}")
    else:
        print(
            f"Pareto front ({' vs '.join(metrics)}): "
            + ", ".join(e["trial"] for e in best_yaml["pareto_front"])
        )
    print("results: " + ", ".join(str(p) for p in paths.values()))
    return {
        "output_dir": spec["location"],
        "trials": [{k: v for k, v in r.items() if k not in ("history", "error")} for r in records],
        "best": best_yaml,
        "paths": {k: str(v) for k, v in paths.items()},
    }


def _error_line(error: BaseException | None) -> str:
    if error is None:
        return ""
    cause = error
    while getattr(cause, "cause", None) is not None or cause.__cause__ is not None:
        cause = getattr(cause, "cause", None) or cause.__cause__
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}"


__all__ = [
    "HISTORY_DIR",
    "RESULT_FILES",
    "TrialHistory",
    "pareto_front",
    "read_history",
    "write_results",
]
