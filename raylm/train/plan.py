"""Memory planning: which ZeRO stage, offload and micro-batch fit, decided before a run.

An OOM an hour into a run costs the hour; the estimate costs a meta-device model build.
Per device, a run holds model states (weights, gradients, optimizer states: what ZeRO
partitions and offloads), activations (what the micro-batch and sequence length set),
and the runtime itself. The model-state figures follow DeepSpeed's own estimators
(``estimate_zero2_model_states_mem_needs`` / ``estimate_zero3_...``, which
tests/test_plan.py checks them against) and extend them to ZeRO 0/1 and fp32; the
activation figure is Korthikanti et al. 2022 (sbh(34 + 5as/h) bytes per layer in half
precision), plus the logits and their fp32 loss.

``deepspeed=auto`` takes the first option, fastest first, whose estimate fits within
the margin. Without offload first: at the configured micro-batch, then at halves of it
with ``trainer.grad_accum`` doubled (the global batch, hence the training, stays the
same); only if none of those fits, the same again with offload.
``raylm plan <pretrain overrides>`` prints the same table and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GiB = 2**30
# What a worker holds before any model: the CUDA context and allocator slack on a GPU;
# Python, torch, Ray's worker and the data iterator on CPU (measured: about 0.8 GiB).
RUNTIME_BYTES = {"gpu": 1 * GiB, "cpu": 1 * GiB}
# DeepSpeed's estimators scale host memory by this for buffers and fragmentation.
HOST_BUFFER = 1.5


@dataclass(frozen=True)
class Option:
    """A ZeRO stage and what it offloads to host memory."""

    zero_stage: int
    offload_optimizer: bool = False
    offload_param: bool = False

    @property
    def name(self) -> str:
        off = "+offload_param" if self.offload_param else ""
        return (
            f"zero{self.zero_stage}"
            + ("+offload_optimizer" if self.offload_optimizer else "")
            + off
        )


# Fastest first: each later option trades speed (more communication, PCIe traffic) for memory.
OPTIONS = (
    Option(0),
    Option(1),
    Option(2),
    Option(3),
    Option(2, offload_optimizer=True),
    Option(3, offload_optimizer=True),
    Option(3, offload_optimizer=True, offload_param=True),
)


@dataclass(frozen=True)
class ModelShape:
    params: int
    largest_layer: int  # parameters of the largest module (what ZeRO-3 gathers at once)
    layers: int
    hidden: int
    heads: int
    vocab: int


def model_shape(task: str, model: dict[str, Any], vocab_size: int, labels=None) -> ModelShape:
    """Counted on the meta device: no memory, no weights read."""
    import torch

    from ..models.build import auto_class, base_config, build_model, load_init_config

    with torch.device("meta"):
        if model["init_from"]:
            built = auto_class(task).from_config(load_init_config(model["init_from"]))
        else:
            built = build_model(task, {**model}, vocab_size, None, labels)
    params = sum(p.numel() for p in built.parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in built.modules())
    cfg = base_config(built.config)
    return ModelShape(
        params=params,
        largest_layer=largest,
        layers=getattr(cfg, "n_layer", None) or cfg.num_hidden_layers,
        hidden=getattr(cfg, "n_embd", None) or cfg.hidden_size,
        heads=getattr(cfg, "n_head", None) or cfg.num_attention_heads,
        vocab=cfg.vocab_size,
    )


def model_states(
    option: Option, params: int, largest_layer: int, world: int, per_node: int, mixed: bool
) -> tuple[int, int]:
    """(bytes per device, host bytes per node) for weights, gradients and optimizer states.

    Bytes per parameter, mixed precision: 2 (16-bit weights) + 2 (16-bit gradients) + 16
    (fp32 gradients, fp32 master weights, Adam's two moments); fp32: 4 + 4 + 8. ZeRO-1
    partitions the 16 (or 8) over the ranks, ZeRO-2 the gradients too, ZeRO-3 everything
    (and gathers one layer at a time). Offloading moves what it names to the host."""
    w, g, part = (2, 2, 16) if mixed else (4, 4, 8)
    layer = 4 * largest_layer
    host_copy = int(params * 4 * per_node * HOST_BUFFER)  # each rank's fp32 copy at load/save
    if option.offload_param:  # ZeRO-3 only: weights live on the host too
        return layer, int(params * (w + part) * HOST_BUFFER)
    if option.offload_optimizer:
        if option.zero_stage == 3:
            return layer + params * w // world, int(params * part * HOST_BUFFER)
        return params * w, int(params * max(4 * per_node, part) * HOST_BUFFER)
    if option.zero_stage == 0:
        return params * (w + g + part), host_copy
    if option.zero_stage == 1:
        return params * (w + g) + params * part // world, host_copy
    if option.zero_stage == 2:
        return params * w + params * (g + part) // world, host_copy
    # ZeRO-3, as DeepSpeed counts it: 18 bytes a parameter partitioned (16 for fp32).
    return layer + params * (w + part) // world, int(largest_layer * 4 * per_node * HOST_BUFFER)


def activations(shape: ModelShape, micro: int, seq: int, mixed: bool, flash: bool) -> int:
    """Bytes of activations kept for the backward pass of one micro-batch."""
    elem = 2 if mixed else 4
    per_layer = seq * micro * shape.hidden * 34 * elem / 2
    if not flash:  # the attention matrix and its softmax/dropout, unless SDPA's kernels avoid it
        per_layer += 5 * shape.heads * seq * seq * micro * elem / 2
    logits = micro * seq * shape.vocab * (elem + 4 + 4)  # logits, fp32 for the loss, its grad
    return int(shape.layers * per_layer + logits)


@dataclass
class Budget:
    device_bytes: int | None  # per GPU; None on CPU, where the device is the host
    host_bytes: int  # per node, what Ray lets tasks use
    workers_per_node: int
    source: str

    def describe(self) -> str:
        dev = f"{self.device_bytes / GiB:.1f} GiB per GPU, " if self.device_bytes else ""
        return (
            f"{dev}{self.host_bytes / GiB:.1f} GiB host per node for {self.workers_per_node} "
            f"worker(s) ({self.source})"
        )


@dataclass
class Row:
    option: Option
    device_bytes: int  # per worker: model states + activations + runtime
    host_bytes: int  # per node
    fits: bool


@dataclass
class Plan:
    shape: ModelShape
    budget: Budget
    micro_batch: int
    grad_accum: int
    rows: list[Row]
    chosen: Option | None

    def table(self) -> str:
        gpu = self.budget.device_bytes is not None
        head = f"{'option':<38}{'per GPU' if gpu else 'per worker':>12}{'host/node':>12}  fits"
        lines = [
            f"model: {self.shape.params / 1e6:.1f}M parameters; micro-batch {self.micro_batch}"
            f" x grad_accum {self.grad_accum}; budget: {self.budget.describe()}",
            head,
        ]
        for r in self.rows:
            mark = "<- chosen" if r.option == self.chosen else ("yes" if r.fits else "no")
            lines.append(
                f"{r.option.name:<38}{r.device_bytes / GiB:>9.2f} GiB{r.host_bytes / GiB:>8.2f} GiB"
                f"  {mark}"
            )
        return "\n".join(lines)


def evaluate(
    shape: ModelShape,
    budget: Budget,
    world: int,
    micro: int,
    seq: int,
    mixed: bool,
    use_gpu: bool,
    margin: float,
) -> list[Row]:
    acts = activations(shape, micro, seq, mixed, flash=use_gpu and mixed)
    runtime = RUNTIME_BYTES["gpu" if use_gpu else "cpu"]
    rows = []
    per_node = budget.workers_per_node
    for option in OPTIONS:
        if world == 1 and option.zero_stage in (1, 2) and not option.offload_optimizer:
            continue  # one rank: nothing to partition, the same as ZeRO-0
        states, host = model_states(
            option, shape.params, shape.largest_layer, world, per_node, mixed
        )
        device = states + acts + runtime
        if use_gpu:
            fits = device <= budget.device_bytes * (1 - margin)
            fits = fits and host <= budget.host_bytes * (1 - margin)
        else:  # the device is the host: every worker on the node shares it
            fits = device * per_node + host <= budget.host_bytes * (1 - margin)
        rows.append(Row(option, device, host, fits))
    return rows


def make_plan(c: dict[str, Any], shape: ModelShape, budget: Budget) -> Plan:
    """Halving the micro-batch (same global batch, more accumulation) costs less than
    offloading, which streams the optimizer over PCIe every step: offload is taken only
    when no micro-batch fits without it."""
    tr, sc = c["trainer"], c["scaling"]
    world, mixed = sc["num_workers"], tr["precision"] in ("bf16", "fp16")
    micro, accum, tries = tr["micro_batch_size"], tr["grad_accum"], []
    while True:  # the configured micro-batch, then halves of it while it divides
        rows = evaluate(
            shape, budget, world, micro, tr["seq_len"], mixed, sc["use_gpu"], c["plan"]["margin"]
        )
        tries.append(Plan(shape, budget, micro, accum, rows, None))
        if micro == 1 or micro % 2:
            break
        micro, accum = micro // 2, accum * 2
    for offload_allowed in (False, True):
        for plan in tries:
            plan.chosen = next(
                (
                    r.option
                    for r in plan.rows
                    if r.fits and (offload_allowed or not r.option.offload_optimizer)
                ),
                None,
            )
            if plan.chosen:
                return plan
    return tries[-1]  # nothing fits: the smallest micro-batch tried, chosen None


def detect_budget(c: dict[str, Any]) -> Budget:
    """From ``plan.device_memory_gb`` / ``plan.host_memory_gb`` if set, else the cluster:
    Ray's ``memory`` resource of the smallest alive node (what tasks may use, the object
    store excluded) and, for GPU runs, the smallest GPU's total memory read on a GPU node."""
    import ray

    p, sc = c["plan"], c["scaling"]
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    source = "detected"
    host = min(int(n["Resources"].get("memory", 0)) for n in nodes)
    slots = max(
        int(n["Resources"].get("GPU" if sc["use_gpu"] else "CPU", 0))
        // max(sc["gpus_per_worker"] if sc["use_gpu"] else sc["cpus_per_worker"], 1e-9)
        for n in nodes
    )
    per_node = max(1, min(sc["num_workers"], int(slots) or sc["num_workers"]))
    if p["host_memory_gb"]:
        host, source = int(p["host_memory_gb"] * GiB), "plan.host_memory_gb"
    device = None
    if sc["use_gpu"]:
        if p["device_memory_gb"]:
            device, source = int(p["device_memory_gb"] * GiB), "plan.device_memory_gb"
        else:
            from .._internal.cluster import remote_task

            device = ray.get(remote_task(_gpu_memory, num_gpus=1).remote(), timeout=120)
    return Budget(device, host, per_node, source)


