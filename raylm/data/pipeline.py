"""Ray Data pipeline: documents -> token blocks of ``seq_len``, ready for the workers.

Tokenizing and packing run as ``map_batches`` tasks over the cluster; the result is
materialized once on the driver so its size is known (for ``trainer.epochs``) and so
each worker's shard is the same rows in the same order on every run and every restart,
which is what makes a resumed run follow the uninterrupted one.
"""

from __future__ import annotations

import re
import zlib
from typing import Any

import numpy as np

from .tokenizer import load_tokenizer

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def pack_causal(batch: dict[str, Any], tokenizer_path: str, column: str, seq_len: int) -> dict:
    """GPT-style: documents joined by EOS, cut into seq_len blocks; the tail is dropped."""
    tok = load_tokenizer(tokenizer_path)
    stream: list[int] = []
    for ids in tok(list(batch[column]), add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        stream.append(tok.eos_token_id)
    n = len(stream) // seq_len
    return {"input_ids": np.asarray(stream[: n * seq_len], dtype=np.int64).reshape(n, seq_len)}


def pack_masked(batch: dict[str, Any], tokenizer_path: str, column: str, seq_len: int) -> dict:
    """BERT-style without NSP (RoBERTa's FULL-SENTENCES): [CLS] block [SEP], documents
    joined by [SEP]. Masking happens later, per batch, on the worker."""
    tok = load_tokenizer(tokenizer_path)
    body = seq_len - 2
    stream: list[int] = []
    for ids in tok(list(batch[column]), add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        stream.append(tok.sep_token_id)
    n = len(stream) // body
    blocks = np.asarray(stream[: n * body], dtype=np.int64).reshape(n, body)
    cls = np.full((n, 1), tok.cls_token_id, dtype=np.int64)
    sep = np.full((n, 1), tok.sep_token_id, dtype=np.int64)
    return {"input_ids": np.concatenate([cls, blocks, sep], axis=1)}


def _take(sentences: list[list[int]], start: int, limit: int) -> tuple[list[int], int]:
    """At least one sentence from ``start``, then more while they fit in ``limit`` tokens."""
    out: list[int] = []
    i = start
    while i < len(sentences) and (not out or len(out) + len(sentences[i]) <= limit):
        out.extend(sentences[i])
        i += 1
    return out, i


def pair_sentences(
    batch: dict[str, Any], tokenizer_path: str, column: str, seq_len: int, seed: int
) -> dict:
    """BERT's next-sentence pairs: segment A is consecutive sentences of a document,
    segment B the sentences that follow it (label 0) or, half the time, sentences from
    another document of the batch (label 1), as in ``BertForPreTraining``."""
    tok = load_tokenizer(tokenizer_path)
    texts = list(batch[column])
    # Seeded from the batch's content: the same data gives the same pairs on every run.
    rng = np.random.default_rng([seed, zlib.crc32("\x00".join(texts[:4]).encode())])
    docs = [
        tok([s for s in _SENTENCE_END.split(t) if s], add_special_tokens=False)["input_ids"]
        for t in texts
    ]
    docs = [d for d in docs if d]
    budget = seq_len - 3  # [CLS] A [SEP] B [SEP]
    rows: dict[str, list] = {
        "input_ids": [],
        "token_type_ids": [],
        "attention_mask": [],
        "next_sentence_label": [],
    }
    for di, sents in enumerate(docs):
        i = 0
        while i < len(sents):
            a, j = _take(sents, i, budget // 2)
            if j < len(sents) and (len(docs) < 2 or rng.random() >= 0.5):
                b, next_i = _take(sents, j, budget - len(a))
                label = 0
            elif len(docs) >= 2:
                other = int(rng.integers(len(docs) - 1))
                other += other >= di
                b, _ = _take(docs[other], int(rng.integers(len(docs[other]))), budget - len(a))
                label, next_i = 1, j
            else:
                break
            while len(a) + len(b) > budget:  # truncate the longer segment, as BERT does
                (a if len(a) > len(b) else b).pop()
            ids = [tok.cls_token_id, *a, tok.sep_token_id, *b, tok.sep_token_id]
            pad = seq_len - len(ids)
            rows["input_ids"].append(ids + [tok.pad_token_id] * pad)
            rows["token_type_ids"].append([0] * (len(a) + 2) + [1] * (len(b) + 1) + [0] * pad)
            rows["attention_mask"].append([1] * len(ids) + [0] * pad)
            rows["next_sentence_label"].append(label)
            i = next_i
    out = {
        k: np.asarray(v, dtype=np.int64).reshape(-1, seq_len)
        for k, v in rows.items()
        if k != "next_sentence_label"
    }
    out["next_sentence_label"] = np.asarray(rows["next_sentence_label"], dtype=np.int64)
    return out


def to_ray_dataset(hf_dataset, rows_per_block: int):
    """A ``datasets.Dataset`` as a Ray Dataset of several blocks (so map_batches runs in
    parallel), straight from its Arrow table: ``ray.data.from_huggingface`` first looks
    for the data on the Hugging Face Hub, which costs tens of seconds with no network."""
    import ray.data

    table = hf_dataset.flatten_indices().data.table
    return ray.data.from_arrow(
        [table.slice(i, rows_per_block) for i in range(0, len(table), rows_per_block)] or [table]
    )


def build_dataset(hf_dataset, c: dict[str, Any], split: str = "train"):
    """Documents (a ``datasets.Dataset``) -> a materialized Ray Dataset of training rows,
    encoded by the task's encoder (:meth:`raylm.tasks.Task.encoder`)."""
    import ray.data

    from ..tasks import get_task

    task = get_task(c["task"])
    data, tr = c["data"], c["trainer"]
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    batch_size = data["preprocess_batch_size"]
    ds = to_ray_dataset(hf_dataset, rows_per_block=max(batch_size, 1) * 4)
    kwargs = {
        "tokenizer_path": c["tokenizer_path"],
        "column": data["text_column"],
        "seq_len": tr["seq_len"],
        **task.encoder_kwargs(c),
    }
    return ds.map_batches(
        task.encoder(), fn_kwargs=kwargs, batch_size=batch_size, batch_format="numpy"
    ).materialize()
