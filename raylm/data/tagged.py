"""Token classification data: word lists with one BIO tag per word.

Tags are given per *word*; models see subwords. Each word's tag goes on its first
subword and every other position gets -100 (ignored by the loss), as in transformers'
``run_ner`` example, so predictions and metrics are per word and do not depend on the
tokenizer. Entities are scored at the span level (CoNLL-2000 ``conlleval``): a span
counts only if its type, start and end all match.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config.errors import ConfigError
from .labeled import pad_rows
from .tokenizer import load_tokenizer

IGNORE = -100  # the label value torch's cross-entropy skips
OUTSIDE = "O"


def check_bio(labels: list[str], key: str = "data.label_column") -> None:
    """Any tag other than O, B-TYPE, I-TYPE is an error naming it."""
    bad = [t for t in labels if t != OUTSIDE and not (t[:2] in ("B-", "I-") and len(t) > 2)]
    if bad:
        raise ConfigError(
            key, f"token_cls tags must be BIO (O, B-TYPE, I-TYPE); got {', '.join(bad[:10])}"
        )


def entity_types(labels: list[str]) -> list[str]:
    """The entity types of a BIO tag set, sorted: B-LOC, I-LOC, B-PER, O -> LOC, PER."""
    return sorted({t[2:] for t in labels if t != OUTSIDE})


def spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, start, end) word spans, end exclusive. As in conlleval, an I- that does not
    continue an entity of its type starts a new one, so no predicted word is lost."""
    out: list[tuple[str, int, int]] = []
    kind, start = None, 0
    for i, tag in enumerate([*tags, OUTSIDE]):
        prefix, _, t = tag.partition("-")
        continues = prefix == "I" and t == kind
        if kind is not None and not continues:
            out.append((kind, start, i))
            kind = None
        if prefix in ("B", "I") and not continues:
            kind, start = t, i
    return out


def check_lengths(ds, words: str, tags: str, key: str) -> None:
    """Every row needs a list of words and a tag list of the same length."""
    for i, (w, t) in enumerate(zip(ds[words], ds[tags], strict=True)):
        if not isinstance(w, list):
            raise ConfigError(
                "data.text_column",
                f"task=token_cls needs a list of words per row; row {i} of {key} "
                f"has {type(w).__name__} in {words!r}",
            )
        if not isinstance(t, list) or len(t) != len(w):
            n = len(t) if isinstance(t, list) else type(t).__name__
            raise ConfigError(
                "data.label_column",
                f"row {i} of {key} has {len(w)} words but {n} tags in {tags!r}; "
                "give one tag per word",
            )


def align(word_ids: list[int | None], word_tags: list[int]) -> list[int]:
    """Per-subword labels: the word's tag on its first subword, -100 elsewhere."""
    out, previous = [], None
    for w in word_ids:
        out.append(word_tags[w] if w is not None and w != previous else IGNORE)
        previous = w
    return out


def encode_tagging(
    batch: dict[str, Any],
    tokenizer_path: str,
    column: str,
    label_column: str,
    labels: list[str],
    seq_len: int,
) -> dict:
    """Word lists -> fixed-length ``input_ids`` / ``attention_mask`` / subword labels.
    Words past ``seq_len`` subwords are cut, as a model with that window would see them."""
    tok = load_tokenizer(tokenizer_path)
    words = [[str(w) for w in row] for row in batch[column]]
    enc = tok(words, is_split_into_words=True, truncation=True, max_length=seq_len)
    index = {name: i for i, name in enumerate(labels)}
    ids, mask = pad_rows(enc["input_ids"], seq_len, tok)
    tags = np.full_like(ids, IGNORE)
    for i, row in enumerate(enc["input_ids"]):
        word_tags = [index[str(t)] for t in batch[label_column][i]]
        tags[i, : len(row)] = align(enc.word_ids(i), word_tags)
    return {"input_ids": ids, "attention_mask": mask, "labels": tags}
