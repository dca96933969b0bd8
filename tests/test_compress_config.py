"""raylm compress refuses bad options in one line naming the key, before Ray starts, and
leaves nothing half-written that looks like a finished artifact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_config import cli

import raylm
from raylm.config import ConfigError
from raylm.data.synthetic import write_labeled


def save_model(model, tok, d: Path, task: str) -> Path:
    model.save_pretrained(d)
    tok.save_pretrained(d)
    (d / "raylm.json").write_text(
        json.dumps({"task": task, "labels": ["city", "farm", "forest", "sea"]})
    )
    return d


@pytest.fixture(scope="module")
def dirs(tokenizers, tmp_path_factory):
    """A 4-layer x 4-head BERT classifier, a GPT-2 LM (random weights), and data."""
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForSequenceClassification,
        GPT2Config,
        GPT2LMHeadModel,
    )

    root = tmp_path_factory.mktemp("compress_config")
    wp = AutoTokenizer.from_pretrained(tokenizers["wordpiece"])
    torch.manual_seed(0)
    bert = BertForSequenceClassification(
        BertConfig(
            vocab_size=len(wp),
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=128,
            num_labels=4,
            id2label=dict(enumerate(["city", "farm", "forest", "sea"])),
        )
    )
    bpe = AutoTokenizer.from_pretrained(tokenizers["bpe"])
    gpt = GPT2LMHeadModel(
        GPT2Config(vocab_size=len(bpe), n_embd=32, n_layer=2, n_head=2, n_positions=128)
    )
    return {
        "cls": save_model(bert, wp, root / "cls", "seq_cls"),
        "gpt": save_model(gpt, bpe, root / "gpt", "clm"),
        "train": write_labeled(root / "train.jsonl", 200, seed=0),
        "out": root / "out",
    }


def prepare(dirs, *overrides, teacher="cls"):
    from raylm.compress.job import prepare as prepare_job

    return prepare_job(
        raylm.compose(
            "compress",
            [
                f"model.init_from={dirs[teacher]}",
                f"data.train_files=[{dirs['train']}]",
                f"output_dir={dirs['out']}",
                *overrides,
            ],
        )
    )


@pytest.mark.parametrize(
    ("overrides", "teacher", "message"),
    [
        (
            ["compress.steps=[distill,shrink]"],
            "cls",
            "compress.steps: unknown step 'shrink'; choose from distill, prune, quantize",
        ),
        (["compress.steps=[]"], "cls", "compress.steps: is empty"),
        (["compress.steps=[prune,prune]"], "cls", "compress.steps: prune is listed twice"),
        (
            ["compress.steps=[quantize,prune]"],
            "cls",
            "compress.steps: prune cannot follow quantize: quantize must be the last step",
        ),
        (
            ["compress.steps=[prune,distill]"],
            "cls",
            "compress.steps: distill must come before prune",
        ),
        (
            ["compress.prune.heads=20"],
            "cls",
            "compress.prune.heads: removes 20 of 16 heads, but at most 12 can go",
        ),
        (
            ["compress.prune.heads=-0.5"],
            "cls",
            "compress.prune.heads: must be a fraction in (0, 1)",
        ),
        (
            ["compress.prune.neurons=1.5"],
            "cls",
            "compress.prune.neurons: a number of neurons must be whole",
        ),
        (
            ["compress.prune.heads=0", "compress.prune.neurons=0"],
            "cls",
            "compress.prune.heads: compress.prune.heads and .neurons are both 0",
        ),
        (
            ["compress.distill.num_layers=8"],
            "cls",
            "compress.distill.num_layers: 8 is deeper than the teacher (4 layers); use 1..4",
        ),
        (
            ["compress.distill.num_layers=4"],
            "cls",
            "compress.distill.num_layers: the student would equal the teacher",
        ),
        (
            ["compress.distill.hidden_size=50"],
            "cls",
            "compress.distill.hidden_size: must be a multiple of the teacher's 4 attention heads",
        ),
        (
            ["compress.distill.alpha=1.5"],
            "cls",
            "compress.distill.alpha: must be in [0, 1], got 1.5",
        ),
        (["compress.distill.temperature=0"], "cls", "compress.distill.temperature: must be > 0"),
        (
            ["compress.quantize.dtype=int4"],
            "cls",
            "compress.quantize.dtype: must be one of int8, bf16, fp16",
        ),
        (
            ["compress.steps=[prune]", "data.eval_files=[x]"],
            "gpt",
            "compress.steps: prune supports teachers of task seq_cls, token_cls; model.init_from is a clm model",
        ),
        (
            ["compress.steps=[quantize]"],
            "gpt",
            "data.eval_files: compress measures a clm model on held-out text",
        ),
        (["task=token_cls"], "cls", "task: model.init_from is a seq_cls model"),
        (
            ["compress.report.batch_sizes=[0]"],
            "cls",
            "compress.report.batch_sizes: must be batch sizes >= 1",
        ),
    ],
)
def test_bad_option_is_one_line_naming_the_key(dirs, overrides, teacher, message):
    if teacher == "gpt" and "data.eval_files=[x]" in overrides:
        overrides = [o.replace("[x]", f"[{dirs['train']}]") for o in overrides]
    with pytest.raises(ConfigError) as err:
        prepare(dirs, *overrides, teacher=teacher)
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


def test_quantizing_a_missing_directory_from_the_cli(dirs, tmp_path):
    out = cli(
        "compress",
        f"model.init_from={tmp_path / 'nope'}",
        "compress.steps=[quantize]",
        f"data.train_files=[{dirs['train']}]",
        f"output_dir={tmp_path / 'out'}",
    )
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert out.stderr.strip() == (
        f"raylm compress: error: model.init_from: no such directory: {tmp_path / 'nope'}"
    )
    # Hydra has saved the composed config (.hydra/); nothing else was written.
    assert [p.name for p in (tmp_path / "out").iterdir()] in ([], [".hydra"])


def test_an_earlier_run_is_kept_unless_overwrite_or_resume(dirs):
    from raylm.compress.job import check_output_dir

    ctx = prepare(dirs)
    (ctx.output_dir / "report.json").parent.mkdir(parents=True, exist_ok=True)
    (ctx.output_dir / "report.json").write_text("{}")
    with pytest.raises(ConfigError, match="output_dir: .* holds an earlier compress run"):
        check_output_dir(ctx)
    check_output_dir(prepare(dirs, "overwrite=true"))
    assert not (ctx.output_dir / "report.json").exists()


def test_a_failed_step_leaves_no_artifact(dirs, monkeypatch):
    """The step writes into a hidden temp dir renamed only when whole."""
    from raylm.compress import quantize

    def fail(source, out, task):
        (out / "model.onnx").write_bytes(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(quantize, "quantize_int8", fail)
    ctx = prepare(dirs, "compress.steps=[quantize]", "overwrite=true")
    ctx.output_dir.mkdir(parents=True, exist_ok=True)
    with pytest.raises(RuntimeError, match="disk full"):
        quantize.Quantize().apply(dirs["cls"], ctx)
    assert not (ctx.output_dir / "quantize").exists()
    assert [p.name for p in ctx.output_dir.iterdir() if "quantize" in p.name] == []


def test_int8_and_bf16_steps_write_loadable_artifacts(dirs, tmp_path):
    """Quantize on its own (no Ray needed): the int8 model answers like fp32, bf16 loads."""
    import dataclasses

    from raylm.compress.quantize import Quantize
    from raylm.models.artifact import Artifact
    from raylm.predict.predictor import Classifier

    texts = ["the red ship sails near the harbor.", "a calm cow grazes.", "the owl watches"]
    want = Classifier(str(dirs["cls"])).probabilities(texts)
    for dtype in ("int8", "bf16"):
        ctx = prepare(dirs, f"compress.quantize.dtype={dtype}", f"output_dir={tmp_path / dtype}")
        ctx = dataclasses.replace(ctx, output_dir=tmp_path / dtype)
        entry = Quantize().apply(dirs["cls"], ctx)
        out = tmp_path / dtype / "quantize"
        artifact = Artifact.read(out)
        assert artifact.compression["chain"] == [entry]
        got = Classifier(str(out)).probabilities(texts)
        assert got == pytest.approx(want, abs=0.02 if dtype == "int8" else 0.05)
        assert artifact.runtime == ("onnxruntime" if dtype == "int8" else "torch")


@pytest.mark.parametrize("family", ["bert-seq_cls", "gpt2-clm", "gpt2-token_cls"])
def test_pruned_layers_really_shrink_and_reload_through_auto_classes(family, tmp_path):
    """Surgery keeps the chosen heads' and neurons' weights; the saved pruned model has
    fewer parameters and reloads with the task's Auto class to the same logits."""
    from transformers import BertConfig, GPT2Config

    from raylm.models.build import auto_class
    from raylm.models.pruned import layers, prune_layer, pruned_class_for, pruned_config

    arch, task = family.split("-")
    torch.manual_seed(0)
    if arch == "bert":
        config = BertConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            num_labels=3,
        )
    else:
        config = GPT2Config(
            vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64, num_labels=3
        )
    model = auto_class(task).from_config(config).eval()
    before = sum(p.numel() for p in model.parameters())
    keep = [([0, 2], list(range(0, 64, 2))), ([3], list(range(10)))]
    for layer, (heads, neurons) in zip(layers(model), keep, strict=True):
        prune_layer(layer, heads, neurons)
    ids = torch.randint(0, 100, (2, 10))
    with torch.inference_mode():
        want = model(input_ids=ids).logits
    shapes = pruned_config(model.config, [2, 1], [32, 10])
    pruned = pruned_class_for(model)(shapes)
    pruned.load_state_dict(model.state_dict())
    pruned.save_pretrained(tmp_path)
    reloaded = auto_class(task).from_pretrained(tmp_path).eval()
    assert type(reloaded).__name__.startswith("Pruned")
    assert [(layer.heads, layer.neurons) for layer in layers(reloaded)] == [(2, 32), (1, 10)]
    assert sum(p.numel() for p in reloaded.parameters()) < before
    with torch.inference_mode():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, want)


