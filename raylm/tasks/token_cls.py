"""Token classification (NER-style tagging): one BIO tag per word.

Each word's tag goes on its first subword; the other subwords are ignored by the loss
(see :mod:`raylm.data.tagged`), and scores are entity-level as conlleval counts them.
"""

from __future__ import annotations

from .base import Task, register_task


@register_task
class TokenClassification(Task):
    name = "token_cls"
    auto_class = "AutoModelForTokenClassification"
    architectures = ("ForTokenClassification",)
    families = ("gpt2", "bert")
    # entity-level (span) micro precision / recall / F1, and per-word tag accuracy
    metrics = ("eval_loss", "eval_f1", "eval_precision", "eval_recall", "eval_accuracy")
    default_metric = "eval_f1"
    headline_metric = "eval_f1"
    headline_mode = "max"
    labeled = True
    endpoint = "/v1/tag"
    predictor = "raylm.predict.predictor:Tagger"

    def encoder(self):
        from ..data.tagged import encode_tagging

        return encode_tagging

    def check_documents(self, ds, c, key) -> None:
        from ..data.tagged import check_lengths

        check_lengths(ds, c["data"]["text_column"], c["data"]["label_column"], key)

    def check_labels(self, labels: list[str], key: str) -> None:
        from ..data.tagged import check_bio

        check_bio(labels, key)

    def scorer(self, labels, device):
        from ..train.scoring import SpanScorer

        return SpanScorer(labels, device)

    def progress(self, metrics):
        text = super().progress(metrics)
        if "eval_f1" in metrics:
            text += f" f1 {metrics['eval_f1']:.3f}"
        return text
