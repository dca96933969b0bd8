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
    (d / "a_file").write_text("not a directory\n")
    out["a_file"] = str(d / "a_file")
    out["under_file"] = str(d / "a_file" / "sub")
    (d / "empty.jsonl").write_text("")
    out["empty"] = str(d / "empty.jsonl")
    out["short_eval"] = jsonl("short_eval.jsonl", good[:3])
    (d / "short.txt").write_text("the red ship sails.\n")
    out["short_corpus"] = str(d / "short.txt")
    (d / "taken.jsonl").mkdir()
    out["taken"] = str(d / "taken.jsonl")
    out.update(model_dirs(d / "models", tokenizers["wordpiece"]))
    return out


def model_dirs(d: Path, tokenizer: Path) -> dict[str, str]:
    """A tiny valid 2-label classifier, and copies of it broken in one way each."""
    import shutil

    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(tokenizer)
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        id2label={0: "neg", 1: "pos"},
        label2id={"neg": 0, "pos": 1},
    )
    good = d / "good"
    BertForSequenceClassification(config).save_pretrained(good)
    tok.save_pretrained(good)
    dirs = {"model": str(good)}

    def broken(name: str, damage) -> None:
        shutil.copytree(good, d / name)
        damage(d / name)
        dirs[name] = str(d / name)

    def truncate(path: Path) -> None:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    broken("no_weights", lambda m: (m / "model.safetensors").unlink())
    broken("bad_weights", lambda m: truncate(m / "model.safetensors"))
    broken("bad_tokenizer", lambda m: truncate(m / "tokenizer.json"))
    broken("bad_config", lambda m: truncate(m / "config.json"))
    return dirs


PRETRAIN = ["data.train_files=[{corpus}]", "tokenizer.path={bpe}", "output_dir={out}"]
FINETUNE = [
    "model=bert-tiny",
    "tokenizer.path={wordpiece}",
    "output_dir={out}",
    "trainer.max_steps=2",
]

PREDICT = ["model_dir={model}", "input={good_jsonl}", "output={out}/predictions.jsonl"]
SERVE = ["model_dir={model}", "serve.port=18123"]
COMPRESS = ["model.init_from={model}", "output_dir={out}", "task=seq_cls"]

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


