"""A run's output location as a URI (raylm._internal.storage) against a real S3 API,
and the commands that take only paths refusing a URI by name."""

from __future__ import annotations

import json

import pyarrow.fs
import pytest
import torch

import raylm
from raylm._internal.storage import RunDir, is_uri, join
from raylm.models.artifact import Artifact


def test_join_puts_names_before_the_query():
    assert join("s3://b/run?endpoint_override=h:1&scheme=http", "model", "raylm.json") == (
        "s3://b/run/model/raylm.json?endpoint_override=h:1&scheme=http"
    )
    assert join("/runs/a/", "model") == "/runs/a/model"
    assert is_uri("gs://b/x") and is_uri("file:///x") and not is_uri("/x") and not is_uri("a:b")


def test_push_pull_exists_remove_through_s3(s3, tmp_path):
    run = RunDir(s3("runs/push"), run_id="r1")
    assert run.remote and run.local != RunDir(s3("runs/push"), run_id="r2").local
    model = run.local / "model"
    (model / "sub").mkdir(parents=True)
    (model / "raylm.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"w" * 1000)
    (model / "sub" / "x.txt").write_text("x")
    (run.local / "metrics.jsonl").write_text('{"step": 1}\n')
    order = []
    real = pyarrow.fs.copy_files

    def recording(src, dst, **kw):  # the real copy, with its order noted
        order.append(dst)
        return real(src, dst, **kw)

    pyarrow.fs.copy_files = recording
    try:
        run.push("model", last="raylm.json")
    finally:
        pyarrow.fs.copy_files = real
    assert order[-1].endswith("model/raylm.json") and len(order) == 3
    run.push("metrics.jsonl")
    assert run.exists("model/sub/x.txt") and run.exists("metrics.jsonl")
    assert not run.exists("best")

    # Another node (another mirror) sees what was pushed, byte for byte.
    other = RunDir(s3("runs/push"), run_id="elsewhere")
    got = other.pull("model")
    assert (got / "model.safetensors").read_bytes() == b"w" * 1000
    assert (got / "sub" / "x.txt").read_text() == "x"
    assert other.pull("metrics.jsonl").read_text() == '{"step": 1}\n'
    assert not other.pull("nothing-there").exists()
    into = other.pull("model", into=tmp_path / "copy")
    assert (into / "raylm.json").exists()

    run.remove("model")
    run.remove("metrics.jsonl")
    run.remove("absent")
    assert not run.exists("model") and not run.exists("metrics.jsonl")
    kwargs = run.storage("checkpoints")
    assert kwargs["storage_path"] == "raylm/runs/push/checkpoints"
    assert isinstance(kwargs["storage_filesystem"], pyarrow.fs.S3FileSystem)
    run.clean_mirror()
    other.clean_mirror()
    assert not run.local.exists() and not other.local.exists()


def test_a_path_location_is_used_as_it_is(tmp_path):
    run = RunDir(str(tmp_path / "run"))
    assert not run.remote and run.local == tmp_path / "run"
    assert run.storage("checkpoints") == {"storage_path": str(tmp_path / "run" / "checkpoints")}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "m.txt").write_text("m")
    run.push("m.txt")  # nothing to copy: it is there already
    assert run.pull("m.txt").read_text() == "m" and run.exists("m.txt")
    run.remove("m.txt")
    assert not run.exists("m.txt")


@pytest.mark.parametrize(
    "command, args, key",
    [
        ("predict", ["model_dir={d}", "input={d}/in.jsonl", "output=s3://b/p.jsonl"], "output"),
        ("predict", ["model_dir={d}", "input=gs://b/in.jsonl", "output={d}/o.jsonl"], "input"),
        (
            "predict",
            ["model_dir=s3://b/m", "input={d}/in.jsonl", "output={d}/o.jsonl"],
            "model_dir",
        ),
        (
            "tokenizer",
            ["data.train_files=[{d}/c.txt]", "tokenizer.path=s3://b/tok"],
            "tokenizer.path",
        ),
        ("serve", ["model_dir={d}", "serve.export=s3://b/serve.yaml"], "serve.export"),
        ("serve", ["serve.models=[cls:s3://b/m]"], "serve.models"),
        (
            "pretrain",
            ["data.train_files=[s3://b/corpus.txt]", "output_dir={d}/o"],
            "data.train_files",
        ),
    ],
)
def test_keys_that_take_paths_refuse_a_uri_by_name(command, args, key, tmp_path, tokenizers):
    """Without the refusal, s3://b/x would quietly become a local directory ./s3:/b/x."""
    (tmp_path / "in.jsonl").write_text('{"text": "a"}\n')
    (tmp_path / "c.txt").write_text("some text\n")
    args = [a.format(d=tmp_path) for a in args]
    if command == "pretrain":
        args.append(f"tokenizer.path={tokenizers['bpe']}")
    with pytest.raises(raylm.ConfigError, match="is a URI; this key takes a path") as err:
        raylm.run(command, args)
    assert err.value.key == key
    assert not (tmp_path / "s3:").exists() and not list(tmp_path.glob("**/s3:"))


