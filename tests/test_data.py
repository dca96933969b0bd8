"""Tokenizers, file formats, packing, NSP pairs and MLM masking (no Ray cluster needed,
except where Ray Data runs the pipeline)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer

import raylm
from raylm.data.files import load_text_dataset
from raylm.data.pipeline import pack_causal, pack_masked, pair_sentences
from raylm.data.synthetic import documents
from raylm.tasks import get_task


def test_tokenizers_round_trip_through_auto_tokenizer(tokenizers):
    bpe = AutoTokenizer.from_pretrained(tokenizers["bpe"])
    text = "the calm fox hunts near the river."
    assert bpe.decode(bpe(text).input_ids) == text  # byte-level: lossless
    assert bpe.eos_token == "<|endoftext|>"
    wp = AutoTokenizer.from_pretrained(tokenizers["wordpiece"])
    ids = wp(text).input_ids
    assert ids[0] == wp.cls_token_id and ids[-1] == wp.sep_token_id
    assert wp.mask_token == "[MASK]" and wp.pad_token == "[PAD]"
    assert wp.unk_token_id not in ids  # the corpus vocabulary is covered


def test_tokenizer_refuses_to_overwrite(tokenizers, corpus):
    with pytest.raises(raylm.ConfigError, match="overwrite=true") as err:
        raylm.run(
            "tokenizer",
            [f"data.train_files=[{corpus['train']}]", f"tokenizer.path={tokenizers['bpe']}"],
        )
    assert err.value.key == "tokenizer.path"


def test_every_file_format_gives_the_same_documents(tmp_path):
    import datasets

    docs = documents(20, seed=3)
    (tmp_path / "c.txt").write_text("\n\n".join(docs) + "\n")
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in docs))
    pd.DataFrame({"body": docs}).to_csv(tmp_path / "c.csv", index=False)
    pd.DataFrame({"body": docs}).to_parquet(tmp_path / "c.parquet")
    datasets.Dataset.from_dict({"body": docs}).save_to_disk(str(tmp_path / "saved"))
    assert load_text_dataset([str(tmp_path / "c.txt")], "body")["body"] == docs
    for name in ("c.jsonl", "c.csv", "c.parquet", "saved"):
        assert load_text_dataset([str(tmp_path / name)], "body")["body"] == docs, name


def test_empty_rows_are_dropped(tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text(
        '{"text": "the red ship sails."}\n{"text": ""}\n{"text": "   "}\n{"text": "the owl."}\n'
    )
    assert load_text_dataset([str(f)], "text")["text"] == ["the red ship sails.", "the owl."]


def test_causal_packing_keeps_every_token_in_order(tokenizers):
    tok = AutoTokenizer.from_pretrained(tokenizers["bpe"])
    docs = documents(30, seed=4)
    blocks = pack_causal({"text": np.array(docs)}, str(tokenizers["bpe"]), "text", 32)["input_ids"]
    stream = [t for d in docs for t in [*tok(d).input_ids, tok.eos_token_id]]
    assert blocks.shape[1] == 32 and blocks.shape[0] == len(stream) // 32
    assert blocks.reshape(-1).tolist() == stream[: blocks.size]


def test_masked_packing_frames_blocks(tokenizers):
    tok = AutoTokenizer.from_pretrained(tokenizers["wordpiece"])
    blocks = pack_masked(
        {"text": np.array(documents(30, seed=5))}, str(tokenizers["wordpiece"]), "text", 24
    )["input_ids"]
    assert (blocks[:, 0] == tok.cls_token_id).all() and (blocks[:, -1] == tok.sep_token_id).all()


def test_nsp_pairs_are_consecutive_or_random(tokenizers):
    tok = AutoTokenizer.from_pretrained(tokenizers["wordpiece"])
    docs = documents(64, seed=6)
    out = pair_sentences({"text": np.array(docs)}, str(tokenizers["wordpiece"]), "text", 64, seed=0)
    labels = out["next_sentence_label"]
    assert 0.3 < labels.mean() < 0.7  # about half random
    for ids, types, mask, label in zip(
        out["input_ids"], out["token_type_ids"], out["attention_mask"], labels, strict=True
    ):
        n = int(mask.sum())
        seps = np.flatnonzero(ids[:n] == tok.sep_token_id)
        assert ids[0] == tok.cls_token_id and len(seps) == 2 and seps[-1] == n - 1
        assert (types[: seps[0] + 1] == 0).all() and (types[seps[0] + 1 : n] == 1).all()
        assert (ids[n:] == tok.pad_token_id).all()
        a = tok.decode(ids[1 : seps[0]])
        b = tok.decode(ids[seps[0] + 1 : seps[1]])
        if label == 0:  # B continues A inside one document
            assert any(f"{a} {b}" in d.lower() or (a + " " + b)[:40] in d for d in docs)
    # Same data, same seed: same pairs.
    again = pair_sentences(
        {"text": np.array(docs)}, str(tokenizers["wordpiece"]), "text", 64, seed=0
    )
    assert (again["input_ids"] == out["input_ids"]).all()


def test_mlm_masking_is_15_percent_80_10_10_and_repeatable(tokenizers):
    tok = AutoTokenizer.from_pretrained(tokenizers["wordpiece"])
    blocks = pack_masked(
        {"text": np.array(documents(400, seed=7))}, str(tokenizers["wordpiece"]), "text", 64
    )["input_ids"]
    batch = {"input_ids": torch.from_numpy(blocks)}
    batcher = get_task("mlm").batcher(tok, {"mlm_probability": 0.15, "seed": 0}, rank=0)
    out = batcher(batch, index=0, device="cpu")
    ids, inputs, labels = batch["input_ids"], out["input_ids"], out["labels"]
    chosen = labels != -100
    assert not chosen[:, 0].any() and not chosen[:, -1].any()  # [CLS] / [SEP] never masked
    rate = chosen.float().mean().item() * 64 / 62
    assert 0.13 < rate < 0.17
    assert (labels[chosen] == ids[chosen]).all()
    masked = (inputs == tok.mask_token_id) & chosen
    kept = (inputs == ids) & chosen
    n = chosen.sum().item()
    assert 0.77 < masked.sum().item() / n < 0.83
    assert 0.07 < kept.sum().item() / n < 0.13  # the 10 % left unchanged (plus random hits)
    # A pure function of the data position: same index same masks, next index new masks.
    again = batcher(batch, index=0, device="cpu")
    assert torch.equal(again["input_ids"], inputs)
    assert not torch.equal(batcher(batch, index=1, device="cpu")["input_ids"], inputs)
