"""Token classification (BIO tagging) on the fine-tuning loop, and ``raylm predict`` for
taggers: real Ray, real DeepSpeed on CPU."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from conftest import FAST, read_metrics

import raylm
from raylm.data.synthetic import tagged_rows, write_tagged
from raylm.data.tagged import IGNORE, align, spans
from raylm.train.scoring import entity_metrics

TAGGING = [
    *FAST,
    "task=token_cls",
    "model=bert-tiny",
    "data.text_column=tokens",
    "data.label_column=tags",
    "trainer.lr=2e-3",
    "trainer.max_steps=200",
    "trainer.eval_every=100",
    "trainer.checkpoint_every=200",
    "trainer.warmup_steps=10",
    "model.dropout=0.0",
]


def test_spans_follow_conlleval():
    tags = ["B-PER", "I-PER", "O", "I-LOC", "I-LOC", "B-LOC", "B-LOC", "I-PER", "I-LOC"]
    # A stray I- starts an entity; B- always starts one; a type change ends one.
    assert spans(tags) == [
        ("PER", 0, 2),
        ("LOC", 3, 5),
        ("LOC", 5, 6),
        ("LOC", 6, 7),
        ("PER", 7, 8),
        ("LOC", 8, 9),
    ]
    assert spans(["O", "O"]) == [] and spans(["B-X"]) == [("X", 0, 1)]


def test_entity_metrics_are_span_level():
    # PER: 2 correct of 3 predicted, 4 gold; LOC: 1 correct, 1 predicted, 1 gold.
    m = entity_metrics(torch.tensor([[1.0, 1, 1], [2, 3, 4]]), ["LOC", "PER"])
    assert m["eval_precision"] == pytest.approx(3 / 4)
    assert m["eval_recall"] == pytest.approx(3 / 5)
    assert m["eval_f1"] == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert m["eval_entity_f1"] == pytest.approx(
        {"LOC": 1.0, "PER": 2 * (2 / 3) * 0.5 / (2 / 3 + 0.5)}
    )


def test_tags_go_on_first_subwords():
    # [CLS] w0 w0 w1 [SEP]: the second piece of w0 and the specials are ignored.
    assert align([None, 0, 0, 1, None], [3, 5]) == [IGNORE, 3, IGNORE, 5, IGNORE]


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    d = tmp_path_factory.mktemp("tagged")
    return {
        "train": write_tagged(d / "train.jsonl", 800, seed=0),
        "eval": write_tagged(d / "eval.parquet", 200, seed=1),
    }


def tag(tmp_path, tagged, tokenizers, *overrides):
    out = tmp_path / "run"
    summary = raylm.run(
        "finetune",
        [
            *TAGGING,
            f"tokenizer.path={tokenizers['wordpiece']}",
            f"data.train_files=[{tagged['train']}]",
            f"output_dir={out}",
            *overrides,
        ],
    )
    return out, summary


@pytest.fixture(scope="module")
def tagger(ray_cluster, tagged, tokenizers, tmp_path_factory):
    out, summary = tag(
        tmp_path_factory.mktemp("tagger"), tagged, tokenizers, f"data.eval_files=[{tagged['eval']}]"
    )
    return out, summary


def test_token_cls_learns_bio_tagging(tagger):
    out, summary = tagger
    evals = [r for r in read_metrics(out) if "eval_f1" in r]
    assert [r["step"] for r in evals] == [100, 200]
    assert evals[-1]["eval_f1"] >= 0.9 and evals[-1]["eval_accuracy"] >= 0.95
    assert set(evals[-1]["eval_entity_f1"]) == {"LOC", "PER"}
    meta = json.loads((out / "model" / "raylm.json").read_text())
    assert meta["task"] == "token_cls" and meta["best"]["metric"] == "eval_f1"  # default metric
    assert meta["labels"] == ["B-LOC", "B-PER", "I-LOC", "I-PER", "O"]
    assert meta["metrics"]["eval_f1"] == max(r["eval_f1"] for r in evals)
    assert summary["metrics"]["eval_f1"] >= 0.9


def direct_tags(model_dir, rows):
    """Per-word tags from the exported model run directly: first subword's argmax."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    model = AutoModelForTokenClassification.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    out = []
    for words in rows:
        enc = tok(words, is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            best = model(**enc).logits[0].argmax(-1).tolist()
        first = {}
        for pos, w in enumerate(enc.word_ids(0)):
            if w is not None and w not in first:
                first[w] = model.config.id2label[best[pos]]
        out.append([first[i] for i in range(len(words))])
    return out


def test_predict_tags_match_a_direct_forward_pass(tagger, tmp_path):
    out, _ = tagger
    rows = pd.DataFrame(tagged_rows(60, seed=7))[["tokens"]]
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    rows.to_json(src, orient="records", lines=True)
    raylm.run(
        "predict",
        [f"model_dir={out / 'model'}", f"input={src}", f"output={dst}", "text_column=tokens"],
    )
    got = pd.read_json(dst, lines=True)
    assert list(got["tokens"]) == list(rows["tokens"])  # one row per input, in order
    assert list(got["tags"]) == direct_tags(out / "model", list(rows["tokens"]))
    assert all(
        len(s) == len(w) and min(s) > 0 for s, w in zip(got["scores"], got["tokens"], strict=True)
    )
    truth = pd.DataFrame(tagged_rows(60, seed=7))["tags"]
    correct = sum(
        t == p
        for tt, pp in zip(truth, got["tags"], strict=True)
        for t, p in zip(tt, pp, strict=True)
    )
    assert correct / sum(map(len, truth)) >= 0.95


def test_predict_tags_plain_text_split_on_spaces(tagger, tmp_path):
    out, _ = tagger
    src, dst = tmp_path / "in.csv", tmp_path / "out.jsonl"
    pd.DataFrame({"text": ["clara okafor walks to north harbor ."]}).to_csv(src, index=False)
    raylm.run("predict", [f"model_dir={out / 'model'}", f"input={src}", f"output={dst}"])
    row = pd.read_json(dst, lines=True).iloc[0]
    assert row["entities"] == [
        {"type": "PER", "start": 0, "end": 2, "text": "clara okafor"},
        {"type": "LOC", "start": 4, "end": 6, "text": "north harbor"},
    ]


def test_tag_list_length_must_match_the_words(ray_cluster, tagged, tokenizers, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"tokens": ["anna", "walks"], "tags": ["B-PER", "O"]}\n'
        '{"tokens": ["ben", "berg", "walks"], "tags": ["B-PER", "I-PER"]}\n'
    )
    with pytest.raises(raylm.ConfigError) as err:
        tag(tmp_path, tagged, tokenizers, f"data.eval_files=[{bad}]")
    assert err.value.key == "data.label_column"
    assert err.value.message == (
        "row 1 of data.eval_files has 3 words but 2 tags in 'tags'; give one tag per word"
    )
    assert not (tmp_path / "run" / "model").exists()


def test_tags_must_be_bio(ray_cluster, tagged, tokenizers, tmp_path):
    bad = tmp_path / "io.jsonl"
    bad.write_text(
        "".join(
            json.dumps({"tokens": r["tokens"], "tags": [t.replace("B-", "") for t in r["tags"]]})
            + "\n"
            for r in tagged_rows(40)
        )
    )
    with pytest.raises(raylm.ConfigError, match=r"must be BIO \(O, B-TYPE, I-TYPE\); got LOC, PER"):
        tag(tmp_path, {"train": bad}, tokenizers)


def test_text_instead_of_words_is_named(ray_cluster, tokenizers, tmp_path):
    bad = tmp_path / "text.jsonl"
    bad.write_text('{"tokens": "anna walks", "tags": ["B-PER", "O"]}\n' * 20)
    with pytest.raises(raylm.ConfigError, match="needs a list of words per row") as err:
        tag(tmp_path, {"train": bad}, tokenizers)
    assert err.value.key == "data.text_column"
