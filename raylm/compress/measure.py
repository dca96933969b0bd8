"""Measure a model directory the same way whatever made it: parameters, weight bytes on
disk, forward latency at fixed batch sizes with a stated thread count, throughput, and
the task's metric on the eval rows.

It runs as one Ray task per model with ``num_cpus`` equal to the thread count, so models
are timed one after another on an otherwise idle slot, on the cluster that will serve
them. Latency is the model's forward pass on real eval rows, each batch cut to its
longest real row (as a server pads a batch), not the tokenizer or HTTP.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..models.artifact import RUNTIME_WEIGHTS, Artifact
from ..tasks import get_task

# Row keys the model gets at inference; the rest (labels, NSP labels) only score.
INFERENCE_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def encode_rows(c: dict[str, Any], docs) -> dict[str, np.ndarray]:
    """Documents -> the task's rows (numpy), encoded as training encodes them."""
    task = get_task(c["task"])
    encode = task.encoder()
    data, tr = c["data"], c["trainer"]
    parts = []
    step = 256
    for i in range(0, len(docs), step):
        chunk = docs[i : i + step]
        parts.append(
            encode(
                chunk,
                tokenizer_path=c["tokenizer_path"],
                column=data["text_column"],
                seq_len=tr["seq_len"],
                **task.encoder_kwargs(c),
            )
        )
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def weight_bytes(model_dir: str | Path) -> int:
    artifact = Artifact.read(model_dir)
    runtime = artifact.runtime if artifact else "torch"
    return sum(
        f.stat().st_size
        for pattern in RUNTIME_WEIGHTS[runtime]
        for f in Path(model_dir).glob(pattern)
    )


def count_parameters(model) -> int:
    if isinstance(model, torch.nn.Module):
        return sum(p.numel() for p in model.parameters())
    # ONNX: weights are initializers; quantized ones also carry per-tensor scale and zero
    # point scalars, which are not parameters of the model.
    import onnx

    graph = onnx.load(model.path, load_external_data=False).graph
    return sum(
        int(np.prod(t.dims)) for t in graph.initializer if len(t.dims) and np.prod(t.dims) > 1
    )


def composition(model) -> dict[str, int]:
    """What the bytes are: for ONNX, how many are int8 weights; for torch, how many
    parameters are embeddings (which neither fewer layers nor pruning make smaller)."""
    if isinstance(model, torch.nn.Module):
        embedding = sum(
            p.numel()
            for m in model.modules()
            if isinstance(m, torch.nn.Embedding)
            for p in m.parameters(recurse=False)
        )
        return {"embedding_parameters": embedding}
    import onnx

    graph = onnx.load(model.path, load_external_data=False).graph
    int8 = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
    return {
        "int8_weight_bytes": sum(
            int(np.prod(t.dims)) for t in graph.initializer if t.data_type in int8
        )
    }


def _trim(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cut trailing columns no row uses: a batch padded to its longest row."""
    mask = batch.get("attention_mask")
    if mask is None:
        return batch
    width = int(mask.sum(1).max())
    return {k: (v[:, :width].contiguous() if v.dim() == 2 else v) for k, v in batch.items()}


@torch.inference_mode()
def evaluate_rows(model, task_name: str, rows: dict[str, np.ndarray], labels, tokenizer, c):
    """The task's loss (where the runtime gives one) and scores over the eval rows."""
    task = get_task(task_name)
    batcher = task.batcher(tokenizer, c["trainer"], rank=0)
    scorer = task.scorer(labels, "cpu")
    n = len(next(iter(rows.values())))
    size = c["trainer"]["micro_batch_size"]
    losses = []
    for i, start in enumerate(range(0, n, size)):
        batch = {k: torch.tensor(v[start : start + size]) for k, v in rows.items()}
        inputs = _trim(batcher(batch, -(i + 1), "cpu"))
        out = model(**inputs)
        if getattr(out, "loss", None) is not None:
            losses.append(float(task.loss(out, inputs)))
        if scorer:
            scorer.update(inputs, out)
    metrics: dict[str, Any] = {}
    if losses:
        mean = sum(losses) / len(losses)
        metrics.update({"eval_loss": mean, **task.loss_metrics(mean)})
    if scorer:
        metrics.update(scorer.result())
    return metrics


@torch.inference_mode()
def latency_ms(model, rows: dict[str, np.ndarray], batch_size: int, repeats: int) -> float:
    """Median wall time of one forward pass over ``batch_size`` eval rows."""
    n = len(rows["input_ids"])
    take = np.arange(batch_size) % n  # fewer eval rows than the batch: repeat them
    batch = _trim({k: torch.from_numpy(rows[k][take]) for k in INFERENCE_KEYS if k in rows})
    for _ in range(2):
        model(**batch)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model(**batch)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def measure_model(
    model_dir: str, task_name: str, rows: dict[str, np.ndarray], c: dict[str, Any]
) -> dict[str, Any]:
    """Everything the report compares, for one model directory."""
    from transformers import AutoTokenizer

    from .._internal.logs import quiet_libraries
    from ..models.runtime import load_for_inference

    quiet_libraries(c["ray"]["verbose"])
    report = c["compress"]["report"]
    torch.set_num_threads(report["threads"])
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = load_for_inference(model_dir, task_name, "cpu")
    artifact = Artifact.read(model_dir)
    labels = artifact.labels if artifact else None
    eval_rows = rows
    if report["max_eval_rows"]:
        eval_rows = {k: v[: report["max_eval_rows"]] for k, v in rows.items()}
    latency = {str(b): latency_ms(model, rows, b, report["repeats"]) for b in report["batch_sizes"]}
    biggest = max(report["batch_sizes"])
    return {
        "model_dir": str(model_dir),
        "runtime": artifact.runtime if artifact else "torch",
        "parameters": count_parameters(model),
        "composition": composition(model),
        "size_bytes": weight_bytes(model_dir),
        "threads": report["threads"],
        "latency_ms": latency,
        "throughput_rows_per_s": biggest / latency[str(biggest)] * 1000,
        "metrics": {
            k: v
            for k, v in evaluate_rows(model, task_name, eval_rows, labels, tokenizer, c).items()
            if isinstance(v, (int, float))
        },
    }
