"""The bad-input catalogue: what a new user gets wrong, across every command.

Each case runs the command in-process, as ``raylm.run`` does for the CLI, and must end
within a bound as one ConfigError naming the key (or file) with what is allowed, leaving
nothing in the run's output directory that a later run could take for a finished
artifact. The CLI turns that error into one ``error:`` line and exit status 2
(``test_cli_*`` below check that path, and tests/test_config.py checks the rest).

Cases that need no files or cluster are in tests/test_config.py (``BAD``); this file
holds those about data files, model directories, the cluster, and Hydra's own errors.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

import raylm
from raylm.config import ConfigError

BOUND_S = 90  # every case ends well within this; a hang fails the case, not the suite


@contextmanager
def bounded(seconds: int = BOUND_S):
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def files(tmp_path_factory, corpus, tokenizers) -> dict[str, str]:
    """Data files that are readable bytes but wrong, named for the placeholders below."""
    d = tmp_path_factory.mktemp("bad_input")
    rows = [
        {"text": f"the red ship number {i} sails.", "label": ["pos", "neg"][i % 2]}
        for i in range(40)
    ]

    def jsonl(name: str, lines: list[str]) -> str:
        (d / name).write_text("\n".join(lines) + "\n")
        return str(d / name)

    good = [json.dumps(r) for r in rows]
    out = {
        "corpus": str(corpus["train"]),
        "bpe": str(tokenizers["bpe"]),
        "wordpiece": str(tokenizers["wordpiece"]),
        "good_jsonl": jsonl("good.jsonl", good),
        "not_object": jsonl("not_object.jsonl", [*good[:5], '["a list", "not an object"]']),
        "malformed": jsonl("malformed.jsonl", [*good[:3], '{"text": "no closing brace"']),
        "mixed_labels": jsonl("mixed.jsonl", [*good[:6], json.dumps({"text": "x y", "label": 3})]),
        "null_labels": jsonl(
            "nulls.jsonl", [*good, json.dumps({"text": "the blue ship.", "label": None})]
        ),
    }
    nonutf = d / "latin1.txt"
    nonutf.write_bytes("the red ship sails.\n\nthe café is open.\n".encode("latin-1"))
    out["nonutf"] = str(nonutf)
    parquet = d / "corrupt.parquet"
    parquet.write_bytes(b"PAR1" + b"\x00garbage" * 50 + b"PAR1")
    out["corrupt_parquet"] = str(parquet)
    out["out"] = str(d / "run")
    return out


PRETRAIN = ["data.train_files=[{corpus}]", "tokenizer.path={bpe}", "output_dir={out}"]
FINETUNE = [
    "model=bert-tiny",
    "tokenizer.path={wordpiece}",
    "output_dir={out}",
    "trainer.max_steps=2",
]

# (command, overrides, the key named, what the line must say)
CASES = [
    # Hydra's own errors, as one line naming the key
    ("pretrain", ["trainer.lrr=1e-3"], "trainer.lrr", "did you mean trainer.lr?"),
    ("pretrain", ["trainer.nope=1"], "trainer.nope", "trainer has: "),
    ("pretrain", ["trainer.lr=fast"], "trainer.lr", "takes a number, got 'fast'"),
    ("pretrain", ["trainer.max_steps=1.5"], "trainer.max_steps", "takes an integer"),
    ("pretrain", ["overwrite=maybe"], "overwrite", "takes true or false, got 'maybe'"),
    ("pretrain", ["data.train_files=a.txt"], "data.train_files", "takes a list"),
    ("pretrain", ["trainer=3"], "trainer", "is a config section, not a value"),
    ("pretrain", ["trainer.lr"], "trainer.lr", "has no value; write trainer.lr=VALUE"),
    ("pretrain", ["trainer.lr=[1,"], "trainer.lr", "override grammar"),
    ("pretrain", ["~trainer.nope"], "trainer.nope", "cannot be deleted"),
    ("pretrain", ["+trainer.lr=1"], "trainer.lr", "already exists; write trainer.lr=VALUE"),
    ("finetune", ["data.text_colum=body"], "data.text_colum", "did you mean data.text_column?"),
    ("predict", ["batch_size=lots"], "batch_size", "takes an integer, got 'lots'"),
    ("serve", ["serve.num_replicas=two"], "serve.num_replicas", "takes an integer"),
    ("tokenizer", ["tokenizer.vocab_size=big"], "tokenizer.vocab_size", "takes an integer"),
    # Data files that read as bytes but are wrong
    (
        "tokenizer",
        ["data.train_files=[{nonutf}]", "tokenizer.path={out}"],
        "data.train_files",
        "latin1.txt: line 3 is not UTF-8 text (byte 0xe9)",
    ),
    (
        "pretrain",
        [*PRETRAIN, "data.train_files=[{not_object}]"],
        "data.train_files",
        "not_object.jsonl: line 6 is a JSON list, not an object",
    ),
    (
        "pretrain",
        [*PRETRAIN, "data.train_files=[{malformed}]"],
        "data.train_files",
        "malformed.jsonl: line 4 is not valid JSON",
    ),
    (
        "pretrain",
        [*PRETRAIN, "data.train_files=[{corrupt_parquet}]"],
        "data.train_files",
        "corrupt.parquet: not a readable parquet file",
    ),
    (
        "finetune",
        [*FINETUNE, "data.train_files=[{mixed_labels}]"],
        "data.train_files",
        "data.label_column mixes label types (number, str); use one type",
    ),
    (
        "finetune",
        [*FINETUNE, "data.train_files=[{null_labels}]"],
        "data.train_files",
        "1 of 41 labels in data.label_column are empty (null)",
    ),
    (
        "finetune",
        [*FINETUNE, "data.train_files=[{good_jsonl}]", "data.eval_files=[{null_labels}]"],
        "data.eval_files",
        "labels in data.label_column are empty (null)",
    ),
    # The cluster: refused in seconds, never a silent wait
    (
        "pretrain",
        [*PRETRAIN, "scaling.num_workers=64"],
        "scaling.num_workers",
        "asks for 64 CPU in all, but the cluster has 4",
    ),
    (
        "pretrain",
        [*PRETRAIN, "scaling.use_gpu=true"],
        "scaling.use_gpu",
        "asks for 2 GPU in all, but the cluster has 0 (no GPU found)",
    ),
]


@pytest.mark.parametrize(
    ("command", "overrides", "key", "message"),
    CASES,
    ids=[f"{c[0]}:{c[2]}:{c[3][:30]}" for c in CASES],
)
def test_bad_input_is_one_line_naming_the_key(ray_cluster, files, command, overrides, key, message):
    out = Path(files["out"])
    with bounded(), pytest.raises(ConfigError) as err:
        raylm.run(command, [o.format(**files) for o in overrides])
    assert err.value.key == key, str(err.value)
    assert message in err.value.message, str(err.value)
    assert "\n" not in str(err.value)
    # Nothing that looks finished: no model, tokenizer or checkpoint under the output.
    finished = ("model", "tokenizer.json", "checkpoints", "metrics.jsonl")
    assert not any((out / name).exists() for name in finished)


def test_cli_prints_hydras_error_as_one_line(tmp_path):
    """The real CLI: Hydra's six-line block for a typo is one ``error:`` line, exit 2."""
    out = subprocess.run(
        [sys.executable, "-m", "raylm", "pretrain", "trainer.lrr=1e-3", "trainer.lr"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "raylm pretrain: error: trainer.lr: has no value; write trainer.lr=VALUE "
        "(or ~trainer.lr to delete it)"
    )
    assert not list(tmp_path.iterdir())  # Hydra made no outputs/ directory


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("127.0.0.1:9", "ray.address: nothing answers at 127.0.0.1:9 ("),
        ("head-node", "ray.address: 'head-node' is not HOST:PORT"),
    ],
)
def test_cli_refuses_a_ray_address_in_seconds(tmp_path, corpus, tokenizers, address, message):
    """Ray retries an address nothing answers at for minutes (measured: still retrying
    after 2 min, no line naming it). A fresh process, as the address is read only by the
    first ray.init of one."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "raylm",
            "pretrain",
            f"data.train_files=[{corpus['train']}]",
            f"tokenizer.path={tokenizers['bpe']}",
            f"output_dir={tmp_path / 'run'}",
            f"ray.address={address}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith(f"raylm pretrain: error: {message}"), line
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_cli_flags_still_reach_hydra(capsys):
    """Pre-composing leaves Hydra's own flags alone: ``--cfg job`` prints the config."""
    from raylm.cli import main

    main(["pretrain", "--cfg", "job", "trainer.lr=0.01"])
    assert "lr: 0.01" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["pretrain", "--cfg", "job", "trainer.lr=fast"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "raylm pretrain: error: trainer.lr: takes a number, got 'fast'"
    )
