"""Masked language modelling (BERT-style): ``mlm`` over packed blocks, and ``mlm_nsp``,
BERT's original MLM + next-sentence prediction over sentence pairs.

Masking (15 %, 80/10/10) is drawn per batch on the worker rather than in preprocessing,
so each epoch sees new masks. The generator is seeded from (seed, rank, micro-batch
index), which makes the masks a pure function of the data position: a resumed run draws
the same ones.
"""

from __future__ import annotations

from typing import Any

import torch

from ..config.errors import ConfigError
from .base import Task, register_task


class MaskingBatcher:
    def __init__(self, tokenizer, mlm_probability: float, seed: int, rank: int, extra=()):
        from transformers import DataCollatorForLanguageModeling

        self.seed, self.rank, self.extra = seed, rank, extra
        self.generator = torch.Generator()
        self.collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability)
        self.collator.generator = self.generator
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)))

    def __call__(self, batch, index: int, device) -> dict[str, Any]:
        ids = batch["input_ids"].long()
        # ``index`` is the batch's place in the run's one stream of batches: the same
        # masks on any number of workers (a resumed run may have another).
        self.generator.manual_seed(hash((self.seed, index)) & 0x7FFF_FFFF_FFFF_FFFF)
        special = torch.isin(ids, self.special_ids)
        inputs, labels = self.collator.torch_mask_tokens(ids.clone(), special_tokens_mask=special)
        out = {"input_ids": inputs, "labels": labels}
        out.update({k: batch[k].long() for k in self.extra})
        return {k: v.to(device) for k, v in out.items()}


@register_task
class MaskedLM(Task):
    name = "mlm"
    auto_class = "AutoModelForMaskedLM"
    architectures = ("ForMaskedLM",)
    families = ("bert",)
    metrics = ("eval_loss", "eval_perplexity")
    headline_metric = "eval_perplexity"
    perplexity = True
    endpoint = "/v1/fill-mask"
    predictor = "raylm.predict.predictor:FillMasker"
    row_unit = "blocks of trainer.seq_len tokens"
    extra_inputs: tuple[str, ...] = ()

    def encoder(self):
        from ..data.pipeline import pack_masked

        return pack_masked

    def check_tokenizer(self, tokenizer) -> None:
        if tokenizer.mask_token is None:
            raise ConfigError(
                "tokenizer.path",
                f"task={self.name} needs a tokenizer with a mask token (tokenizer.type=wordpiece)",
            )

    def batcher(self, tokenizer, trainer, rank):
        return MaskingBatcher(
            tokenizer, trainer["mlm_probability"], trainer["seed"], rank, self.extra_inputs
        )


class NspScorer:
    """Next-sentence accuracy of BERT's pretraining head, summed over ranks."""

    def __init__(self, device):
        self.counts = torch.zeros(2, dtype=torch.float64, device=device)

    def update(self, inputs: dict, output) -> None:
        pred = output.seq_relationship_logits.argmax(-1)
        self.counts[0] += (pred == inputs["next_sentence_label"]).sum()
        self.counts[1] += pred.numel()

    def result(self) -> dict[str, Any]:
        from ..train.scoring import sum_over_ranks

        correct, seen = sum_over_ranks(self.counts).tolist()
        return {"eval_nsp_accuracy": correct / max(seen, 1)}


@register_task
class MaskedLMWithNSP(MaskedLM):
    name = "mlm_nsp"
    auto_class = "AutoModelForPreTraining"
    architectures = ("ForPreTraining",)
    metrics = ("eval_loss", "eval_nsp_accuracy")
    headline_metric = "eval_loss"
    perplexity = False  # its loss adds next-sentence prediction to the MLM loss
    extra_inputs = ("token_type_ids", "attention_mask", "next_sentence_label")

    def encoder(self):
        from ..data.pipeline import pair_sentences

        return pair_sentences

    def encoder_kwargs(self, c):
        return {"seed": c["trainer"]["seed"]}

    def check_config(self, c) -> None:
        if c["trainer"]["seq_len"] < 16:
            raise ConfigError(
                "trainer.seq_len", f"must be >= 16 for mlm_nsp, got {c['trainer']['seq_len']}"
            )

    def scorer(self, labels, device):
        return NspScorer(device)
