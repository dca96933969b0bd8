"""Export: the trained engine -> ``output_dir/model``, a standard ``save_pretrained`` dir.

The directory is written under a temp name, reloaded with the task's transformers Auto
class, and compared on one forward pass with the engine that trained it; only a match
is renamed into place, so ``model/`` is either a verified model or absent.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from .._internal.fs import atomic_dir
from ..models import auto_class, max_input_length
from ..models.artifact import Artifact


class ExportMismatchError(RuntimeError):
    """The reloaded model does not reproduce the trained model's outputs."""


def _logits(output) -> torch.Tensor:
    logits = getattr(output, "logits", None)
    return (logits if logits is not None else output.prediction_logits).float().cpu()


def probe_inputs(vocab: int, seq_len: int, seed: int = 1234) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (2, min(seq_len, 32)), generator=gen)


@torch.no_grad()
def export_model(
    engine,
    task: str,
    tokenizer,
    out_dir: str | Path,
    artifact: Artifact,
    zero_stage: int,
    atol: float,
) -> Path | None:
    """Collective: every rank must call it. Returns the model dir on rank 0, else None."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    module = engine.module
    was_training = module.training
    module.eval()
    probe = probe_inputs(len(tokenizer), max_input_length(module.config))
    # Forward through the engine's own module: under ZeRO-3 every rank takes part in
    # gathering the partitioned weights, so this is the trained model as DeepSpeed holds it.
    expected = _logits(module(input_ids=probe.to(engine.device)))
    state_dict = engine._zero3_consolidated_16bit_state_dict() if zero_stage == 3 else None
    module.train(was_training)
    if rank != 0:
        return None

    with atomic_dir(out_dir) as tmp:
        if state_dict is None:
            state_dict = {k: v.detach().cpu() for k, v in module.state_dict().items()}
        if not state_dict or any(v.numel() == 0 for v in state_dict.values()):
            raise ExportMismatchError(
                "gathered state dict is empty; ZeRO-3 weights were not collected"
            )
        module.save_pretrained(str(tmp), state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        # Same device as the trained forward: a bf16/fp16 model's logits on the CPU differ
        # from the GPU's by more than atol (other kernels, other rounding), not by a bug.
        reloaded = auto_class(task).from_pretrained(str(tmp)).to(engine.device).eval()
        got = _logits(reloaded(input_ids=probe.to(engine.device)))
        del reloaded
        max_diff = float((got - expected).abs().max())
        if not torch.allclose(got, expected, atol=atol, rtol=0):
            raise ExportMismatchError(
                f"exported model's logits differ from the trained model's by {max_diff:.3g} (> {atol})"
            )
        check = {
            "max_abs_logit_diff": max_diff,
            "atol": atol,
            "auto_class": auto_class(task).__name__,
        }
        artifact.replace(export_check=check).write(tmp)
    return Path(out_dir)
