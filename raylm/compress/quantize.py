"""Quantize: int8 for CPU serving (ONNX Runtime), bf16 / fp16 weights for GPUs.

int8 runs through ONNX Runtime's dynamic quantization: the model is exported to ONNX,
its MatMul weights and embedding tables (Gather) become int8 with per-tensor scales,
and activations are quantized per batch at run time. Measured on this project's CPU
(README, ``bench/compress.py``) it was the faster int8 runtime: on a 6-layer x 384
encoder, single thread, 2.7 ms per forward against torchao's int8 dynamic 10.9 ms and
eager fp32 15.5 ms; torch.ao.quantization is deprecated. The artifact records
``runtime: onnxruntime`` and predict / serve load it through
:class:`raylm.models.runtime.OnnxRuntimeModel`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch

from .._internal.fs import atomic_dir
from ..config.errors import ConfigError
from ..models.artifact import Artifact
from ..models.runtime import ONNX_FILE, OnnxRuntimeModel
from .base import Method, StepContext, register_method

DTYPES = {"int8": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class _Logits(torch.nn.Module):
    """The model with plain tensor inputs and the logits as its one output, for export."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def export_onnx(model, path: Path, max_length: int) -> None:
    """fp32 ONNX with dynamic batch and sequence axes (torch's dynamo exporter)."""
    import warnings

    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("seq", min=1, max=max_length)
    ids = torch.ones(2, min(16, max_length), dtype=torch.long)
    # The exporter prints its progress (stdout) and its optimizer's rewrites (logging).
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for name in ("torch.onnx", "onnxscript", "onnx_ir"):
            logging.getLogger(name).setLevel(logging.ERROR)
        torch.onnx.export(
            _Logits(model.eval()),
            (ids, torch.ones_like(ids)),
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}),
            dynamo=True,
            external_data=False,
            verbose=False,
        )


def strip_metadata(path: Path) -> None:
    """Drop what torch's exporter attaches to every node (stack trace, module path, FX
    node): inference never reads it, and on a small model it outweighs the int8 weights."""
    import onnx

    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    onnx.save(model, str(path))


def quantize_int8(source: Path, out: Path, task: str) -> dict[str, Any]:
    """ONNX Runtime dynamic int8 of ``source`` into ``out/model.onnx``; the max logit
    difference to the fp32 model on a probe batch."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from ..models import max_input_length
    from ..models.runtime import load_for_inference
    from ..train.export import probe_inputs

    model = load_for_inference(source, task, "cpu")
    max_length = max_input_length(model.config)
    with tempfile.TemporaryDirectory(prefix="raylm-onnx-") as scratch:
        fp32 = Path(scratch) / "fp32.onnx"
        export_onnx(model, fp32, max_length)
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # "consider pre-processing" on every call
        try:
            quantize_dynamic(str(fp32), str(out / ONNX_FILE), weight_type=QuantType.QInt8)
        finally:
            root.setLevel(level)
    strip_metadata(out / ONNX_FILE)
    model.config.save_pretrained(str(out))
    probe = probe_inputs(model.config.vocab_size, 32)
    with torch.inference_mode():
        want = model(input_ids=probe, attention_mask=torch.ones_like(probe)).logits.float()
    got = OnnxRuntimeModel(out)(input_ids=probe, attention_mask=torch.ones_like(probe)).logits
    if got.shape != want.shape or not torch.isfinite(got).all():
        raise RuntimeError(
            f"int8 model gives logits {tuple(got.shape)}, expected {tuple(want.shape)}"
        )
    return {
        "max_abs_logit_diff": float((got - want).abs().max()),
        "argmax_agreement_on_probe": float((got.argmax(-1) == want.argmax(-1)).float().mean()),
    }


@register_method
class Quantize(Method):
    name = "quantize"
    final = True  # an ONNX or half-precision model is not trained or pruned further

    def validate(self, ctx: StepContext) -> None:
        self.check_task(ctx.task.name)
        dtype = ctx.settings(self.name)["dtype"]
        if dtype not in DTYPES:
            raise ConfigError(
                self.key("dtype"), f"must be one of {', '.join(DTYPES)}, got {dtype!r}"
            )

    def apply(self, source: Path, ctx: StepContext) -> dict[str, Any]:
        from transformers import AutoTokenizer

        from ..models.runtime import load_for_inference

        dtype = ctx.settings(self.name)["dtype"]
        source_artifact = Artifact.read(source) or Artifact(task=ctx.task.name)
        out = ctx.output_dir / self.name
        with atomic_dir(out) as tmp:
            AutoTokenizer.from_pretrained(source).save_pretrained(str(tmp))
            if dtype == "int8":
                check = quantize_int8(source, tmp, ctx.task.name)
                runtime = "onnxruntime"
                load = (
                    "raylm.models.runtime.OnnxRuntimeModel(dir) (or onnxruntime.InferenceSession"
                    f"(dir/{ONNX_FILE})); config.json and the tokenizer load with transformers"
                )
            else:
                model = load_for_inference(source, ctx.task.name, "cpu").to(DTYPES[dtype])
                model.save_pretrained(str(tmp), safe_serialization=True)
                check = {"dtype": str(DTYPES[dtype])}
                runtime = "torch"
                load = ctx.load_hint()
            entry = ctx.entry(self.name, source, check=check)
            source_artifact.replace(
                runtime=runtime,
                export_check=None,
                compression={"chain": [*ctx.chain, entry], "load": load},
            ).write(tmp)
        return entry
