"""Text generation from a causal LM, one token at a time so it can be streamed.

The loop is transformers' own sampling, written out: the same logits warpers
(temperature, top-k, top-p) over a KV cache, drawn from a ``torch.Generator`` seeded per
request, so a request with a seed gives the same text every time and on every replica.
Temperature 0 is greedy and equals ``model.generate(do_sample=False)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import dataclass

import torch

# Below this a temperature is greedy decoding: its limit, and logits divided by a
# subnormal temperature overflow to inf and sample NaN (found by the serve fuzz test).
GREEDY_BELOW = 1e-6


@dataclass
class Sampling:
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None


class Generator:
    def __init__(self, model_dir: str, use_gpu: bool = False):
        from transformers import AutoTokenizer

        from ..models import max_input_length
        from ..models.runtime import load_for_inference

        self.device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = load_for_inference(model_dir, "clm", self.device)
        self.max_length = max_input_length(self.model.config)
        # transformers 5 renamed the KV cache argument (and output field) to ``cache``.
        params = inspect.signature(self.model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"

    def _warpers(self, s: Sampling):
        from transformers.generation.logits_process import (
            LogitsProcessorList,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        warpers = LogitsProcessorList()
        if s.temperature < GREEDY_BELOW:
            return warpers  # greedy: argmax, no warping
        if s.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(s.temperature))
        if s.top_k:
            warpers.append(TopKLogitsWarper(s.top_k))
        if s.top_p < 1.0:
            warpers.append(TopPLogitsWarper(s.top_p))
        return warpers

    @torch.inference_mode()
    def token_ids(self, prompt: str, s: Sampling) -> Iterator[int]:
        """New token ids, one per step, until EOS or max_new_tokens (or the model's window)."""
        ids = self.tokenizer(prompt, return_tensors="pt")["input_ids"].to(self.device)
        ids = ids[:, -(self.max_length - 1) :]  # keep room for at least one new token
        steps = min(s.max_new_tokens, self.max_length - ids.shape[1])
        gen = torch.Generator(device=self.device)
        gen.manual_seed(s.seed if s.seed is not None else torch.seed())
        warpers = self._warpers(s)
        past, inputs = None, ids
        for _ in range(steps):
            out = self.model(input_ids=inputs, use_cache=True, **{self.cache_arg: past})
            past, logits = getattr(out, self.cache_arg), out.logits[:, -1, :].float()
            if s.temperature < GREEDY_BELOW:
                token = logits.argmax(-1, keepdim=True)
            else:
                probs = torch.softmax(warpers(ids, logits), -1)
                token = torch.multinomial(probs, 1, generator=gen)
            ids = torch.cat([ids, token], dim=1)
            yield int(token)
            if int(token) == self.tokenizer.eos_token_id:
                return
            inputs = token

    def stream(self, prompt: str, s: Sampling) -> Iterator[str]:
        """Text pieces as they are decided: each is the growth of the decoded text, so
        byte-level tokens that only form a character together come out as one piece."""
        new: list[int] = []
        text = ""
        for token in self.token_ids(prompt, s):
            if token == self.tokenizer.eos_token_id:
                break
            new.append(token)
            decoded = self.tokenizer.decode(new, skip_special_tokens=True)
            if decoded.endswith("\ufffd"):
                continue  # an incomplete UTF-8 sequence: wait for the rest
            yield decoded[len(text) :]
            text = decoded
        rest = self.tokenizer.decode(new, skip_special_tokens=True)[len(text) :]
        if rest:
            yield rest

    def generate(self, prompt: str, s: Sampling) -> str:
        return "".join(self.stream(prompt, s))
