"""Bad configuration: one clear line naming the key, exit status 2, no traceback.

These run the real CLI (a subprocess) or the same composition in-process; none starts Ray.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

import raylm
from raylm.config import ConfigError
from raylm.train.deepspeed_config import deepspeed_config


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "raylm", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_help_lists_commands():
    out = cli("--help")
    assert out.returncode == 0
    assert "tokenizer" in out.stdout and "pretrain" in out.stdout


def test_hydra_cfg_job_prints_composed_config():
    out = cli("pretrain", "--cfg", "job", "model=bert-tiny", "task=mlm", "deepspeed=zero3")
    assert out.returncode == 0, out.stderr
    assert "name: bert-tiny" in out.stdout and "zero_stage: 3" in out.stdout


def test_unknown_preset_is_one_line(tmp_path):
    out = cli("pretrain", "model=gpt2-huge", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "raylm pretrain: error: model=gpt2-huge is not a known preset; "
        "choose one of: bert-base, bert-tiny, gpt2-small, gpt2-tiny"
    )
    assert not (tmp_path / "outputs").exists()


def test_config_error_from_cli_has_no_traceback(tmp_path, corpus, tokenizers):
    out = cli(
        "pretrain",
        f"data.train_files=[{corpus['train']}]",
        f"tokenizer.path={tokenizers['bpe']}",
        "deepspeed.zero_stage=4",
        f"output_dir={tmp_path / 'run'}",
    )
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert (
        out.stderr.strip()
        == "raylm pretrain: error: deepspeed.zero_stage: must be 0, 1, 2 or 3, got 4"
    )


def test_type_error_is_caught_by_schema(tmp_path):
    out = cli("pretrain", "trainer.lr=fast", cwd=tmp_path)
    assert out.returncode != 0
    assert "trainer.lr" in out.stderr and "Traceback" not in out.stderr


@pytest.fixture
def base(corpus, tokenizers, tmp_path):
    return [
        f"data.train_files=[{corpus['train']}]",
        f"tokenizer.path={tokenizers['bpe']}",
        f"output_dir={tmp_path / 'run'}",
    ]


BAD = [
    (["deepspeed.zero_stage=5"], "deepspeed.zero_stage", "must be 0, 1, 2 or 3"),
    (["trainer.micro_batch_size=0"], "trainer.micro_batch_size", "must be > 0"),
    (["trainer.grad_accum=-1"], "trainer.grad_accum", "must be > 0"),
    (["trainer.max_steps=0"], "trainer.max_steps", "must be > 0"),
    (["trainer.lr=0"], "trainer.lr", "must be > 0"),
    (["trainer.seq_len=4096"], "trainer.seq_len", "exceeds the model's 256 positions"),
    (["data.train_files=[/nonexistent/corpus.txt]"], "data.train_files", "file not found"),
    (["data.train_files=[]"], "data.train_files", "is empty"),
    (["model.vocab_size=100"], "model.vocab_size", "the tokenizer has"),
    (["deepspeed.offload_param=true"], "deepspeed.offload_param", "needs deepspeed.zero_stage=3"),
    (
        ["deepspeed=zero0", "deepspeed.offload_optimizer=true"],
        "deepspeed.offload_optimizer",
        "needs deepspeed.zero_stage 1, 2 or 3",
    ),
    (["task=mlm"], "task", "does not fit model 'gpt2-tiny'"),
    (["trainer.precision=fp8"], "trainer.precision", "must be one of"),
    (["trainer.precision=fp16"], "trainer.precision", "fp16 needs a GPU"),
    (["trainer.schedule=step"], "trainer.schedule", "must be one of"),
    (["tokenizer.path=/nonexistent/tok"], "tokenizer.path", "no tokenizer at"),
    (
        ["model.init_from=/nonexistent/model"],
        "model.init_from",
        "no such directory: /nonexistent/model",
    ),
    (
        ["trainer.metric=eval_accuracy"],
        "trainer.metric",
        "task=clm reports eval_loss, eval_perplexity",
    ),
    (["trainer.metric=eval_loss"], "trainer.metric", "needs data.eval_files"),
    (["trainer.metric_mode=up"], "trainer.metric_mode", "must be min or max"),
    (["model.head=mean_pool"], "model.head", "custom heads are for task=seq_cls, got task=clm"),
    (
        ["task=seq_cls", "model.head=nope"],
        "model.head",
        "unknown head 'nope'; registered: mean_pool",
    ),
    (["task=seq_cls", "model.head=os:path"], "model.head", "is not a subclass of"),
    (["task=seq_cls", "model.head=no_such_mod:X"], "model.head", "cannot import no_such_mod:X"),
    (
        ["trainer.early_stopping_patience=2"],
        "trainer.early_stopping_patience",
        "needs trainer.metric",
    ),
]


@pytest.mark.parametrize(
    ("overrides", "key", "message"), BAD, ids=[b[1] + ":" + b[0][-1] for b in BAD]
)
def test_bad_values_name_the_key(base, overrides, key, message):
    with pytest.raises(ConfigError) as err:
        raylm.run("pretrain", [*base, *overrides])
    assert err.value.key == key
    assert message in err.value.message
    assert "\n" not in str(err.value)


def test_empty_data_file(base, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ConfigError, match="file is empty"):
        raylm.run("pretrain", [*base, f"data.train_files=[{empty}]"])


def test_unknown_text_column(base, tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text('{"body": "the red ship sails."}\n')
    with pytest.raises(ConfigError, match="column 'text' not found") as err:
        raylm.run("tokenizer", [f"data.train_files=[{f}]", f"tokenizer.path={tmp_path / 'tok'}"])
    assert err.value.key == "data.text_column"
    assert not (tmp_path / "tok" / "tokenizer.json").exists()


def test_deepspeed_config_is_derived_from_trainer_keys():
    cfg = raylm.compose(
        "pretrain",
        [
            "deepspeed=zero3_offload",
            "trainer.micro_batch_size=4",
            "trainer.grad_accum=3",
            "trainer.precision=bf16",
            "trainer.lr=1e-3",
            "trainer.grad_clip=0.5",
            "+deepspeed.overrides.zero_optimization.reduce_bucket_size=1000",
        ],
    )
    from omegaconf import OmegaConf

    ds = deepspeed_config(OmegaConf.to_container(cfg, resolve=True), world_size=4, max_steps=50)
    assert ds["train_batch_size"] == 4 * 3 * 4
    assert ds["train_micro_batch_size_per_gpu"] == 4 and ds["gradient_accumulation_steps"] == 3
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    assert ds["gradient_clipping"] == 0.5
    assert ds["optimizer"]["params"]["lr"] == 1e-3
    assert ds["scheduler"]["params"]["total_num_steps"] == 50
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_param"]["device"] == "cpu"
    assert zero["offload_optimizer"]["device"] == "cpu"
    assert zero["reduce_bucket_size"] == 1000  # the free override lands beside derived keys


def test_wheel_ships_the_config_tree(tmp_path):
    import zipfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(root)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("raylm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {p.relative_to(root).as_posix() for p in (root / "conf").rglob("*.yaml")}
    assert expected and {f"raylm/{n}" for n in expected} <= names


def test_epochs_set_max_steps_from_the_packed_dataset():
    from omegaconf import OmegaConf

    from raylm.train.job import steps_for

    c = OmegaConf.to_container(
        raylm.compose(
            "pretrain",
            [
                "trainer.epochs=3",
                "trainer.micro_batch_size=4",
                "trainer.grad_accum=2",
                "scaling.num_workers=2",
            ],
        )
    )
    # 100 rows -> 50 per worker -> 12 micro-batches -> 6 steps per epoch.
    assert steps_for(c, 100) == 18
    c["trainer"]["epochs"] = None
    assert steps_for(c, 100) == c["trainer"]["max_steps"]
