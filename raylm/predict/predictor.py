"""The per-actor model for ``map_batches``: loaded once per actor, called per batch."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


class Classifier:
    """Sequence classification of a batch of texts -> label, score, one probability column
    per label. Stateful so Ray Data runs it on an actor pool: the model loads once."""

    def __init__(
        self, model_dir: str, text_column: str, max_length: int | None = None, use_gpu: bool = False
    ):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = (
            AutoModelForSequenceClassification.from_pretrained(model_dir).to(self.device).eval()
        )
        self.labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]
        self.text_column = text_column
        self.max_length = (
            max_length
            or getattr(self.model.config, "max_position_embeddings", None)
            or getattr(self.model.config, "n_positions", 512)
        )

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
