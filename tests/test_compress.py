"""raylm compress on a real local Ray cluster with real DeepSpeed engines: each method's
artifact loads and predicts, the report measures it, predict and serve answer as the
artifact does, distillation transfers what the teacher knows, and a killed
distillation worker restarts from its checkpoint."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
from pathlib import Path

import pytest
import requests
import torch
from conftest import FAST, read_metrics, train_worker_pids, wait_for_step
from omegaconf import OmegaConf
from safetensors.torch import load_file

import raylm
from raylm.data.synthetic import labeled_documents, write_labeled, write_tagged

pytestmark = pytest.mark.slow

TEACHER = [
    *FAST,
    "model=bert-tiny",
    "model.num_layers=4",
    "model.num_heads=4",
    "model.dropout=0.0",
    "trainer.lr=2e-3",
    "trainer.max_steps=80",
    "trainer.eval_every=40",
    "trainer.checkpoint_every=80",
]
# The training keys of every distillation here: the killed run must match the chain's.
DISTILL = [
    *FAST,
    "trainer.max_steps=60",
    "trainer.eval_every=30",
    "trainer.checkpoint_every=10",
    "trainer.log_every=1",
    "compress.report.repeats=3",
]


@pytest.fixture(scope="module")
def labeled(tmp_path_factory):
    d = tmp_path_factory.mktemp("labeled")
    return {
        "train": write_labeled(d / "train.jsonl", 800, seed=0),
        "eval": write_labeled(d / "eval.jsonl", 200, seed=1),
    }


def data_keys(data) -> list[str]:
    return [f"data.train_files=[{data['train']}]", f"data.eval_files=[{data['eval']}]"]


@pytest.fixture(scope="module")
def teacher(ray_cluster, labeled, tokenizers, tmp_path_factory) -> Path:
    """A 4-layer, 4-head BERT topic classifier."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    raylm.run(
        "finetune",
        [
            *TEACHER,
            *data_keys(labeled),
            f"tokenizer.path={tokenizers['wordpiece']}",
            f"output_dir={out}",
        ],
    )
    return out / "model"


def compress(teacher: Path, data, out: Path | str, *overrides: str) -> dict:
    return raylm.run(
        "compress",
        [*DISTILL, f"model.init_from={teacher}", *data_keys(data), f"output_dir={out}", *overrides],
    )


@pytest.fixture(scope="module")
def chain(teacher, labeled, s3, tmp_path_factory) -> dict:
    """distill -> prune -> quantize with output_dir in S3 (the training step runs and
    exports there, the others are written here and pushed); the tests read a copy."""
    from raylm._internal.storage import RunDir

    uri = s3("compress/chain")
    summary = compress(teacher, labeled, f"'{uri}'")
    store = RunDir(uri)
    assert summary["output_dir"] == uri
    assert summary["models"]["quantize"] == store.uri("quantize")
    assert summary["report"]["md"] == store.uri("report.md")
    out = store.pull("", tmp_path_factory.mktemp("chain") / "out")
    # raylm.json records where each step read from as the user finds it: in the store.
    from raylm.models.artifact import Artifact

    entries = Artifact.read(out / "quantize").compression["chain"]
    assert [e["source"] for e in entries[1:]] == [store.uri("distill"), store.uri("prune")]
    return {**summary, "output_dir": str(out)}


def eval_texts(data) -> tuple[list[str], list[str]]:
    rows = [json.loads(line) for line in Path(data["eval"]).read_text().splitlines()]
    return [r["text"] for r in rows], [r["label"] for r in rows]


