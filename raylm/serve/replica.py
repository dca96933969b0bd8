"""The model deployment: one per served model, each replica holding the model once.

Classification, tagging and fill-mask requests go through ``@serve.batch``: requests
that arrive within ``batch_wait_s`` of each other share one tokenizer call and one
forward pass. The forward runs in a worker thread, so the replica's event loop keeps
collecting the next batch meanwhile. Generation is per request (each has its own
sampling parameters and may stream).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from ..models.artifact import model_info

_WORD = re.compile(r"\S+")


def _split(flat: list, sizes: list[int]) -> list[list]:
    out, i = [], 0
    for n in sizes:
        out.append(flat[i : i + n])
        i += n
    return out


def words_with_offsets(text: str) -> list[tuple[str, int, int]]:
    """Whitespace words and their character spans, the unit a tagger was trained on."""
    return [(m.group(), m.start(), m.end()) for m in _WORD.finditer(text)]


@serve.deployment
class ModelServer:
    def __init__(
        self,
        name: str,
        model_dir: str,
        batch_size: int = 16,
        batch_wait_s: float = 0.0,
        threads: int = 1,
    ):
        import torch
        import transformers

        from ..predict.predictor import predictor_class

        torch.set_num_threads(threads)
        transformers.utils.logging.disable_progress_bar()  # replica logs are not a terminal
        self.name = name
        self.info_ = {"name": name, **model_info(model_dir)}
        use_gpu = torch.cuda.is_available()  # the replica was given a GPU
        self.engine = predictor_class(self.info_["task"])(model_dir, use_gpu=use_gpu)
        self.info_["mask_token"] = getattr(self.engine.tokenizer, "mask_token", None)
        self.info_["vocab_size"] = len(self.engine.tokenizer)
        self.info_["device"] = self.engine.device
        self.served = {"requests": 0, "texts": 0, "forward_passes": 0}
        for method in (self.classify, self.tag, self.fill_mask):
            method.set_max_batch_size(batch_size)
            method.set_batch_wait_timeout_s(batch_wait_s)

    async def info(self) -> dict[str, Any]:
        return {**self.info_, "served": dict(self.served)}

    def _count(self, requests: int, texts: int) -> None:
        """Per replica: requests answered, texts, and forward passes they took (one per
        batch), so batching is visible in /v1/models."""
        self.served["requests"] += requests
        self.served["texts"] += texts
        self.served["forward_passes"] += 1

    @serve.batch
    async def classify(self, requests: list[list[str]]) -> list[list[dict]]:
        flat = [t for texts in requests for t in texts]
        probs = await asyncio.to_thread(self.engine.probabilities, flat)
        self._count(len(requests), len(flat))
        labels = self.engine.labels
        rows = [
            {
                "label": labels[int(p.argmax())],
                "score": float(p.max()),
                "probabilities": {name: float(x) for name, x in zip(labels, p, strict=True)},
            }
            for p in probs
        ]
        return _split(rows, [len(r) for r in requests])

    @serve.batch
    async def tag(self, requests: list[list[str]]) -> list[list[dict]]:
        from ..data.tagged import spans

        texts = [t for r in requests for t in r]
        words = [words_with_offsets(t) for t in texts]
        tagged = await asyncio.to_thread(self.engine.tag, [[w for w, _, _ in ws] for ws in words])
        self._count(len(requests), len(texts))
        rows = []
        for text, ws, (tags, scores) in zip(texts, words, tagged, strict=True):
            tokens = [
                {"word": w, "tag": tag, "score": score, "start": s, "end": e}
                for (w, s, e), tag, score in zip(ws, tags, scores, strict=True)
            ]
            entities = [
                {
                    "type": kind,
                    "text": text[ws[a][1] : ws[b - 1][2]],
                    "start": ws[a][1],
                    "end": ws[b - 1][2],
                    "score": min(scores[a:b]),
                }
                for kind, a, b in spans(tags)
            ]
            rows.append({"entities": entities, "tokens": tokens})
        return _split(rows, [len(r) for r in requests])

    @serve.batch
    async def fill_mask(self, requests: list[tuple[list[str], int]]) -> list[list]:
        texts = [t for r, _ in requests for t in r]
        top_k = max(k for _, k in requests)
        filled = await asyncio.to_thread(self.engine.fill, texts, top_k)
        self._count(len(requests), len(texts))
        per_request = _split(filled, [len(r) for r, _ in requests])
        return [
            [[cands[:k] for cands in text] for text in rows]
            for rows, (_, k) in zip(per_request, requests, strict=True)
        ]

    async def generate(self, prompt: str, sampling: dict) -> str:
        from ..predict.generator import Sampling

        return await asyncio.to_thread(self.engine.generate, prompt, Sampling(**sampling))

    async def generate_stream(self, prompt: str, sampling: dict) -> AsyncIterator[str]:
        """Text pieces as they are made; the sampling loop runs in a thread, one step per
        hop, so other requests on this replica are served between tokens."""
        from ..predict.generator import Sampling

        pieces = self.engine.stream(prompt, Sampling(**sampling))
        done = object()
        while (piece := await asyncio.to_thread(next, pieces, done)) is not done:
            yield piece


class InProcess:
    """A :class:`ModelServer` built in the caller's own process, called as its
    ``DeploymentHandle`` would be (``await h.classify.remote(...)``, ``h.options(stream=
    True).generate_stream.remote(...)``): a one-model app answers without a Ray hop."""

    def __init__(self, **engine: Any):
        self.server = ModelServer.func_or_class(**engine)

    def options(self, **_: Any) -> InProcess:
        return self

    def __getattr__(self, method: str) -> _Call:
        return _Call(getattr(self.server, method))


class _Call:
    def __init__(self, method):
        self.remote = method  # a coroutine function, or an async generator function
