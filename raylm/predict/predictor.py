"""Per-actor models for ``map_batches``: loaded once per actor, called per batch.

Stateful classes, so Ray Data runs them on an actor pool and each replica loads the
model once. The same classes answer single requests (``probabilities``, ``tag``), so
every caller that wants a model's predictions gets them computed one way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..data.tagged import spans


class _Predictor:
    """Tokenizer + model of a fine-tuned directory, on the GPU when asked and present,
    with the runtime its artifact records (:mod:`raylm.models.runtime`)."""

    task = ""

    def __init__(
        self,
        model_dir: str,
        text_column: str = "text",
        max_length: int | None = None,
        use_gpu: bool = False,
    ):
        import transformers

        from ..models import max_input_length
        from ..models.runtime import load_for_inference

        self.device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = load_for_inference(model_dir, self.task, self.device)
        self.device = str(getattr(self.model, "device", self.device))
        config = self.model.config
        self.labels = [config.id2label[i] for i in range(config.num_labels)]
        self.text_column = text_column
        self.max_length = max_length or max_input_length(config)


class Classifier(_Predictor):
    """Sequence classification of a batch of texts -> label, score, one probability column
    per label."""

    task = "seq_cls"

    @torch.inference_mode()
    def probabilities(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer(
            texts, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt"
        ).to(self.device)
        return torch.softmax(self.model(**enc).logits.float(), dim=-1).cpu().numpy()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        texts = [str(t) for t in batch[self.text_column]]
        probs = self.probabilities(texts)
        best = probs.argmax(-1)
        out = {
            self.text_column: np.asarray(texts, dtype=object),
            "label": np.asarray([self.labels[i] for i in best], dtype=object),
            "score": probs[np.arange(len(texts)), best],
        }
        for i, name in enumerate(self.labels):
            out[f"prob_{name}"] = probs[:, i]
        return out


def as_words(value) -> list[str]:
    """A row's words: a list as given, or a string split on whitespace."""
    if isinstance(value, str):
        return value.split()
    return [str(w) for w in value]


class Tagger(_Predictor):
    """Token classification of word lists (or whitespace-split strings) -> one BIO tag and
    its probability per word, and the entity spans those tags make.

    A word's prediction is its first subword's, as in training. Words past the model's
    window (``max_length`` subwords) get ``O`` with score 0.
    """

    task = "token_cls"

    @torch.inference_mode()
    def tag(self, rows: list[list[str]]) -> list[tuple[list[str], list[float]]]:
        enc = self.tokenizer(
            rows,
            is_split_into_words=True,
            truncation=True,
            max_length=self.max_length,
            padding=True,
            return_tensors="pt",
        )
        probs = torch.softmax(self.model(**enc.to(self.device)).logits.float(), -1).cpu()
        out = []
        for i, words in enumerate(rows):
            tags, scores = ["O"] * len(words), [0.0] * len(words)
            seen = set()
            for pos, w in enumerate(enc.word_ids(i)):
                if w is None or w in seen:
                    continue
                seen.add(w)
                score, best = probs[i, pos].max(-1)
                tags[w], scores[w] = self.labels[int(best)], float(score)
            out.append((tags, scores))
        return out

    def __call__(self, batch: dict[str, Any]):
        import pandas as pd

        rows = [as_words(v) for v in batch[self.text_column]]
        tagged = self.tag(rows) if rows else []
        return pd.DataFrame(
            {
                self.text_column: [
                    v if isinstance(v, str) else list(words)
                    for v, words in zip(batch[self.text_column], rows, strict=True)
                ],
                "tags": [tags for tags, _ in tagged],
                "scores": [scores for _, scores in tagged],
                "entities": [
                    entities(words, tags) for words, (tags, _) in zip(rows, tagged, strict=True)
                ],
            }
        )


def entities(words: list[str], tags: list[str]) -> list[dict[str, Any]]:
    """Entity spans as ``{type, start, end, text}``, word indices with ``end`` exclusive."""
    return [
        {"type": kind, "start": s, "end": e, "text": " ".join(words[s:e])}
        for kind, s, e in spans(tags)
    ]


class FillMasker(_Predictor):
    """Masked-LM candidates for each mask token of each text."""

    task = "mlm"

    @torch.inference_mode()
    def fill(self, texts: list[str], top_k: int) -> list[list[list[dict[str, Any]]]]:
        """Per text, per mask position (in order): the ``top_k`` tokens and probabilities."""
        enc = self.tokenizer(
            texts, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt"
        ).to(self.device)
        logits = self.model(**enc).logits.float()
        masks = enc["input_ids"] == self.tokenizer.mask_token_id
        out = []
        for i in range(len(texts)):
            positions = masks[i].nonzero().flatten().tolist()
            probs = torch.softmax(logits[i, positions], -1).cpu()
            top = probs.topk(min(top_k, probs.shape[-1]), -1)
            out.append(
                [
                    [
                        {"token": self.tokenizer.convert_ids_to_tokens(int(t)), "score": float(p)}
                        for p, t in zip(top.values[j], top.indices[j], strict=True)
                    ]
                    for j in range(len(positions))
                ]
            )
        return out


def predictor_class(task: str):
    """The class that predicts for ``task`` (:attr:`raylm.tasks.Task.predictor`)."""
    import importlib

    from ..tasks import get_task

    module, _, name = get_task(task).predictor.partition(":")
    return getattr(importlib.import_module(module), name)