def test_each_step_is_an_artifact_and_the_report_compares_them(chain, teacher):
    from transformers import AutoModelForSequenceClassification

    from raylm.models.artifact import Artifact, model_info

    out = Path(chain["output_dir"])
    assert [p.name for p in sorted(out.glob("report.*"))] == [
        "report.json",
        "report.md",
        "report.png",
    ]
    for i, step in enumerate(("distill", "prune", "quantize")):
        info = model_info(out / step)
        assert info["task"] == "seq_cls"
        chain_entries = Artifact.read(out / step).compression["chain"]
        assert [e["method"] for e in chain_entries] == ["distill", "prune", "quantize"][: i + 1]
    assert model_info(out / "quantize")["runtime"] == "onnxruntime"

    # distill: half the teacher's depth, from its layers 0 and 2.
    student = AutoModelForSequenceClassification.from_pretrained(out / "distill")
    assert student.config.num_hidden_layers == 2
    entry = Artifact.read(out / "distill").compression["chain"][0]
    assert entry["student"]["init"] == {"from": "teacher layers", "teacher_layers": [0, 2]}

    # prune: half the heads and FFN neurons gone, really smaller matrices, still an Auto model.
    pruned = AutoModelForSequenceClassification.from_pretrained(out / "prune")
    assert type(pruned).__name__ == "PrunedBertForSequenceClassification"
    heads = [layer.attention.self.num_attention_heads for layer in pruned.bert.encoder.layer]
    neurons = [layer.intermediate.dense.out_features for layer in pruned.bert.encoder.layer]
    assert sum(heads) == 4 and min(heads) >= 1  # 2 layers x 4 heads, half removed
    assert sum(neurons) == 512 and min(neurons) >= 1  # 2 x 512 neurons, half removed
    assert pruned.bert.encoder.layer[0].attention.self.query.out_features == heads[0] * 32

    rows = {r["name"]: r for r in json.loads((out / "report.json").read_text())["models"]}
    assert list(rows) == ["teacher", "distill", "prune", "quantize"]
    params = [rows[n]["parameters"] for n in ("teacher", "distill", "prune")]
    assert params[0] > params[1] > params[2]
    assert rows["prune"]["parameters"] == sum(p.numel() for p in pruned.parameters())
    assert rows["quantize"]["size_bytes"] < 0.6 * rows["prune"]["size_bytes"]
    for name, row in rows.items():
        assert row["metrics"]["eval_accuracy"] >= 0.9, name
        assert set(row["latency_ms"]) == {"1", "32"} and row["threads"] == 1
    assert rows["quantize"]["vs_teacher"]["latency_speedup_b1"] > 1
    md = (out / "report.md").read_text()
    assert "| quantize | onnxruntime |" in md and "eval_accuracy kept" in md


def test_int8_predictions_agree_with_fp32(chain, labeled):
    from raylm.predict.predictor import Classifier

    out = Path(chain["output_dir"])
    texts, _ = eval_texts(labeled)
    fp32 = Classifier(str(out / "prune")).probabilities(texts).argmax(-1)
    int8 = Classifier(str(out / "quantize")).probabilities(texts).argmax(-1)
    assert (fp32 == int8).mean() >= 0.95


def test_predict_and_serve_answer_as_the_compressed_artifact(chain, labeled, tmp_path):
    from ray import serve

    from raylm.predict.predictor import Classifier
    from raylm.serve.job import app_args, start

    out = Path(chain["output_dir"])
    texts, _ = eval_texts(labeled)
    # int8 activations are quantized per batch, so compare batches of the same rows:
    # predict's first batch (batch_size=64), and one request of 20 texts.
    quantized = Classifier(str(out / "quantize"))
    labels = quantized.labels
    first_batch = quantized.probabilities(texts[:64])
    direct = {
        step: Classifier(str(out / step)).probabilities(texts[:20])
        for step in ("prune", "quantize")
    }

    predictions = tmp_path / "pred.jsonl"
    raylm.run(
        "predict",
        [
            f"model_dir={out / 'quantize'}",
            f"input={labeled['eval']}",
            f"output={predictions}",
            "batch_size=64",
        ],
    )
    rows = [json.loads(line) for line in predictions.read_text().splitlines()][:64]
    assert [r["label"] for r in rows] == [labels[i] for i in first_batch.argmax(-1)]
    for i, label in enumerate(labels):
        assert [r[f"prob_{label}"] for r in rows] == pytest.approx(
            first_batch[:, i].tolist(), abs=1e-5
        )

    overrides = [f"serve.models=[q:{out / 'quantize'},p:{out / 'prune'}]", "serve.port=8766"]
    c = OmegaConf.to_container(raylm.compose("serve", overrides), resolve=True)
    url = start(c, app_args(c))
    try:
        for name, step in (("q", "quantize"), ("p", "prune")):
            got = requests.post(
                f"{url}/v1/classify", json={"texts": texts[:20], "model": name}, timeout=60
            ).json()["results"]
            for row, probs in zip(got, direct[step], strict=True):
                served = [row["probabilities"][label] for label in labels]
                assert served == pytest.approx(probs.tolist(), abs=1e-5)
        models = {
            m["name"]: m for m in requests.get(f"{url}/v1/models", timeout=10).json()["models"]
        }
        assert models["q"]["runtime"] == "onnxruntime" and models["p"]["runtime"] == "torch"
        assert [e["method"] for e in models["q"]["compression"]["chain"]] == [
            "distill",
            "prune",
            "quantize",
        ]
    finally:
        serve.shutdown()


