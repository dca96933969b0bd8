"""Causal language modelling (GPT-style): predict each next token of packed text."""

from __future__ import annotations

from typing import Any

from ..config.errors import ConfigError
from .base import Task, register_task


class _ClmBatcher:
    def __call__(self, batch, index: int, device) -> dict[str, Any]:
        ids = batch["input_ids"].long().to(device)
        return {"input_ids": ids, "labels": ids}  # transformers shifts the labels itself


@register_task
class CausalLM(Task):
    name = "clm"
    auto_class = "AutoModelForCausalLM"
    architectures = ("ForCausalLM", "LMHeadModel")
    families = ("gpt2",)
    metrics = ("eval_loss", "eval_perplexity")
    headline_metric = "eval_perplexity"
    perplexity = True
    endpoint = "/v1/generate"
    predictor = "raylm.predict.generator:Generator"
    row_unit = "blocks of trainer.seq_len tokens"

    def encoder(self):
        from ..data.pipeline import pack_causal

        return pack_causal

    def check_tokenizer(self, tokenizer) -> None:
        if tokenizer.eos_token is None:
            raise ConfigError(
                "tokenizer.path",
                "task=clm needs a tokenizer with an end-of-text token (tokenizer.type=bpe)",
            )

    def batcher(self, tokenizer, trainer, rank):
        return _ClmBatcher()

    def distill_positions(self, inputs):
        # Every position predicts a next token, except the last (transformers' shift).
        mask = inputs["input_ids"].new_ones(inputs["input_ids"].shape, dtype=bool)
        mask[:, -1] = False
        return mask