def _gpu_memory() -> int:
    import torch

    return int(torch.cuda.get_device_properties(0).total_memory)


def plan_run(c: dict[str, Any]) -> Plan:
    """The plan for a prepared config (``train.job.prepare``) on the connected cluster."""
    shape = model_shape(c["task"], c["model"], c["vocab_size"], c.get("labels"))
    return make_plan(c, shape, detect_budget(c))


def apply(c: dict[str, Any], plan: Plan) -> None:
    """``deepspeed=auto``: run with the plan's choice (and raylm.json records it)."""
    from ..config import ConfigError

    if plan.chosen is None:
        need = min(plan.rows, key=lambda r: r.device_bytes)
        raise ConfigError(
            "deepspeed",
            f"no ZeRO stage or offload fits: the smallest ({need.option.name}) needs "
            f"{need.device_bytes / GiB:.1f} GiB per worker and {need.host_bytes / GiB:.1f} GiB "
            f"host per node at micro-batch {plan.micro_batch}; budget {plan.budget.describe()}."
            " Lower trainer.seq_len, use trainer.precision=bf16, or add workers",
        )
    ds = {
        "zero_stage": plan.chosen.zero_stage,
        "offload_optimizer": plan.chosen.offload_optimizer,
        "offload_param": plan.chosen.offload_param,
    }
    tr = {"micro_batch_size": plan.micro_batch, "grad_accum": plan.grad_accum}
    for target in (c, c["resolved_config"]):
        target["deepspeed"].update(ds)
        target["trainer"].update(tr)