def test_killed_distillation_worker_restarts_from_its_checkpoint(chain, teacher, labeled, tmp_path):
    out = tmp_path / "out"
    errors: list[BaseException] = []

    def run():
        try:
            compress(teacher, labeled, out, "compress.steps=[distill]", "trainer.max_failures=1")
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    step = wait_for_step(out / "runs" / "distill", 13)
    pids = train_worker_pids()
    assert len(pids) == 2
    os.kill(pids[-1], signal.SIGKILL)
    thread.join(timeout=600)
    assert not errors, errors
    assert step < 60, "the worker must die before the run ends"
    steps = [r["step"] for r in read_metrics(out / "runs" / "distill") if "loss" in r]
    assert steps == list(range(1, 61))  # resumed from step 10, rows past it rewritten
    # The same student as the uninterrupted distillation of the chain.
    got = load_file(out / "distill" / "model.safetensors")
    want = load_file(Path(chain["output_dir"]) / "distill" / "model.safetensors")
    assert got.keys() == want.keys()
    for name in got:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5, msg=name)


def test_distillation_beats_the_same_student_without_the_teacher(teacher, tmp_path):
    """Train the student on labels that are wrong for most 'sea' rows (relabelled
    'farm'): on its own it learns the noise, distilled it learns what the teacher knows."""
    rng = random.Random(0)
    rows = labeled_documents(800, seed=5)
    for row in rows:
        if row["label"] == "sea" and rng.random() < 0.7:
            row["label"] = "farm"
    noisy = tmp_path / "noisy.jsonl"
    noisy.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = {"train": noisy, "eval": write_labeled(tmp_path / "eval.jsonl", 200, seed=1)}
    accuracy = {}
    for alpha in (0.0, 0.9):
        summary = compress(
            teacher,
            data,
            tmp_path / f"alpha{alpha}",
            "compress.steps=[distill]",
            f"compress.distill.alpha={alpha}",
            "trainer.checkpoint_every=60",
        )
        accuracy[alpha] = summary["rows"][1]["metrics"]["eval_accuracy"]
    assert accuracy[0.9] >= 0.95
    assert accuracy[0.9] >= accuracy[0.0] + 0.1, accuracy