def test_pruning_drops_the_least_important_units_and_keeps_one_per_layer():
    from raylm.compress.prune import select

    scores = [[0.9, 0.1, 0.5], [0.05, 0.01]]
    assert select(scores, 2) == [[0, 2], [0]]  # 0.01 goes, 0.05 must stay (last of its layer)
    assert select(scores, 3) == [[0], [0]]
    assert select(scores, 0) == [[0, 1, 2], [0, 1]]


def test_report_checks_each_target_and_says_why_a_size_target_is_missed():
    from raylm.compress.report import build_report, markdown

    def row(name, params, size, b1, b32, acc, **composition):
        return {
            "name": name,
            "runtime": "onnxruntime" if name == "quantize" else "torch",
            "parameters": params,
            "size_bytes": size,
            "latency_ms": {"1": b1, "32": b32},
            "throughput_rows_per_s": 32 / b32 * 1000,
            "metrics": {"eval_accuracy": acc},
            "composition": composition,
        }

    rows = [
        row("teacher", 1000, 4000, 10.0, 100.0, 0.90, embedding_parameters=200),
        row("distill", 600, 2400, 5.0, 50.0, 0.89, embedding_parameters=200),
        row("quantize", 600, 1200, 2.0, 20.0, 0.885, int8_weight_bytes=600),
    ]
    report = build_report(rows, "seq_cls", "eval_accuracy", "max", 1)
    checks = {(t["step"], t["what"]): t for t in report["targets"]}
    assert checks["distill", "metric_retention"]["met"]  # 0.89 / 0.90 = 98.9 %
    assert checks["distill", "throughput_speedup"]["value"] == pytest.approx(2.0)
    size = checks["quantize", "size_ratio"]  # 1200 / 2400 = 0.5 > 0.30
    assert not size["met"] and size["missed_by"] == pytest.approx(0.2)
    assert size["why"].startswith("50% of the int8 file is not int8 weights")
    assert checks["quantize", "metric_drop_points"]["value"] == pytest.approx(0.5)
    assert checks["chain", "latency_speedup_b1"]["value"] == pytest.approx(5.0)
    assert checks["chain", "size_ratio"]["value"] == pytest.approx(0.3)
    assert "| quantize: size_ratio vs previous <= 0.3 | 0.5 | missed by 0.2: 50% of" in markdown(
        report
    )


def test_a_training_step_resumes_its_checkpoints_only_for_the_same_inputs(dirs, tmp_path):
    import dataclasses

    def ctx(*overrides):
        return dataclasses.replace(prepare(dirs, *overrides), output_dir=tmp_path)

    assert not ctx("resume=true").resume_training("distill")  # nothing recorded yet
    (tmp_path / "runs" / "distill" / "checkpoints").mkdir(parents=True)
    assert not ctx().resume_training("distill")  # resume=false starts over
    assert ctx("resume=true").resume_training("distill")
    # Other training keys or other settings: the checkpoints are of another run.
    assert not ctx("resume=true", "trainer.lr=1e-5").resume_training("distill")
    assert not ctx("resume=true", "compress.distill.alpha=0.9").resume_training("distill")
