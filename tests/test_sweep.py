"""raylm sweep on a real local Ray cluster: Ray Tune over whole Ray Train + DeepSpeed runs."""

from __future__ import annotations

import csv
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import read_metrics, train_worker_pids

import raylm
from raylm._internal.storage import RunDir
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
        "search.num_samples=2",
        "search.max_concurrent_trials=1",
        "search.seed=9",  # draws lr 4.7e-3, 1.6e-4
        # by eval loss: at step 20 the first is at 1.09, the second still near ln 4
        "search.metric=eval_loss",
        "search.mode=min",
        "trainer.max_steps=40",
        "trainer.eval_every=20",  # one ASHA rung, at step 20, where the trials differ
        "trainer.checkpoint_every=20",
    )
    rows = trials(out)
    assert len(rows) == 2
    stopped = [r for r in rows if r["status"] == "stopped"]
    assert stopped, rows
    # A stopped trial's Ray Train placement group is released (its controller died with
    # the trial's actor; see trial.ReleaseStoppedTrials): the cluster's CPUs all come back.
    deadline = time.time() + 30
    while ray_cluster.available_resources().get("CPU", 0) < 4 and time.time() < deadline:
        time.sleep(0.5)
    assert ray_cluster.available_resources().get("CPU", 0) == 4
    assert all(int(r["steps"]) < 40 for r in stopped)
    assert {r["status"] for r in rows} <= {"stopped", "finished"}
    for name in ("trials.md", "curves.png", "values.png"):
        assert (out / name).stat().st_size > 0
    best = yaml.safe_load((out / "best.yaml").read_text())
    winner = next(r for r in rows if r["trial"] == best["trial"])
    assert winner["status"] == "finished"
    assert best["value"] == pytest.approx(float(winner["model eval_loss"]))
    assert Artifact.read(out / "best_model").metrics["eval_loss"] == best["value"]
    assert summary["best"]["trial"] == best["trial"]
    # The one-line command reruns the winner from scratch to the same score (run in this
    # process, on this cluster: the CLI's parsing of such a line is tested on its own).
    program, command, *overrides = shlex.split(best["command"])
    assert (program, command) == ("raylm", "finetune")
    raylm.run(command, overrides)
    rerun = Artifact.read(out / "rerun" / "model")
    assert rerun.metrics["eval_loss"] == pytest.approx(best["value"], abs=1e-9)


def test_grid_interrupted_then_resumed_covers_the_space_once(
    ray_cluster, corpus, tokenizers, tmp_path
):
    """A pretraining sweep (GPT-style CLM): Ctrl-C mid-sweep, then the same command with
    resume=true. The finished trial is kept as it was, the interrupted one continues from
    its last Tune checkpoint, and the grid (a config-group choice, really applied) is
    covered exactly once."""
    out = tmp_path / "grid"
    args = [
        "base=pretrain",
        f"output_dir={out}",
        f"data.train_files=[{corpus['train']}]",
        f"data.eval_files=[{corpus['eval']}]",
        f"tokenizer.path={tokenizers['bpe']}",
        *TRIAL,
        "search=grid",
        "deepspeed=choice(zero1, zero3)",
        "trainer.lr=choice(2e-3)",
        "trainer.max_steps=30",
        "search.max_concurrent_trials=1",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "raylm", "sweep", *args, "ray.num_cpus=4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # Trials run one at a time: once the second is past its step-20 checkpoint, the
    # first has finished as far as Tune knows.
    first, deadline = None, time.time() + 400
    while first is None and time.time() < deadline and proc.poll() is None:
        done = sorted((out / "trials").glob("*/model/raylm.json"))
        for log in (out / "trials").glob("*/metrics.jsonl") if done else ():
            if log.parent != done[0].parent.parent and any(
                r.get("step", 0) > 20 for r in read_metrics(log.parent)
            ):
                first = done[0]
        time.sleep(0.1)
    assert first is not None, "the first trial did not finish before the second ran"
    stamp = first.stat().st_mtime_ns
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=180)[0]
    assert proc.returncode == 130, output[-3000:]
    assert "sweep interrupted with 1 of 2 trials unfinished" in output, output[-3000:]

    raylm.run("sweep", [*args, "resume=true"])
    rows = trials(out)
    assert [(r["status"], r["steps"]) for r in rows] == [("finished", "30")] * 2, rows
    assert first.stat().st_mtime_ns == stamp  # finished before the interrupt: not rerun
    resumed = next(r for r in rows if r["trial"] != first.parent.parent.name)
    restored = [r for r in read_metrics(out / "trials" / resumed["trial"]) if "restored_from" in r]
    assert restored and restored[0]["restored_step"] in (10, 20), restored
    assert sorted(r["deepspeed"] for r in rows) == ["zero1", "zero3"]
    for r in rows:
        artifact = Artifact.read(out / "trials" / r["trial"] / "model")
        want = int(r["deepspeed"][-1])
        assert artifact.config["deepspeed"]["zero_stage"] == want  # the group really applied
        assert artifact.config["trainer"]["lr"] == 2e-3


