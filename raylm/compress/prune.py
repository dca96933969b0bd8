"""Prune: remove whole attention heads and FFN neurons, so the matrices really shrink.

Importance is Michel et al. (2019)'s: a gate of ones multiplies each head's output (and
each FFN neuron), and a unit's score is the summed ``|dL/dgate|`` of the task loss over
``importance_batches`` training batches, normalised per layer. The lowest-scoring units
across the whole model go (each layer keeps at least one head and one neuron); the
surgery is :func:`raylm.models.pruned.prune_layer`, and the result is saved as a pruned
architecture that transformers' Auto classes load once raylm is imported. Scoring runs
as a Ray task; ``recovery_steps > 0`` then fine-tunes the pruned model with the ordinary
Ray Train + DeepSpeed loop.

Why not Torch-Pruning: it prunes the modules well, but what it saves is a pickled model;
raylm's artifacts are ``save_pretrained`` directories, and the per-layer shapes have to be
in the config for any loader to rebuild them, which is :mod:`raylm.models.pruned`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._internal.cluster import remote_task
from .._internal.fs import atomic_dir
from ..config.errors import ConfigError
from ..models.artifact import Artifact
from .base import Method, StepContext, register_method


def _count(value: float, total: int, removable: int, key: str, unit: str) -> int:
    """A fraction in [0, 1) of ``total``, or a whole number of units to remove."""
    if value < 0:
        raise ConfigError(key, f"must be a fraction in (0, 1) or a number of {unit}, got {value}")
    n = round(value * total) if value < 1 else int(value)
    if value >= 1 and value != int(value):
        raise ConfigError(key, f"a number of {unit} must be whole, got {value}")
    if n > removable:
        raise ConfigError(
            key,
            f"removes {n} of {total} {unit}, but at most {removable} can go "
            "(every layer keeps at least one); use a smaller value",
        )
    return n


def _shape(config) -> tuple[list[int], list[int]]:
    """Heads and FFN neurons per layer, from a (possibly already pruned) config."""
    d = config.to_dict()
    n_layers = d.get("num_hidden_layers") or d["n_layer"]
    heads = d.get("layer_heads") or [d.get("num_attention_heads") or d["n_head"]] * n_layers
    hidden = d.get("hidden_size") or d["n_embd"]
    inner = d.get("intermediate_size") or d.get("n_inner") or 4 * hidden
    neurons = d.get("layer_intermediate") or [inner] * n_layers
    return heads, neurons


def importance(
    model_dir: str, task_name: str, rows: dict[str, np.ndarray], c: dict[str, Any]
) -> tuple[list[list[float]], list[list[float]]]:
    """Per layer, the normalised importance of each head and each FFN neuron."""
    from transformers import AutoTokenizer

    from .._internal.logs import quiet_libraries
    from ..models.pruned import layers
    from ..models.runtime import load_for_inference
    from ..tasks import get_task

    quiet_libraries(c["ray"]["verbose"])
    task = get_task(task_name)
    device = "cuda" if c["scaling"]["use_gpu"] and torch.cuda.is_available() else "cpu"
    model = load_for_inference(model_dir, task_name, device)
    model.requires_grad_(False)
    batcher = task.batcher(AutoTokenizer.from_pretrained(model_dir), c["trainer"], rank=0)
    gates = []
    for layer in layers(model):
        head_gate = torch.ones(layer.heads, device=device, requires_grad=True)
        neuron_gate = torch.ones(layer.neurons, device=device, requires_grad=True)
        size = layer.head_size

        def gate_heads(module, args, g=head_gate, size=size):
            return (args[0] * g.repeat_interleave(size),)

        def gate_neurons(module, args, g=neuron_gate):
            return (args[0] * g,)

        layer.attn_out.register_forward_pre_hook(gate_heads)
        layer.ffn_out.register_forward_pre_hook(gate_neurons)
        gates.append((head_gate, neuron_gate))
    scores = [(torch.zeros_like(h), torch.zeros_like(n)) for h, n in gates]
    size = c["trainer"]["micro_batch_size"]
    n_rows = len(rows["input_ids"])
    for i, start in enumerate(range(0, n_rows, size)):
        batch = {k: torch.tensor(v[start : start + size]) for k, v in rows.items()}
        inputs = batcher(batch, i, device)
        loss = task.loss(model(**inputs), inputs)
        grads = torch.autograd.grad(loss, [g for pair in gates for g in pair])
        for j, (h, n) in enumerate(scores):
            h += grads[2 * j].abs()
            n += grads[2 * j + 1].abs()
    # Michel et al.: normalise each layer's scores (L2), so layers compare on one scale.
    return [
        [(h / h.norm().clamp(min=1e-12)).tolist(), (n / n.norm().clamp(min=1e-12)).tolist()]
        for h, n in scores
    ]


def select(scores: list[list[float]], remove: int) -> list[list[int]]:
    """Keep-lists per layer after removing the ``remove`` lowest scores overall, each
    layer keeping at least one unit."""
    order = sorted((s, layer, i) for layer, row in enumerate(scores) for i, s in enumerate(row))
    left = [len(row) for row in scores]
    dropped: set[tuple[int, int]] = set()
    for _, layer, i in order:
        if len(dropped) == remove:
            break
        if left[layer] > 1:
            dropped.add((layer, i))
            left[layer] -= 1
    return [
        [i for i in range(len(row)) if (layer, i) not in dropped]
        for layer, row in enumerate(scores)
    ]


def surgery(source: Path, task_name: str, keep_heads, keep_neurons) -> tuple[Any, dict]:
    """``source`` with only the kept heads and neurons, as a pruned architecture, and the
    shapes and parameter counts that record it."""
    from ..models.build import auto_class
    from ..models.pruned import layers, prune_layer, pruned_class_for, pruned_config

    model = auto_class(task_name).from_pretrained(str(source)).eval()
    before = sum(p.numel() for p in model.parameters())
    for layer, h, n in zip(layers(model), keep_heads, keep_neurons, strict=True):
        prune_layer(layer, h, n)
    config = pruned_config(
        model.config, [len(h) for h in keep_heads], [len(n) for n in keep_neurons]
    )
    pruned = pruned_class_for(model)(config).eval()
    pruned.load_state_dict(model.state_dict())
    return pruned, {
        "parameters_before": before,
        "parameters_after": sum(p.numel() for p in pruned.parameters()),
        "layer_heads": config.layer_heads,
        "layer_intermediate": config.layer_intermediate,
    }


def save_pruned(
    pruned, source: Path, task_name: str, out: Path, compression: dict[str, Any] | None = None
) -> None:
    """Save to ``out`` and check that the reloaded model gives the pruned model's logits;
    raylm.json (with ``compression``) is written before the directory is renamed in."""
    from transformers import AutoTokenizer

    from ..models.build import auto_class
    from ..train.export import probe_inputs

    probe = probe_inputs(pruned.config.vocab_size, 32)
    with torch.inference_mode():
        want = pruned(input_ids=probe).logits.float()
    with atomic_dir(out) as tmp:
        pruned.save_pretrained(str(tmp), safe_serialization=True)
        AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(tmp))
        reloaded = auto_class(task_name).from_pretrained(str(tmp)).eval()
        with torch.inference_mode():
            diff = float((reloaded(input_ids=probe).logits.float() - want).abs().max())
        if diff > 1e-4:
            raise RuntimeError(f"pruned model reloads with logits off by {diff:.3g}")
        artifact = Artifact.read(source) or Artifact(task=task_name)
        artifact.replace(
            export_check={"max_abs_logit_diff": diff, "atol": 1e-4}, compression=compression
        ).write(tmp)


@register_method
class Prune(Method):
    name = "prune"
    trains = True

    def counts(self, ctx: StepContext, config) -> tuple[int, int]:
        s = ctx.settings(self.name)
        heads, neurons = _shape(config)
        n_heads = _count(
            s["heads"], sum(heads), sum(heads) - len(heads), self.key("heads"), "heads"
        )
        n_neurons = _count(
            s["neurons"], sum(neurons), sum(neurons) - len(neurons), self.key("neurons"), "neurons"
        )
        return n_heads, n_neurons

    def validate(self, ctx: StepContext) -> None:
        s = ctx.settings(self.name)
        family = getattr(ctx.teacher_config, "model_type", "")
        if family not in ("bert", "gpt2", "raylm_pruned_bert", "raylm_pruned_gpt2"):
            raise ConfigError(
                "compress.steps",
                f"prune works on BERT- and GPT-2-family models; model.init_from is {family!r}",
            )
        if self.counts(ctx, ctx.teacher_config) == (0, 0):
            raise ConfigError(
                self.key("heads"), "compress.prune.heads and .neurons are both 0: nothing to prune"
            )
        if s["importance_batches"] < 1:
            raise ConfigError(
                self.key("importance_batches"), f"must be >= 1, got {s['importance_batches']}"
            )
        if s["recovery_steps"] < 0:
            raise ConfigError(
                self.key("recovery_steps"), f"must be >= 0, got {s['recovery_steps']}"
            )

    def apply(self, source: Path, ctx: StepContext) -> dict[str, Any]:
        import ray

        from ..models.build import load_init_config
        from ..train import job as train_job
        from .measure import encode_rows

        s = ctx.settings(self.name)
        config = load_init_config(str(source))
        n_heads, n_neurons = self.counts(ctx, config)
        c = ctx.c
        loaded = copy.deepcopy(c)  # load_documents resolves the labels into it
        docs = train_job.load_documents(loaded)["train"]
        need = s["importance_batches"] * c["trainer"]["micro_batch_size"]
        rows = encode_rows(loaded, docs.select(range(min(need, len(docs)))))
        resources = {"num_cpus": c["scaling"]["cpus_per_worker"]}
        if c["scaling"]["use_gpu"]:
            resources["num_gpus"] = c["scaling"]["gpus_per_worker"]
        scores = ray.get(
            remote_task(importance, here=ctx.store.remote, **resources).remote(
                str(source), ctx.task.name, rows, c
            )
        )
        keep_heads = select([h for h, _ in scores], n_heads)
        keep_neurons = select([n for _, n in scores], n_neurons)
        entry = ctx.entry(self.name, source, removed={"heads": n_heads, "neurons": n_neurons})
        pruned, entry["pruned"] = surgery(source, ctx.task.name, keep_heads, keep_neurons)
        if not s["recovery_steps"]:
            compression = {"chain": [*ctx.chain, entry], "load": ctx.load_hint()}
            save_pruned(pruned, source, ctx.task.name, ctx.output_dir / self.name, compression)
            return entry
        pruned_dir = ctx.run_dir(self.name) / "pruned"
        save_pruned(pruned, source, ctx.task.name, pruned_dir)
        ctx.train(
            self.name,
            pruned_dir,
            entry,
            f"pruned {ctx.where(source)}",
            ctx.resume_training(self.name),
            trainer={"max_steps": s["recovery_steps"], "epochs": None},
        )
        return entry