CASES += [
    # Where output goes: refused before any work, not after it
    ("pretrain", [*PRETRAIN, "output_dir={under_file}"], "output_dir", "a_file is a file, so"),
    ("pretrain", [*PRETRAIN, "output_dir={a_file}"], "output_dir", "a_file is a file; give a"),
    (
        "tokenizer",
        ["data.train_files=[{corpus}]", "tokenizer.path={under_file}"],
        "tokenizer.path",
        "a_file is a file, so",
    ),
    ("predict", [*PREDICT, "output={under_file}/p.jsonl"], "output", "a_file is a file, so"),
    ("predict", [*PREDICT, "output={taken}"], "output", "is a directory; give a path for a file"),
    ("serve", [*SERVE, "serve.export={under_file}/s.yaml"], "serve.export", "a_file is a file"),
    ("compress", [*COMPRESS, "output_dir={under_file}"], "output_dir", "a_file is a file, so"),
    (
        "sweep",
        [
            "base=finetune",
            "data.train_files=[{good_jsonl}]",
            "tokenizer.path={wordpiece}",
            "trainer.lr=choice(1e-4,1e-3)",
            "output_dir={under_file}",
        ],
        "output_dir",
        "a_file is a file, so",
    ),
    # Model directories: every file a load reads is checked on the driver
    ("predict", [*PREDICT, "model_dir={no_weights}"], "model_dir", "has a config but no weights"),
    (
        "predict",
        [*PREDICT, "model_dir={bad_weights}"],
        "model_dir",
        "model.safetensors is corrupted",
    ),
    (
        "predict",
        [*PREDICT, "model_dir={bad_tokenizer}"],
        "model_dir",
        "tokenizer.json is corrupted",
    ),
    ("predict", [*PREDICT, "model_dir={bad_config}"], "model_dir", "a corrupted JSON file"),
    ("predict", [*PREDICT, "model_dir={out}/nowhere"], "model_dir", "no such directory"),
    ("predict", ["input={good_jsonl}", "output={out}/p.jsonl"], "model_dir", "is required"),
    ("serve", [*SERVE, "model_dir={bad_weights}"], "model_dir", "model.safetensors is corrupted"),
    ("serve", [*SERVE, "model_dir={bad_tokenizer}"], "model_dir", "tokenizer.json is corrupted"),
    (
        "finetune",
        [*FINETUNE, "data.train_files=[{good_jsonl}]", "model.init_from={no_weights}"],
        "model.init_from",
        "has a config but no weights",
    ),
    (
        "finetune",
        [*FINETUNE, "data.train_files=[{good_jsonl}]", "model.init_from={bad_weights}"],
        "model.init_from",
        "model.safetensors is corrupted",
    ),
    (
        "finetune",
        [*FINETUNE, "data.train_files=[{good_jsonl}]", "model.init_from={out}/runs/x/model"],
        "model.init_from",
        "no such directory",
    ),
    (
        "compress",
        [*COMPRESS, "model.init_from={bad_tokenizer}"],
        "model.init_from",
        "tokenizer.json is corrupted",
    ),
    # Inputs and values that parse but cannot work
    (
        "predict",
        [*PREDICT, "input={empty}"],
        "input",
        "is empty; give a file with at least one row",
    ),
    ("predict", [*PREDICT, "input={malformed}"], "input", "line 4 is not valid JSON"),
    (
        "tokenizer",
        ["data.train_files=[{corpus}]", "tokenizer.path={out}", "tokenizer.min_frequency=-1"],
        "tokenizer.min_frequency",
        "must be >= 0",
    ),
    ("pretrain", [*PRETRAIN, "trainer.warmup_ratio=1.5"], "trainer.warmup_ratio", "[0, 1)"),
    (
        "pretrain",
        [*PRETRAIN, "+deepspeed.overrides.zero_optimization.reduce_bucket_size=lots"],
        "deepspeed.overrides.zero_optimization.reduce_bucket_size",
        "Input should be a valid integer, unable to parse string as an integer, got 'lots'",
    ),
    (
        "pretrain",
        [*PRETRAIN, "+deepspeed.overrides.zero_optimization.stagee=2"],
        "deepspeed.overrides.zero_optimization.stagee",
        "Extra inputs are not permitted",
    ),
    (
        "pretrain",
        [*PRETRAIN, "+deepspeed.overrides.bf16.enabled=maybe"],
        "deepspeed.overrides.bf16.enabled",
        "Input should be a valid boolean, unable to interpret input, got 'maybe'",
    ),
    (
        "finetune",
        [*FINETUNE, "data.train_files=[{good_jsonl}]", "data.eval_files=[{short_eval}]"],
        "data.eval_files",
        "gives 3 rows, fewer than one micro-batch per worker (32)",
    ),
    (
        "pretrain",
        [*PRETRAIN, "data.train_files=[{short_corpus}]"],
        "data.train_files",
        "gives 0 blocks of trainer.seq_len=128 tokens, fewer than one micro-batch",
    ),
    # The cluster: a request it can never hold
    (
        "predict",
        [*PREDICT, "use_gpu=true"],
        "use_gpu",
        "asks for 1 GPU in all, but the cluster has 0",
    ),
    (
        "serve",
        [*SERVE, "serve.gpus_per_replica=1"],
        "serve.gpus_per_replica",
        "has 0 (no GPU found)",
    ),
    ("serve", [*SERVE, "serve.num_replicas=64"], "serve.num_replicas", "asks for 64 CPU in all"),
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


@pytest.mark.slow
def test_valid_but_doubtful_configs_train_with_one_warning_each(
    ray_cluster, files, tmp_path, capsys
):
    """Through the CLI in this process: a 2-label classifier fine-tuned on 3 labels gets a
    fresh head (it crashed in the worker), each doubtful setting one warning line (an eval set under one batch
    per worker is an error: a catalogue case), and a
    token among the overrides reaches neither raylm.json nor .hydra/."""
    from raylm.cli import main

    rows = [{"text": f"ship {i} sails", "label": ["a", "b", "c"][i % 3]} for i in range(60)]
    train, eval_ = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    eval_.write_text("".join(json.dumps(r) + "\n" for r in rows[:12]))
    out = tmp_path / "run"
    with bounded(240):
        main(
            [
                "finetune",
                f"model.init_from={files['model']}",
                f"data.train_files=[{train}]",
                f"data.eval_files=[{eval_}]",
                f"output_dir={out}",
                "trainer.max_steps=4",
                "trainer.warmup_steps=10",
                "trainer.eval_every=50",
                "trainer.micro_batch_size=4",
                "trainer.seq_len=16",
                "scaling.num_workers=2",
                "+hub.hf_token=hf_secret_value",
            ]
        )
    printed = capsys.readouterr().out
    assert "has a seq_cls head for 2 labels, the data has 3: a new head" in printed
    assert "warning: trainer.warmup_steps=10 is not below the run's 4 steps" in printed
    assert "warning: trainer.eval_every=50 is beyond the run's 4 steps" in printed
    exported = json.loads((out / "model" / "config.json").read_text())
    assert exported["id2label"] == {"0": "a", "1": "b", "2": "c"}
    saved = [out / "model" / "raylm.json", *(out / ".hydra").glob("*.yaml")]
    assert len(saved) == 4  # raylm.json, config.yaml, hydra.yaml, overrides.yaml
    for path in saved:
        assert "hf_secret_value" not in path.read_text(), path
    assert '"hf_token": "***"' in saved[0].read_text()


def test_secrets_are_redacted_by_name_in_every_shape():
    from raylm._internal.redact import redact

    config = {
        "serve": {"auth_token_env": "TOKEN_VAR", "max_new_tokens": 8, "api_key": "k1"},
        "output_dir": "s3://b/run?access_key=AK&secret_key=SK&region=us-east-1",
        "base_overrides": ["+wandb.api_key=k2", "trainer.lr=0.1"],
        "env": {"HF_TOKEN": "t1", "AWS_SECRET_ACCESS_KEY": "s1", "PATH": "/bin"},
        "tokenizer": {"path": "tok"},
    }
    assert redact(config) == {
        "serve": {"auth_token_env": "TOKEN_VAR", "max_new_tokens": 8, "api_key": "***"},
        "output_dir": "s3://b/run?access_key=***&secret_key=***&region=us-east-1",
        "base_overrides": ["+wandb.api_key=***", "trainer.lr=0.1"],
        "env": {"HF_TOKEN": "***", "AWS_SECRET_ACCESS_KEY": "***", "PATH": "/bin"},
        "tokenizer": {"path": "tok"},
    }


def test_a_full_disk_is_one_line_and_keeps_the_earlier_tokenizer(tmp_path, corpus):
    """A real ENOSPC: the command runs in its own mount namespace over a 16 KiB tmpfs
    that holds an earlier tokenizer. The new one does not fit; the user gets one line
    naming the key and the reason, and the earlier tokenizer is as it was."""
    if subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode:
        pytest.skip("unshare --mount is not allowed here (needs CAP_SYS_ADMIN)")
    disk = tmp_path / "disk"
    disk.mkdir()
    script = f"""
set -e
mount -t tmpfs -o size=16k tmpfs {disk}
mkdir {disk}/tok && echo '{{"earlier": true}}' > {disk}/tok/tokenizer.json
set +e
{sys.executable} -m raylm tokenizer tokenizer.path={disk}/tok overwrite=true \\
    data.train_files=[{corpus["train"]}] tokenizer.vocab_size=400 hydra.run.dir={tmp_path}/h
echo "rc=$?"
cat {disk}/tok/tokenizer.json
ls -A {disk}
"""
    with bounded(120):
        out = subprocess.run(
            ["unshare", "--mount", "bash", "-c", script], capture_output=True, text=True
        )
    stdout = out.stdout.splitlines()
    assert "rc=2" in stdout, out.stdout + out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        f"raylm tokenizer: error: tokenizer.path: cannot write {disk}/tok "
        "(no space left on the device); the earlier one is untouched"
    ), out.stderr
    assert "Traceback" not in out.stderr
    assert stdout[-2:] == ['{"earlier": true}', "tok"]  # no half-written temp dir is left
