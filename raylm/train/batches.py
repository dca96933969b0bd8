"""Turn a Ray Data batch into model inputs for each task, on the worker.

MLM masking (15 %, 80/10/10) is drawn here rather than in preprocessing, so each epoch
sees new masks. The generator is seeded from (seed, rank, micro-batch index), which
makes the masks a pure function of the data position: a resumed run draws the same.
"""

from __future__ import annotations

from typing import Any

import torch


class Batcher:
    def __init__(self, task: str, tokenizer, mlm_probability: float, seed: int, rank: int):
        self.task = task
        self.seed = seed
        self.rank = rank
        self.generator = torch.Generator()
        if task in ("mlm", "mlm_nsp"):
            from transformers import DataCollatorForLanguageModeling

            self.collator = DataCollatorForLanguageModeling(
                tokenizer, mlm_probability=mlm_probability
            )
            self.collator.generator = self.generator
            self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)))

    def __call__(self, batch: dict[str, torch.Tensor], index: int, device) -> dict[str, Any]:
        ids = batch["input_ids"].long()
        if self.task in ("seq_cls", "token_cls"):
            keys = ("input_ids", "attention_mask", "labels")
            return {k: batch[k].long().to(device) for k in keys}
        if self.task == "clm":
            return {"input_ids": ids.to(device), "labels": ids.to(device)}
        self.generator.manual_seed(hash((self.seed, self.rank, index)) & 0x7FFF_FFFF_FFFF_FFFF)
        special = torch.isin(ids, self.special_ids)
        inputs, labels = self.collator.torch_mask_tokens(ids.clone(), special_tokens_mask=special)
        out = {"input_ids": inputs, "labels": labels}
        if self.task == "mlm_nsp":
            out["token_type_ids"] = batch["token_type_ids"].long()
            out["attention_mask"] = batch["attention_mask"].long()
            out["next_sentence_label"] = batch["next_sentence_label"].long()
        return {k: v.to(device) for k, v in out.items()}
