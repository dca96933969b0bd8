"""Labeled text for fine-tuning: the label set, held-out splits, and encoding.

Labels are stored by name (``id2label`` / ``label2id`` in the exported config), so a
model's outputs mean the same thing wherever it is loaded.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config.errors import ConfigError
from .tokenizer import load_tokenizer


def label_names(values) -> list[str]:
    """Sorted distinct labels as strings (numbers sort numerically)."""
    distinct = set(values)
    if all(isinstance(v, (int, np.integer)) for v in distinct):
        return [str(v) for v in sorted(distinct)]
    return sorted(str(v) for v in distinct)


def decode_class_labels(ds, column: str):
    """Integer ``ClassLabel`` columns (per row, or per word as in CoNLL datasets saved
    with ``save_to_disk``) -> their names, so labels are stored by name."""
    import datasets

    feature = ds.features[column]
    inner = getattr(feature, "feature", None)
    if isinstance(feature, datasets.ClassLabel):
        names = feature.names
        return ds.map(lambda v: {column: names[v]}, input_columns=column)
    if isinstance(inner, datasets.ClassLabel):
        names = inner.names
        return ds.map(lambda v: {column: [names[i] for i in v]}, input_columns=column)
    return ds


def label_values(ds, column: str) -> list:
    """A column's labels; per-word tag lists (token classification) are flattened."""
    values = ds[column]
    if values and isinstance(values[0], list):
        return [v for row in values for v in row]
    return list(values)


def check_label_values(values: list, key: str) -> None:
    """Every row has a label, and all labels are of one kind: a null would become a
    class named "None", and 1 next to "pos" two classes the user never meant."""
    missing = sum(v is None for v in values)
    if missing:
        raise ConfigError(
            key,
            f"{missing} of {len(values)} labels in data.label_column are empty (null); "
            "give every row a label or drop those rows",
        )
    kinds = {
        "number" if isinstance(v, (int, float, np.number)) else type(v).__name__ for v in values
    }
    if len(kinds) > 1:
        raise ConfigError(
            key,
            f"data.label_column mixes label types ({', '.join(sorted(kinds))}); use one "
            "type, e.g. all strings",
        )


def resolve_labels(train, eval_, column: str, given: list[str]) -> list[str]:
    """The label list: ``data.labels`` if given, else the training data's. Labels in the
    data but not in that list are an error naming them, never a silent new class."""
    for split, key in ((train, "data.train_files"), (eval_, "data.eval_files")):
        if split is not None:
            check_label_values(label_values(split, column), key)
    labels = [str(x) for x in given] or label_names(label_values(train, column))
    if len(labels) < 2:
        raise ConfigError("data.label_column", f"needs at least 2 distinct labels, found {labels}")
    known = set(labels)
    for split, key in ((train, "data.train_files"), (eval_, "data.eval_files")):
        if split is None:
            continue
        unseen = sorted({str(v) for v in label_values(split, column)} - known)
        if unseen:
            where = "data.labels" if given else "the training data"
            raise ConfigError(key, f"labels not in {where}: {', '.join(unseen[:10])}")
    return labels


def hold_out(ds, fraction: float, seed: int):
    """A fixed, seeded split of the training rows when no eval files are given."""
    parts = ds.train_test_split(test_size=fraction, seed=seed, shuffle=True)
    return parts["train"], parts["test"]


def pad_rows(rows: list[list[int]], seq_len: int, tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """Token id lists -> ``[n, seq_len]`` ids padded with the pad token (EOS for GPT-2,
    which has none) and the matching attention mask."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = np.full((len(rows), seq_len), pad, dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask


def encode_classification(
    batch: dict[str, Any],
    tokenizer_path: str,
    column: str,
    label_column: str,
    labels: list[str],
    seq_len: int,
) -> dict:
    """Texts -> fixed-length ``input_ids`` / ``attention_mask`` and label ids."""
    tok = load_tokenizer(tokenizer_path)
    enc = tok(list(batch[column]), truncation=True, max_length=seq_len)
    ids, mask = pad_rows(enc["input_ids"], seq_len, tok)
    index = {name: i for i, name in enumerate(labels)}
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": np.asarray([index[str(v)] for v in batch[label_column]], dtype=np.int64),
    }