def test_a_malformed_uri_output_dir_is_one_line(tokenizers, corpus, tmp_path):
    with pytest.raises(raylm.ConfigError, match="not a URI pyarrow can open") as err:
        raylm.run(
            "pretrain",
            [
                f"data.train_files=[{corpus['train']}]",
                f"tokenizer.path={tokenizers['bpe']}",
                "output_dir=nosuchscheme://b/run",
            ],
        )
    assert err.value.key == "output_dir"


def _store_rows(run: RunDir, name: str) -> list[dict]:
    with run.fs.open_input_stream(f"{run.path}/{name}") as f:
        return [json.loads(line) for line in f.read().decode().splitlines()]


@pytest.mark.slow
def test_a_run_in_s3_exports_its_best_step_resumes_and_overwrites(
    ray_cluster, corpus, tokenizers, s3, tmp_path
):
    """Two workers, output_dir an S3 URI. trainer.metric_mode=max on eval_loss makes the
    first eval (step 10) the best, so the export must come from the snapshot each rank
    pushed to the store then, not from the last weights. resume=true with more steps
    continues from the store (checkpoint and metrics log); overwrite=true starts over."""
    from conftest import FAST
    from safetensors.torch import load_file

    uri = s3("runs/best")
    args = [
        *FAST,
        f"data.train_files=[{corpus['train']}]",
        f"data.eval_files=[{corpus['eval']}]",
        f"tokenizer.path={tokenizers['bpe']}",
        "trainer.max_steps=20",
        "trainer.eval_every=10",
        "trainer.checkpoint_every=10",
        "trainer.metric=eval_loss",
        "trainer.metric_mode=max",
        f"output_dir='{uri}'",
    ]
    summary = raylm.run("pretrain", args)
    run = RunDir(uri)
    assert summary["model_dir"] == run.uri("model") and summary["best"]["step"] == 10
    model = run.pull("model", into=tmp_path / "model")
    assert Artifact.read(model).step == 10
    # The step-10 checkpoint Ray Train stored holds the same weights as the export.
    selector = pyarrow.fs.FileSelector(f"{run.path}/checkpoints/train", recursive=True)
    states = [i.path for i in run.fs.get_file_info(selector) if i.path.endswith("raylm_state.json")]
    at_10 = next(
        p.rsplit("/", 1)[0]
        for p in states
        if json.loads(run.fs.open_input_stream(p).read())["step"] == 10
    )
    local = tmp_path / "ckpt10"
    pyarrow.fs.copy_files(
        f"{at_10}/deepspeed/mp_rank_00_model_states.pt",
        str(local),
        source_filesystem=run.fs,
        destination_filesystem=pyarrow.fs.LocalFileSystem(),
    )
    saved = torch.load(local, weights_only=False)["module"]
    exported = load_file(model / "model.safetensors")
    for name, tensor in exported.items():
        torch.testing.assert_close(tensor, saved[name].float(), msg=name)
    assert run.exists("loss_curve.png") and run.exists("best/best")

    with pytest.raises(raylm.ConfigError, match="holds an earlier run"):
        raylm.run("pretrain", args)
    raylm.run("pretrain", [*args, "trainer.max_steps=30", "resume=true"])
    rows = [r for r in _store_rows(run, "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30]  # one log, continued
    assert Artifact.read(run.pull("model", into=tmp_path / "model2")).step == 10

    # A run that starts from the model in the store: each worker fetches it itself, and
    # the tokenizer is the model's (Ray Data's tasks fetch its files too).
    later = RunDir(s3("runs/from-store"))
    dropped = ("output_dir=", "trainer.max_steps=", "trainer.metric", "tokenizer.path=")
    start = [a for a in args if not a.startswith(dropped)]
    raylm.run(
        "pretrain",
        [
            *start,
            "trainer.max_steps=5",
            f"model.init_from='{run.uri('model')}'",
            f"output_dir='{later.location}'",
        ],
    )
    (first,) = [r["loss"] for r in _store_rows(later, "metrics.jsonl") if "loss" in r]
    assert first < rows[0]["loss"] - 0.3  # trained weights, not a fresh init
    config = Artifact.loads(later.read_text("model/raylm.json")).config
    assert config["model"]["init_from"] == run.uri("model")

    raylm.run("pretrain", [*args, "overwrite=true", "trainer.metric_mode=min"])
    assert [r["step"] for r in _store_rows(run, "metrics.jsonl") if "loss" in r] == [5, 10, 15, 20]
    assert Artifact.read(run.pull("model", into=tmp_path / "model3")).step == 20