def test_optuna_proposes_values_inside_the_space_and_retries_a_failed_trial(
    ray_cluster, data, tmp_path
):
    """Two Optuna trials, the first losing a Ray Train worker to SIGKILL once Tune holds a
    checkpoint of it, with trainer.max_failures=0 (Ray Train gives up at once, so the retry
    is Tune's): the trial restarts from that Tune checkpoint and every trial finishes."""
    out = tmp_path / "optuna"
    killed = []

    def kill_a_worker() -> None:
        # Once Tune holds the trial's step-10 checkpoint and before it ends (at 20).
        deadline = time.time() + 300
        while time.time() < deadline:
            for log in (out / "trials").glob("*/metrics.jsonl"):
                seen = read_history(out / "history", log.parent.name)
                if any(h["step"] == 10 for h in seen):
                    pids = train_worker_pids()
                    if pids:
                        os.kill(pids[0], signal.SIGKILL)
                        killed.append((log.parent.name, max(h["step"] for h in seen)))
                        return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_a_worker, daemon=True)
    killer.start()
    sweep(
        out,
        data,
        "search=optuna",
        "search.num_samples=2",
        "search.max_concurrent_trials=1",
        "search.max_failures=1",
        "trainer.max_failures=0",
        "trainer.lr=tag(log, interval(1e-4, 5e-3))",
        "trainer.micro_batch_size=choice(4, 8)",
        "scaling.num_workers=1",  # one worker to kill is enough; a rank fewer to start
    )
    killer.join()
    assert killed, "no worker was killed"
    rows = trials(out)
    assert [(r["status"], r["steps"]) for r in rows] == [("finished", "20")] * 2, rows
    trial, last_checkpoint = killed[0]
    restored = [r for r in read_metrics(out / "trials" / trial) if "restored_from" in r]
    assert restored and restored[0]["restored_step"] >= last_checkpoint, restored
    for r in rows:
        lr, mb = float(r["trainer.lr"]), int(r["trainer.micro_batch_size"])
        assert 1e-4 <= lr <= 5e-3 and mb in (4, 8)
        run = Artifact.read(out / "trials" / r["trial"] / "model").config["trainer"]
        assert run["lr"] == pytest.approx(lr) and run["micro_batch_size"] == mb


