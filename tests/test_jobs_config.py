"""What `raylm submit` and `--dry-run` check before anything runs (no cluster needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from raylm.jobs.cli import main as jobs_main
from raylm.jobs.submission import EXCLUDES, read_spec

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "jobs").glob("*.yaml"))


def test_every_command_has_a_ready_spec():
    commands = {read_spec(p)[0] for p in SPECS}
    assert {"tokenizer", "pretrain", "finetune", "sweep", "compress", "serve"} <= commands


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
def test_job_specs_validate_as_submit_would(spec, capsys):
    """Config-only: the specs' files live on the cluster's /runs volume, not here."""
    assert jobs_main("submit", ["--dry-run", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "is valid here" in out and "left to the cluster (its files): " in out
    assert "ray.address=auto" in out or "raylm tokenizer" in out


def test_submit_dry_run_shows_entrypoint_and_runtime_env(capsys):
    args = ["--dry-run", "--", "pretrain", "data.train_files=[/runs/t.txt]", "ray.address=x:1"]
    assert jobs_main("submit", args) == 0
    out = capsys.readouterr().out
    entry = next(line for line in out.splitlines() if line.startswith("entrypoint: "))
    # the user's address named the cluster from outside; on it the driver joins with auto
    assert entry.endswith("'data.train_files=[/runs/t.txt]' ray.address=auto")
    assert entry.startswith("entrypoint: python -m raylm pretrain ")
    assert f"'working_dir': '{ROOT}'" in out and "'/.venv'" in out


def test_excludes_keep_package_dirs_named_like_data_dirs():
    """`/data` is anchored: raylm/data (a package) is uploaded, a checkout's data/ is not."""
    from ray._private.runtime_env.packaging import _get_excludes  # what Ray applies

    excluded = _get_excludes(ROOT, EXCLUDES)
    assert excluded(ROOT / "data" / "corpus.txt")
    assert excluded(ROOT / ".venv" / "bin" / "python")
    assert excluded(ROOT / "outputs" / "run" / "model" / "model.safetensors")
    assert not excluded(ROOT / "raylm" / "data" / "files.py")
    assert not excluded(ROOT / "conf" / "pretrain.yaml")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--", "pretrian"], "expected a raylm command"),
        (["--", "pretrain", "trainer.lr=-1"], "trainer.lr: must be > 0"),
        (["--", "pretrain", "trainer.nope=1"], "overrides: "),
        (["--", "serve", "serve.port=0", "model_dir=/m"], "serve.port: must be a TCP port"),
        (["missing.yaml"], "missing.yaml: cannot read the job spec"),
        (["--", "pretrain", "data.train_files=[/runs/t.txt]"], "--address: no cluster"),
    ],
)
def test_submit_refuses_bad_input_in_one_line(args, message, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert jobs_main("submit", args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_spec_with_unknown_key_is_refused(tmp_path, capsys):
    spec = tmp_path / "bad.yaml"
    spec.write_text("entrypoint: raylm pretrain\nruntime: {}\n")
    assert jobs_main("submit", ["--dry-run", str(spec)]) == 2
    assert "bad.yaml: runtime: unknown key" in capsys.readouterr().err


def pretrain_dry_run(*overrides: str) -> subprocess.CompletedProcess:
    """`raylm pretrain --dry-run ...` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "raylm", "pretrain", "--dry-run", *overrides],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_dry_run_checks_files_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    proc = pretrain_dry_run(f"output_dir={out}", f"data.train_files=[{tmp_path / 'absent.txt'}]")
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == f"raylm pretrain: error: data.train_files: file not found: {tmp_path / 'absent.txt'}"
    )
    assert not out.exists()


def test_dry_run_prints_the_resolved_config(corpus, tokenizers, tmp_path):
    out = tmp_path / "run"
    proc = pretrain_dry_run(
        f"output_dir={out}",
        f"data.train_files=[{corpus['train']}]",
        f"tokenizer.path={tokenizers['bpe']}",
    )
    assert proc.returncode == 0, proc.stderr
    assert f"output_dir: {out}" in proc.stdout and "zero_stage: 2" in proc.stdout
    assert proc.stdout.strip().endswith("dry run: the config is valid; nothing was run")
    assert not out.exists()
