"""raylm sweep refuses a bad search space or setting with one line, before Ray starts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import raylm
from raylm.config import ConfigError
from raylm.data.synthetic import write_labeled
from raylm.tune.space import (
    hydra_value,
    last_wins,
    parse_param,
    split_command_line,
    trial_overrides,
)


@pytest.fixture(scope="module")
def base(tokenizers, tmp_path_factory) -> list[str]:
    d = tmp_path_factory.mktemp("sweepdata")
    train = write_labeled(d / "train.jsonl", 200, seed=0)
    return [
        "base=finetune",
        f"data.train_files=[{train}]",
        f"tokenizer.path={tokenizers['wordpiece']}",
        f"output_dir={d / 'sweep'}",
        "trainer.max_steps=20",
        "trainer.eval_every=10",
    ]


BAD = [
    # (overrides, key in the message, words in the message)
    (["trainer.lr=interval(1e-5,"], "search.params.trainer.lr", "cannot parse"),
    (["+search.params.trainer.lr='interval(1e-5,'"], "search.params.trainer.lr", "cannot parse"),
    (
        ["+search.params.trainer.lrr='choice(1e-4, 1e-3)'"],
        "search.params.trainer.lrr",
        "no key trainer.lrr",
    ),
    (["+search.params.trainer.lr='choice()'"], "search.params.trainer.lr", "cannot parse"),
    (["+search.params.trainer.lr='3e-4'"], "search.params.trainer.lr", "one value, not a space"),
    (["+search.params.trainer.lr='interval(1e-3, 1e-5)'"], "search.params.trainer.lr", "is empty"),
    (
        ["+search.params.trainer.lr='tag(log, interval(0, 1e-3))'"],
        "search.params.trainer.lr",
        "above 0",
    ),
    (
        ["+search.params.trainer.lr='tag(linear, choice(1, 2))'"],
        "search.params.trainer.lr",
        "unknown tag",
    ),
    (["model=choice(bert-tiny, bert-huge)"], "search.params.model", "bert-huge"),
    (["+search.params.output_dir='choice(a, b)'"], "search.params.output_dir", "set per trial"),
    (
        ["trainer.micro_batch_size=choice(8, 0)"],
        "search.params.trainer.micro_batch_size",
        "trainer.micro_batch_size=0 fails",
    ),
    (
        ["search=grid", "trainer.lr=interval(1e-5, 1e-3)"],
        "search.params.trainer.lr",
        "grid needs finite values",
    ),
    (
        ["search=pbt", "model=choice(bert-tiny, gpt2-tiny)"],
        "search.params.model",
        "pbt copies checkpoints",
    ),
    (
        ["trainer.lr=choice(1e-4, 1e-3)", "search.metric=eval_bleu"],
        "search.metric",
        "reports eval_loss",
    ),
    (
        [
            "trainer.lr=choice(1e-4, 1e-3)",
            "search.metric=[eval_accuracy,eval_loss]",
            "search.mode=[max,min]",
        ],
        "search.metric",
        "need search=optuna",
    ),
    (
        [
            "search=optuna",
            "trainer.lr=choice(1e-4, 1e-3)",
            "search.metric=[eval_accuracy,eval_loss]",
            "search.mode=[max]",
        ],
        "search.mode",
        "one per metric",
    ),
    (["trainer.lr=choice(1e-4, 1e-3)", "search.num_samples=0"], "search.num_samples", ">= 1"),
    (
        ["trainer.lr=choice(1e-4, 1e-3)", "search.grace_period=20"],
        "search.grace_period",
        "not below trainer.max_steps",
    ),
    (["trainer.lr=choice(1e-4, 1e-3)", "trainer.epochs=abc"], "base_overrides", "epochs"),
    (
        ["trainer.lr=choice(1e-4, 1e-3)", "base=serve"],
        "base",
        "sweep one of pretrain, finetune, compress",
    ),
    (["trainer.lr=choice(1e-4, 1e-3)", "resume=true"], "resume", "no earlier sweep"),
    ([], "search.params", "is empty"),
]


@pytest.mark.parametrize("extra,key,words", BAD, ids=[b[1] + ":" + b[2] for b in BAD])
def test_bad_space_is_one_line_naming_the_key(base, extra, key, words):
    with pytest.raises(ConfigError) as err:
        raylm.run("sweep", [*base, *extra])
    assert err.value.key == key, str(err.value)
    assert words in err.value.message, str(err.value)
    assert "\n" not in str(err.value)


def test_cli_exits_2_with_one_line_and_no_ray(base):
    proc = subprocess.run(
        [sys.executable, "-m", "raylm", "sweep", *base, "trainer.lr=choice()"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert lines[-1].startswith("raylm sweep: error: search.params.trainer.lr: cannot parse")
    assert "Traceback" not in proc.stderr
    assert "Started a local Ray instance" not in proc.stderr + proc.stdout


def test_command_line_split_and_values_round_trip():
    own = split_command_line(
        [
            "base=finetune",
            "search=asha",
            "model=choice(bert-tiny,gpt2-tiny)",
            "trainer.lr=1e-3",
            "data.train_files=[a.txt,b c.txt]",
        ]
    )
    assert own[:2] == ["base=finetune", "search=asha"]
    assert "+search.params.model='choice(bert-tiny,gpt2-tiny)'" in own
    assert own[-1] == "extra_overrides=['trainer.lr=1e-3','data.train_files=[a.txt,b c.txt]']"
    steps = parse_param("compress.steps", "choice([distill,prune],[distill,prune,quantize])")
    assert steps.encoded and steps.tune_values() == ["[distill,prune]", "[distill,prune,quantize]"]
    lr = parse_param("trainer.lr", "tag(log, interval(1e-5, 1e-3))")
    assert (lr.kind, lr.log, lr.low, lr.high) == ("interval", True, 1e-5, 1e-3)
    assert trial_overrides(
        {"compress.steps": "[distill,prune]", "trainer.lr": 2.5e-4}, [steps, lr]
    ) == [
        "compress.steps=[distill,prune]",
        "trainer.lr=0.00025",
    ]
    assert (
        hydra_value("a b") == "'a b'"
        and hydra_value(True) == "true"
        and hydra_value(None) == "null"
    )
    assert parse_param("x", "range(1, 4)").values == (1, 2, 3)


def test_rerun_overrides_keep_each_key_once_where_hydra_takes_it():
    # The base command's own max_steps, then the sweep's: the rerun command says 40 once.
    got = last_wins(["trainer.max_steps=20", "~model.x", "trainer.lr=1e-3", "trainer.max_steps=40"])
    assert got == ["~model.x", "trainer.lr=1e-3", "trainer.max_steps=40"]
    cfg = raylm.compose("finetune", got[1:])
    assert cfg.trainer.max_steps == 40


def test_hydra_multirun_still_runs_a_plain_grid(corpus, tmp_path):
    """Hydra's own --multirun (README: when to use which) goes through raylm's CLI: one
    run per combination, each with its own interpolated output path."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "raylm",
            "tokenizer",
            "--multirun",
            "tokenizer.vocab_size=300,500",
            f"data.train_files=[{corpus['train']}]",
            f"tokenizer.path={tmp_path}/tok_${{tokenizer.vocab_size}}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    sizes = {}
    for n in (300, 500):
        vocab = json.loads((tmp_path / f"tok_{n}" / "tokenizer.json").read_text())["model"]["vocab"]
        sizes[n] = len(vocab)
    assert sizes[300] <= 300 < sizes[500] <= 500, sizes
