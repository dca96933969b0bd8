"""Train and load tokenizers: byte-level BPE for GPT-style models, WordPiece for BERT."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from .._internal.fs import atomic_dir

GPT_SPECIAL = "<|endoftext|>"
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_tokenizer(
    texts: Iterable[str],
    kind: str,
    vocab_size: int,
    min_frequency: int = 2,
    lowercase: bool = False,
    model_max_length: int = 1024,
):
    """Train with the Rust ``tokenizers`` library and wrap as ``PreTrainedTokenizerFast``,
    so transformers' Auto classes and every later stage load it unchanged."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    if kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=[GPT_SPECIAL],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token=GPT_SPECIAL,
            eos_token=GPT_SPECIAL,
            unk_token=GPT_SPECIAL,
            model_max_length=model_max_length,
        )
    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=BERT_SPECIALS,
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            unk_token="[UNK]",
            pad_token="[PAD]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
            model_max_length=model_max_length,
        )
    raise ValueError(f"unknown tokenizer type {kind!r}")


def save_atomically(tokenizer, path: str | os.PathLike, key: str = "tokenizer.path") -> Path:
    with atomic_dir(path, key) as tmp:
        tokenizer.save_pretrained(str(tmp))
    return Path(path).resolve()


@functools.lru_cache(maxsize=4)
def load_tokenizer(path: str):
    """Cached per process: Ray Data tasks reuse worker processes, so each loads it once.
    A URI (a model directory in an object store) is read from a copy of its tokenizer
    files, fetched by whichever process needs it, on whichever node."""
    import tempfile

    from transformers import AutoTokenizer

    from .._internal.storage import fetch_tokenizer, is_uri

    if is_uri(path):
        with tempfile.TemporaryDirectory(prefix="raylm-tokenizer-") as d:
            return AutoTokenizer.from_pretrained(str(fetch_tokenizer(path, Path(d))))
    return AutoTokenizer.from_pretrained(path)


def batched_texts(ds, column: str, batch_size: int = 1000) -> Iterator[list[str]]:
    for i in range(0, len(ds), batch_size):
        yield ds[i : i + batch_size][column]
