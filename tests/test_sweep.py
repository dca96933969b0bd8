"""raylm sweep on a real local Ray cluster: Ray Tune over whole Ray Train + DeepSpeed runs."""

from __future__ import annotations

import csv
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import read_metrics

import raylm
from raylm.data.synthetic import write_labeled
from raylm.models.artifact import Artifact
from raylm.tune.results import read_history

pytestmark = pytest.mark.slow

# A trial is a tiny fine-tune: 2 evals a trial (one ASHA rung), seconds on two cores.
TRIAL = [
    "trainer.seq_len=64",
    "trainer.micro_batch_size=8",
    "trainer.warmup_steps=2",
    "trainer.log_every=5",
    "trainer.eval_batches=4",
    "trainer.max_steps=20",
    "trainer.eval_every=10",
    "trainer.checkpoint_every=10",
    "model.dropout=0.0",
    "scaling.num_workers=2",
]


@pytest.fixture(scope="module")
def data(tokenizers, tmp_path_factory):
    d = tmp_path_factory.mktemp("sweep-data")
    return [
        f"data.train_files=[{write_labeled(d / 'train.jsonl', 400, seed=0)}]",
        f"data.eval_files=[{write_labeled(d / 'eval.jsonl', 100, seed=1)}]",
        f"tokenizer.path={tokenizers['wordpiece']}",
    ]


def sweep(out: Path, data: list[str], *extra: str) -> dict:
    return raylm.run("sweep", ["base=finetune", f"output_dir={out}", *data, *TRIAL, *extra])


def trials(out: Path) -> list[dict]:
    with open(out / "trials.csv") as f:
        return list(csv.DictReader(f))


def test_asha_stops_a_trial_early_and_best_yaml_reruns_the_best(ray_cluster, data, tmp_path):
    out = tmp_path / "asha"
    summary = sweep(
        out,
        data,
        "search=asha",
        "trainer.lr=tag(log, interval(3e-5, 1e-2))",
        "search.num_samples=4",
        "search.max_concurrent_trials=1",
        "search.seed=3",
    )
    rows = trials(out)
    assert len(rows) == 4
    stopped = [r for r in rows if r["status"] == "stopped"]
    assert stopped, rows
    assert all(int(r["steps"]) < 20 for r in stopped)
    assert {r["status"] for r in rows} <= {"stopped", "finished"}
    for name in ("trials.md", "curves.png", "values.png"):
        assert (out / name).stat().st_size > 0
    best = yaml.safe_load((out / "best.yaml").read_text())
    winner = next(r for r in rows if r["trial"] == best["trial"])
    assert winner["status"] == "finished"
    assert best["value"] == pytest.approx(float(winner["model eval_accuracy"]))
    assert Artifact.read(out / "best_model").metrics["eval_accuracy"] == best["value"]
    assert summary["best"]["trial"] == best["trial"]
    # The one-line command reruns the winner from scratch to the same score.
    proc = subprocess.run(
        shlex.split(best["command"])[1:]
        and [sys.executable, "-m", "raylm", *shlex.split(best["command"])[1:]],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rerun = Artifact.read(out / "rerun" / "model")
    assert rerun.metrics["eval_accuracy"] == pytest.approx(best["value"], abs=1e-9)


def test_grid_covers_the_space_and_applies_a_group_choice(ray_cluster, data, tmp_path):
    out = tmp_path / "grid"
    sweep(
        out,
        data,
        "search=grid",
        "deepspeed=choice(zero1, zero3)",
        "trainer.lr=choice(2e-3)",
        "trainer.max_steps=10",
        "trainer.checkpoint_every=10",
    )
    rows = trials(out)
    assert sorted(r["deepspeed"] for r in rows) == ["zero1", "zero3"]
    for r in rows:
        artifact = Artifact.read(out / "trials" / r["trial"] / "model")
        want = int(r["deepspeed"][-1])
        assert artifact.config["deepspeed"]["zero_stage"] == want  # the group really applied
        assert artifact.config["trainer"]["lr"] == 2e-3


def test_optuna_proposes_values_inside_the_space(ray_cluster, data, tmp_path):
    out = tmp_path / "optuna"
    sweep(
        out,
        data,
        "search=optuna",
        "search.num_samples=3",
        "search.max_concurrent_trials=1",
        "trainer.lr=tag(log, interval(1e-4, 5e-3))",
        "trainer.micro_batch_size=choice(4, 8)",
        "trainer.max_steps=10",
    )
    rows = trials(out)
    assert len(rows) == 3 and all(r["status"] == "finished" for r in rows)
    for r in rows:
        lr, mb = float(r["trainer.lr"]), int(r["trainer.micro_batch_size"])
        assert 1e-4 <= lr <= 5e-3 and mb in (4, 8)
        run = Artifact.read(out / "trials" / r["trial"] / "model").config["trainer"]
        assert run["lr"] == pytest.approx(lr) and run["micro_batch_size"] == mb


def test_pbt_exploit_loads_the_better_trials_checkpoint_with_perturbed_values(
    ray_cluster, data, tmp_path
):
    """Two trials side by side (one worker each); every 10 steps the worse one copies the
    better one's DeepSpeed checkpoint and trains on from it with a perturbed lr."""
    out = tmp_path / "pbt"
    sweep(
        out,
        data,
        "search=pbt",
        "search.num_samples=2",
        "search.max_concurrent_trials=2",
        "search.quantile_fraction=0.5",
        "search.resample_probability=0",
        "trainer.lr=tag(log, interval(1e-5, 3e-3))",
        "trainer.schedule=constant",
        "scaling.num_workers=1",
        "trainer.max_steps=40",
    )
    tune_dir = out / "tune"
    # Exploits: a trial restarted from another trial's checkpoint (a trial PBT pauses and
    # resumes on its own checkpoint also logs restored_from, with its own trial's path).
    restores = [
        (d.name, r)
        for d in (out / "trials").iterdir()
        for r in read_metrics(d)
        if "restored_from" in r and Path(r["restored_from"]).parent.name != d.name
    ]
    assert restores, "no exploit happened"
    for trial, row in restores:
        source = Path(row["restored_from"])
        assert source.parent.parent == tune_dir
        # The weights it started from are the source checkpoint's, bit for bit.
        states = torch.load(source / "deepspeed" / "mp_rank_00_model_states.pt", weights_only=False)
        want = sum(
            float(t.double().abs().sum())
            for t in states["module"].values()
            if t.is_floating_point()
        )
        assert row["weights_checksum"] == pytest.approx(want, rel=1e-12)
        # It trains on with its own, perturbed lr (x0.8 or x1.2 the source trial's).
        after = [
            h for h in read_history(out / "history", trial) if h["step"] > row["restored_step"]
        ]
        new_lr = after[0]["config"]["trainer.lr"]
        source_hist = read_history(out / "history", source.parent.name)
        source_lr = next(h for h in source_hist if h["step"] == row["restored_step"])["config"][
            "trainer.lr"
        ]
        assert new_lr / source_lr == pytest.approx(0.8) or new_lr / source_lr == pytest.approx(1.2)
        logged = [
            r["lr"]
            for r in read_metrics(out / "trials" / trial)
            if "lr" in r and r["step"] > row["restored_step"]
        ]
        assert logged and logged[0] == pytest.approx(new_lr)
    # Every trial's whole history reached the table (Tune's own result.json loses the
    # reports made between a trial's last sync and its restart).
    with open(out / "trials.csv") as f:
        assert [int(r["steps"]) for r in csv.DictReader(f)] == [40, 40]