def test_token_cls_teacher_is_pruned_and_quantized(ray_cluster, tokenizers, tmp_path):
    from raylm.predict.predictor import Tagger

    data = {
        "train": write_tagged(tmp_path / "ner_train.jsonl", 800, seed=0),
        "eval": write_tagged(tmp_path / "ner_eval.jsonl", 200, seed=1),
    }
    cols = ["data.text_column=tokens", "data.label_column=tags"]
    run = tmp_path / "teacher"
    raylm.run(
        "finetune",
        [
            *TEACHER,
            "task=token_cls",
            *cols,
            *data_keys(data),
            f"tokenizer.path={tokenizers['wordpiece']}",
            f"output_dir={run}",
        ],
    )
    summary = compress(
        run / "model",
        data,
        tmp_path / "out",
        *cols,
        "compress.steps=[prune,quantize]",
        "compress.prune.heads=0.25",
        "compress.prune.neurons=0.25",
        "compress.prune.recovery_steps=10",  # a short fine-tune of the pruned tagger
    )
    rows = {r["name"]: r for r in summary["rows"]}
    assert rows["prune"]["parameters"] < rows["teacher"]["parameters"]
    recovery = read_metrics(tmp_path / "out" / "runs" / "prune")
    assert max(r["step"] for r in recovery) == 10 and any("eval_f1" in r for r in recovery)
    f1 = {name: row["metrics"]["eval_f1"] for name, row in rows.items()}  # entity level
    # The pruned tagger still finds entities (a quarter of its heads and neurons gone after
    # 80 teacher steps, 10 recovery steps: some F1 is lost); int8 loses next to nothing.
    assert f1["teacher"] >= 0.8 and f1["prune"] >= 0.6, f1
    assert abs(f1["quantize"] - f1["prune"]) <= 0.02, f1
    words = [json.loads(line)["tokens"] for line in Path(data["eval"]).read_text().splitlines()]
    fp32 = Tagger(summary["models"]["prune"]).tag(words)
    int8 = Tagger(summary["models"]["quantize"]).tag(words)
    same = sum(
        a == b
        for (ta, _), (tb, _) in zip(fp32, int8, strict=True)
        for a, b in zip(ta, tb, strict=True)
    )
    assert same / sum(len(w) for w in words) >= 0.95


@pytest.mark.parametrize("task", ["clm", "mlm"])
def test_language_model_distillation(task, ray_cluster, corpus, tokenizers, tmp_path):
    """A GPT (ZeRO-2) and a BERT MLM (ZeRO-3: the student is partitioned, the teacher is
    not) distilled to half depth stay close to the teacher's held-out perplexity."""
    from raylm.models.build import auto_class

    preset, tok = ("gpt2-tiny", "bpe") if task == "clm" else ("bert-tiny", "wordpiece")
    run = tmp_path / "teacher"
    raylm.run(
        "pretrain",
        [
            *FAST,
            f"model={preset}",
            f"task={task}",
            "model.num_layers=4",
            f"data.train_files=[{corpus['train']}]",
            f"data.eval_files=[{corpus['eval']}]",
            f"tokenizer.path={tokenizers[tok]}",
            f"output_dir={run}",
            "trainer.max_steps=60",
            "trainer.eval_every=60",
            "trainer.checkpoint_every=60",
        ],
    )
    zero = "deepspeed=zero2" if task == "clm" else "deepspeed=zero3"
    summary = compress(
        run / "model", corpus, tmp_path / "out", "compress.steps=[distill]", "trainer.lr=1e-3", zero
    )
    teacher_row, student_row = summary["rows"]
    student = auto_class(task).from_pretrained(summary["models"]["distill"])
    assert student.config.num_hidden_layers == 2
    assert student_row["parameters"] < teacher_row["parameters"]
    # Half the depth, and within 15 % of the teacher's perplexity on held-out text.
    ppl = {
        name: row["metrics"]["eval_perplexity"]
        for name, row in zip(("teacher", "student"), summary["rows"], strict=True)
    }
    assert ppl["student"] <= 1.15 * ppl["teacher"], ppl


def test_resume_keeps_finished_steps_until_an_input_changes(teacher, labeled, tmp_path, capsys):
    out = tmp_path / "out"
    steps = "compress.steps=[quantize]"
    compress(teacher, labeled, out, steps)
    made = (out / "quantize" / "model.onnx").stat().st_mtime_ns
    with pytest.raises(raylm.ConfigError, match="set resume=true to reuse its finished steps"):
        compress(teacher, labeled, out, steps)
    compress(teacher, labeled, out, steps, "resume=true")
    assert "quantize: finished earlier, kept" in capsys.readouterr().out
    assert (out / "quantize" / "model.onnx").stat().st_mtime_ns == made
    # A training or data key is an input of every step too: changed, the step runs again.
    compress(teacher, labeled, out, steps, "resume=true", "trainer.seq_len=48")
    assert "finished earlier" not in capsys.readouterr().out
    assert (out / "quantize" / "model.onnx").stat().st_mtime_ns != made
