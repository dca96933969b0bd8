"""Sequence classification: one label per text (topic, sentiment, ...)."""

from __future__ import annotations

from .base import Task, register_task


@register_task
class SequenceClassification(Task):
    name = "seq_cls"
    auto_class = "AutoModelForSequenceClassification"
    architectures = ("ForSequenceClassification",)
    families = ("gpt2", "bert")
    metrics = ("eval_loss", "eval_accuracy", "eval_macro_f1")
    default_metric = "eval_accuracy"
    headline_metric = "eval_accuracy"
    headline_mode = "max"
    labeled = True
    custom_heads = True
    endpoint = "/v1/classify"
    predictor = "raylm.predict.predictor:Classifier"

    def encoder(self):
        from ..data.labeled import encode_classification

        return encode_classification

    def distill_positions(self, inputs):
        return None  # one row of logits per text

    def scorer(self, labels, device):
        from ..train.scoring import ConfusionScorer

        return ConfusionScorer(labels, device)

    def progress(self, metrics):
        text = super().progress(metrics)
        if "eval_accuracy" in metrics:
            text += f" acc {metrics['eval_accuracy']:.3f}"
        return text
