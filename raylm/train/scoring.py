"""Task metrics beyond the loss, accumulated over eval batches and summed over ranks.
Each task (:mod:`raylm.tasks`) says which scorer it uses.

Each scorer keeps counts (never per-rank averages), so the all-reduced result is the
metric over the whole eval set whatever the number of workers.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ..data.tagged import IGNORE, entity_types, spans


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.cpu()


def _f1(precision, recall):
    return torch.where(
        precision + recall > 0,
        2 * precision * recall / (precision + recall).clamp(min=1e-12),
        torch.zeros_like(precision),
    )


def classification_metrics(confusion: torch.Tensor, labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class precision / recall from a confusion matrix whose
    rows are true labels and columns predictions."""
    confusion = confusion.double()
    tp = confusion.diag()
    predicted, actual = confusion.sum(0), confusion.sum(1)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp(min=1), torch.zeros_like(tp))
    return {
        "eval_accuracy": float(tp.sum() / confusion.sum().clamp(min=1)),
        "eval_macro_f1": float(_f1(precision, recall).mean()),
        "eval_precision": {name: float(p) for name, p in zip(labels, precision, strict=True)},
        "eval_recall": {name: float(r) for name, r in zip(labels, recall, strict=True)},
        "eval_confusion": confusion.long().tolist(),
    }


def entity_metrics(counts: torch.Tensor, types: list[str]) -> dict[str, Any]:
    """Micro precision / recall / F1 over entity spans, plus F1 per entity type, from
    ``counts[type] = (correct, predicted, gold)`` as conlleval and seqeval report them."""
    counts = counts.double()
    correct, predicted, gold = counts.sum(0)
    precision = correct / predicted if predicted else 0.0
    recall = correct / gold if gold else 0.0
    per_type = _f1(
        counts[:, 0] / counts[:, 1].clamp(min=1), counts[:, 0] / counts[:, 2].clamp(min=1)
    )
    return {
        "eval_precision": float(precision),
        "eval_recall": float(recall),
        "eval_f1": float(_f1(torch.tensor(float(precision)), torch.tensor(float(recall)))),
        "eval_entity_f1": {t: float(f) for t, f in zip(types, per_type, strict=True)},
    }


class ConfusionScorer:
    """Sequence classification: one confusion matrix over every eval row."""

    def __init__(self, labels: list[str], device):
        self.labels = labels
        self.confusion = torch.zeros(len(labels), len(labels), device=device)

    def update(self, inputs: dict, output) -> None:
        pred = output.logits.argmax(-1)
        self.confusion.index_put_(
            (inputs["labels"], pred), torch.ones_like(pred, dtype=self.confusion.dtype), True
        )

    def result(self) -> dict[str, Any]:
        return classification_metrics(sum_over_ranks(self.confusion), self.labels)


class SpanScorer:
    """Token classification: entity spans over the words (first subwords) of every row,
    and per-word tag accuracy."""

    def __init__(self, labels: list[str], device):
        self.labels = labels
        self.types = entity_types(labels)
        self.index = {t: i for i, t in enumerate(self.types)}
        self.counts = torch.zeros(len(self.types) + 1, 3, dtype=torch.float64)  # last row: words
        self.device = device

    def update(self, inputs: dict, output) -> None:
        gold_ids = inputs["labels"].cpu()
        pred_ids = output.logits.argmax(-1).cpu()
        for gold_row, pred_row in zip(gold_ids, pred_ids, strict=True):
            words = gold_row != IGNORE
            gold = [self.labels[i] for i in gold_row[words].tolist()]
            pred = [self.labels[i] for i in pred_row[words].tolist()]
            gold_spans, pred_spans = set(spans(gold)), set(spans(pred))
            for kind, *_ in pred_spans:
                self.counts[self.index[kind], 1] += 1
            for kind, *_ in gold_spans:
                self.counts[self.index[kind], 2] += 1
            for kind, *_ in gold_spans & pred_spans:
                self.counts[self.index[kind], 0] += 1
            self.counts[-1, 0] += sum(g == p for g, p in zip(gold, pred, strict=True))
            self.counts[-1, 1] += len(gold)

    def result(self) -> dict[str, Any]:
        counts = sum_over_ranks(self.counts.to(self.device))
        words_correct, words = counts[-1, 0], counts[-1, 1]
        return {
            **entity_metrics(counts[:-1], self.types),
            "eval_accuracy": float(words_correct / words.clamp(min=1)),
        }