def test_pbt_exploit_loads_the_better_trials_checkpoint_with_perturbed_values(
    ray_cluster, data, s3, tmp_path
):
    """Two trials side by side (one worker each); every 10 steps the worse one copies the
    better one's DeepSpeed checkpoint and trains on from it with a perturbed lr.

    The sweep's output_dir is an S3 URI: Tune's checkpoints, the trials' runs and the
    sweep's tables all live in the store, and an exploit fetches the other trial's
    checkpoint from there. The whole tree is fetched afterwards to check it."""
    uri = s3("sweeps/pbt")
    summary = raylm.run(
        "sweep",
        [
            "base=finetune",
            f"output_dir='{uri}'",
            *data,
            *TRIAL,
            "search=pbt",
            "search.num_samples=2",
            "search.max_concurrent_trials=2",
            "search.quantile_fraction=0.5",
            "search.resample_probability=0",
            "search.seed=10",  # draws lr 2.3e-3 and 3.3e-5: one trial is clearly the worse
            "trainer.lr=tag(log, interval(1e-5, 3e-3))",
            "trainer.schedule=constant",
            "scaling.num_workers=1",
            "trainer.max_steps=40",
        ],
    )
    store = RunDir(uri)
    assert summary["paths"]["csv"] == store.uri("trials.csv")
    assert summary["paths"]["best_model"].startswith(store.uri("trials").split("?")[0])
    best = yaml.safe_load(store.read_text("best.yaml"))
    assert f"output_dir={store.uri('rerun')}" in shlex.split(best["command"])[-1].replace("'", "")
    out = store.pull("", tmp_path / "pbt")

    def local(location: str) -> Path:  # a URI in the store -> its fetched copy
        return out / Path(location.split("?")[0]).relative_to(Path(uri.split("?")[0]))

    tune_dir = out / "tune"
    # Exploits: a trial restarted from another trial's checkpoint (a trial PBT pauses and
    # resumes on its own checkpoint also logs restored_from, with its own trial's path).
    restores = [
        (d.name, r)
        for d in (out / "trials").iterdir()
        for r in read_metrics(d)
        if "restored_from" in r and local(r["restored_from"]).parent.name != d.name
    ]
    assert restores, "no exploit happened"
    for trial, row in restores:
        assert row["restored_from"].startswith("s3://")
        source = local(row["restored_from"])
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
        # (its metrics.jsonl holds its last start only: Tune's rows since that start)
        history = read_history(out / "history", trial)
        start = max(i for i, h in enumerate(history) if h["iterations_since_restore"] == 1)
        assert history[start]["step"] > row["restored_step"]
        new_lr = history[start]["config"]["trainer.lr"]
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


@pytest.fixture(scope="module")
def teacher(ray_cluster, data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep-teacher") / "run"
    raylm.run("finetune", [*data, *TRIAL, "trainer.lr=2e-3", f"output_dir={out}"])
    return out / "model"


def test_two_objective_compress_sweep_returns_the_pareto_front(data, teacher, tmp_path):
    """Optuna's multi-objective sampler over compression settings (pruning fractions,
    with or without int8): the front in best.yaml is exactly the undominated trials by
    the exported models' accuracy and measured batch-1 latency."""
    out = tmp_path / "pareto"
    raylm.run(
        "sweep",
        [
            "base=compress",
            "search=optuna",
            f"output_dir={out}",
            *data,
            f"model.init_from={teacher}",
            "search.num_samples=4",
            "search.max_concurrent_trials=1",
            "search.metric=[eval_accuracy,latency_ms]",
            "search.mode=[max,min]",
            "compress.prune.heads=interval(0.0, 0.5)",
            "compress.prune.neurons=choice(0.25, 0.75)",
            "compress.steps=choice([prune],[prune,quantize])",
            "compress.report.batch_sizes=[1]",
            "compress.report.repeats=5",
            "trainer.seq_len=64",
        ],
    )
    rows = trials(out)
    assert len(rows) == 4 and all(r["status"] == "finished" for r in rows), rows
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert (out / "pareto.png").stat().st_size > 0

    def score(r):
        return float(r["model eval_accuracy"]), float(r["model latency_ms"])

    def dominates(a, b):
        return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])

    scores = {r["trial"]: score(r) for r in rows}
    front = {f["trial"] for f in best["pareto_front"]}
    want = {t for t, s in scores.items() if not any(dominates(o, s) for o in scores.values())}
    assert front == want, (scores, front)
    for f in best["pareto_front"]:  # each front entry reruns as a plain compress command
        assert (
            f["command"].startswith("raylm compress ") and "compress.prune.heads=" in f["command"]
        )


def test_raylms_early_stopping_inside_a_trial(ray_cluster, data, tmp_path):
    """trainer.early_stopping_patience works inside a trial as in a plain run: the trial
    ends before max_steps with its best model exported, and the table says so."""
    out = tmp_path / "early"
    sweep(
        out,
        data,
        "search=random",
        "search.num_samples=1",
        "trainer.lr=choice(3e-3)",
        "trainer.max_steps=80",
        "trainer.early_stopping_patience=1",
        "scaling.num_workers=1",
    )
    (row,) = trials(out)
    assert row["status"] == "early-stopped" and int(row["steps"]) < 80, row
    model = Artifact.read(out / "trials" / row["trial"] / "model")
    assert (
        model.best["early_stopped"]
        and float(row["model eval_accuracy"]) == model.metrics["eval_accuracy"]
    )
