"""The training loop each Ray Train worker runs: one DeepSpeed engine, every task.

Read top to bottom: build -> restore -> (step, log, eval, checkpoint)* -> export.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .._internal.logs import quiet_libraries
from .._internal.storage import RunDir, fetch, is_uri
from ..config import ConfigError
from ..data.tokenizer import load_tokenizer
from ..models import build_model, flops_per_token
from ..models.artifact import ARTIFACT_FILE, Artifact
from ..tasks import Task, get_task
from .checkpoint import (
    load_checkpoint,
    needs_universal,
    save_checkpoint,
    universal_copy,
    whole_checkpoint,
)
from .data_config import TRAIN, own_batches, shard_name
from .deepspeed_config import deepspeed_config
from .export import export_model
from .metrics import (
    DIVERGED_FILE,
    METRICS_FILE,
    STOP_FILE,
    MetricsLog,
    host_memory_bytes,
    peak_flops,
    peak_memory_bytes,
)
from .objective import build_objective
from .oom import memory_kind, out_of_memory

NO_DECAY = ("bias", "LayerNorm.weight", "ln_", "layer_norm", "norm.weight")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only: biases and norms keep weight_decay 0, as in BERT and GPT-2."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            # A ZeRO-3 partitioned parameter holds an empty 1-d tensor; ds_shape is its own.
            ndim = len(getattr(p, "ds_shape", p.shape))
            (no_decay if ndim < 2 or any(k in name for k in NO_DECAY) else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def timed(iterable, clock: dict[str, float]):
    """``iterable``, adding the seconds each ``next()`` blocks to ``clock["wait"]``: the
    time the loop waits for data, which the trainer reports as ``data_wait_pct``."""
    it = iter(iterable)
    while True:
        t = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        clock["wait"] += time.perf_counter() - t
        yield item


def _all_reduce_sum(values: list[float], device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def new_window(zero: torch.Tensor) -> dict[str, Any]:
    """What the loop sums between two log steps: loss on the device (read once per log
    step: no host sync per micro-batch), micro-batches, tokens, seconds waiting for data."""
    return {"loss": zero.clone(), "n": 0, "t": time.perf_counter(), "tokens": 0, "wait": 0.0}


@torch.no_grad()
def evaluate(
    engine,
    shard,
    batcher,
    task: Task,
    micro_batch: int,
    max_batches: int,
    labels: list[str] | None = None,
) -> dict:
    """Mean task loss over up to ``max_batches`` per rank (classification: every eval
    row), reduced over ranks, plus the task's scores. Masks come from fixed indices, so
    successive evals score the same masked positions. The task's loss, not the training
    objective: a distilled student is judged as any other model is."""
    engine.eval()
    scorer = task.scorer(labels, engine.device)
    sums = [0.0, 0.0]  # loss, batches
    for i, batch in enumerate(shard.iter_torch_batches(batch_size=micro_batch)):
        if i >= max_batches and not task.eval_all_rows():
            break
        inputs = batcher(batch, -(i + 1), engine.device)
        out = engine(**inputs)
        sums[0] += float(task.loss(out, inputs))
        sums[1] += 1
        if scorer:
            scorer.update(inputs, out)
    engine.train()
    loss_sum, n = _all_reduce_sum(sums, engine.device)
    if n == 0:
        return {}
    metrics = {"eval_loss": loss_sum / n, **task.loss_metrics(loss_sum / n)}
    if scorer:
        metrics.update(scorer.result())
    return metrics


def batch_changed(saved: int | None, micro: int, grad_accum: int, world: int) -> str | None:
    """A warning line where a resumed run's global batch differs from its checkpoint's
    (another number of workers, most often), naming the ``grad_accum`` that keeps it."""
    now = micro * grad_accum * world
    if saved is None or saved == now:
        return None
    keep = saved / (micro * world)
    hint = f"; trainer.grad_accum={int(keep)} keeps it" if keep == int(keep) and keep >= 1 else ""
    return (
        f"warning: the global batch is now {now} sequences (micro-batch {micro} x "
        f"grad_accum {grad_accum} x {world} workers), the checkpoint's was {saved}{hint}"
    )


def load_best(engine, best_dir: str, state: dict, world: int, key: str) -> None:
    """The best snapshot's weights into the engine. One taken on another number of
    workers (before a resharded resume) under ZeRO-3, whose weights are partitioned by
    it, loads through a universal copy; any other, as DeepSpeed saved it. The engine's
    ``load_universal`` flag, fixed at build for the resumed checkpoint, is set per load:
    DeepSpeed reads it at each ``load_checkpoint``."""
    universal = state.get("best_world", world) != world and engine.zero_optimization_stage() == 3
    config = engine._config
    kept = config.load_universal_checkpoint
    config.load_universal_checkpoint = universal
    try:
        if universal:
            with universal_copy(best_dir, key, tag="best") as copy:
                engine.load_checkpoint(
                    str(copy.parent),
                    tag=copy.name,
                    load_optimizer_states=False,
                    load_lr_scheduler_states=False,
                )
        else:
            engine.load_checkpoint(
                best_dir, tag="best", load_optimizer_states=False, load_lr_scheduler_states=False
            )
    finally:
        config.load_universal_checkpoint = kept


def track_best(
    engine,
    state: dict,
    value: float,
    mode: str,
    step: int,
    metrics: dict,
    best_dir: str,
    patience: int,
) -> bool:
    """Snapshot the engine when ``value`` improves on the best; True means stop early.
    Collective: every rank sees the same (all-reduced) value and takes the same branch."""
    if state["best"] is None or (value > state["best"] if mode == "max" else value < state["best"]):
        world = dist.get_world_size() if dist.is_initialized() else 1
        state.update(
            best=value, best_step=step, best_metrics=dict(metrics), stale_evals=0, best_world=world
        )
        engine.save_checkpoint(best_dir, tag="best")
        return False
    state["stale_evals"] += 1
    return bool(patience) and state["stale_evals"] >= patience


def apply_hyperparameters(engine, tr: dict[str, Any]) -> None:
    """This run's lr schedule, weight decay and betas over those a loaded checkpoint's
    optimizer state brought back (DeepSpeed restores each param group's values)."""
    for i, group in enumerate(engine.optimizer.param_groups):
        group["betas"] = (tr["beta1"], tr["beta2"])
        group["weight_decay"] = tr["weight_decay"] if i == 0 else 0.0  # see param_groups
    sched = engine.lr_scheduler
    if sched is not None:
        sched.step(sched.last_batch_iteration)  # re-derive the lr at the same step


def repair_universal_load(engine, tr: dict[str, Any]) -> None:
    """Undo two flaws of DeepSpeed 0.19.8's ZeRO-3 universal load, each found by a
    2 -> 1 worker resume drifting from the uninterrupted run (3e-3 in loss by step 20)
    and gone with this: it gives every param group the first group's values (weight
    decay on biases and norms), and every group's optimizer state one shared ``step``
    tensor, which torch's AdamW then increments in place once per group per step (bias
    correction for a later step than the run is at). This run's values are the
    checkpoint's; each state gets its own step counter."""
    apply_hyperparameters(engine, tr)
    inner = getattr(engine.optimizer, "optimizer", None)
    for state in inner.state.values() if inner is not None else ():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()


def weights_checksum(engine, zero_stage: int) -> float | None:
    """Sum of |w| over the model's state dict, as DeepSpeed saves it (None under ZeRO-3,
    whose ranks hold only shards): enough to tell which checkpoint a run started from."""
    if zero_stage >= 3:
        return None
    return float(
        sum(
            t.detach().double().abs().sum()
            for t in engine.module.state_dict().values()
            if t.is_floating_point()
        )
    )


@contextmanager
def partitioned_build(ds_config: dict[str, Any]):
    """Under ZeRO-3, build the model partitioned: transformers sees DeepSpeed's config
    (``HfDeepSpeedConfig``, the way HF Trainer does it) and creates or loads each
    parameter under ``deepspeed.zero.Init``, so no rank holds the whole model in memory.
    Unset afterwards: the export reloads its check model whole."""
    if ds_config["zero_optimization"]["stage"] != 3:
        yield
        return
    import deepspeed
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    # zero.Init reads the world size from DeepSpeed's comm layer, which wraps the process
    # group Ray Train made (deepspeed.initialize would do the same, later).
    deepspeed.init_distributed()
    keep = HfDeepSpeedConfig(ds_config)  # transformers holds it by weak reference
    try:
        with freed_memory_returned():
            yield
    finally:
        unset_hf_deepspeed_config()
        del keep


@contextmanager
def freed_memory_returned():
    """zero.Init creates each parameter whole, keeps this rank's shard and frees the
    rest; glibc's malloc, adapting its thresholds to those frees, kept the freed memory in
    the process. Measured on 2 ranks, a 51M-parameter GPT (194 MiB in fp32): 300-350 MiB
    resident per rank after a partitioned build, 200 MiB after an unpartitioned one; with
    a trim threshold of 0 (every free hands the top of the heap back) and blocks over
    128 KiB mmapped (so each goes back whole when freed) 122 MiB. Afterwards
    the thresholds glibc's adaptive mode settles on (32 MiB mmap, 64 MiB trim), so training
    steps keep reusing their memory. Not glibc: nothing changes."""
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        yield
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    mallopt(m_trim_threshold, 0)
    mallopt(m_mmap_threshold, 128 * 2**10)  # glibc's starting value: large blocks mmapped
    try:
        yield
    finally:
        mallopt(m_mmap_threshold, 32 * 2**20)
        mallopt(m_trim_threshold, 64 * 2**20)


def train_loop_per_worker(cfg: dict[str, Any]) -> None:
    if not cfg["scaling"]["use_gpu"]:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # not detected with a warning
    import deepspeed
    import ray.train
    from ray.train import Checkpoint

    quiet_libraries(cfg["ray"]["verbose"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    tr, task = cfg["trainer"], get_task(cfg["task"])
    max_steps, micro = cfg["max_steps"], tr["micro_batch_size"]

    # output_dir as a path: shared by every rank. As a URI: each rank works in its node's
    # mirror of the run (see _internal.storage).
    run = RunDir(cfg["output_dir"], cfg["run_id"])
    init_from = cfg["model"]["init_from"]
    if init_from and is_uri(init_from):  # each rank fetches the model it starts from
        local = fetch(init_from, run.local / f"init_from.rank{rank}", "model.init_from")
        cfg["model"]["init_from"] = str(local)
        if cfg["tokenizer_path"] == init_from:
            cfg["tokenizer_path"] = str(local)

    # --- build: same seed on every rank -> same initial weights, no broadcast needed
    seed_everything(tr["seed"])
    tokenizer = load_tokenizer(cfg["tokenizer_path"])
    labels = cfg.get("labels")
    if labels and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # GPT-2 has none; rows are padded with EOS
    ds_config = deepspeed_config(cfg, world, max_steps)
    # Ray Train hands back the latest checkpoint after a failure or on resume. One taken
    # on another number of workers loads only through DeepSpeed's universal format, which
    # the engine must be built for.
    skipped: list[str] = []  # checkpoints not whole, said in the log and metrics
    checkpoint = whole_checkpoint(ray.train.get_checkpoint(), say=skipped.append)
    for line in skipped if rank == 0 else []:
        print(line, flush=True)
    if ray.train.get_checkpoint() and checkpoint is None:
        raise ConfigError(
            "resume",
            f"no checkpoint in {cfg['output_dir']}/checkpoints is whole; overwrite=true starts over",
        )
    reshard = bool(checkpoint) and needs_universal(checkpoint.get_metadata(), world)
    if reshard:
        ds_config["checkpoint"] = {**ds_config.get("checkpoint", {}), "load_universal": True}
    rss_before = host_memory_bytes()
    with partitioned_build(ds_config):
        model = build_model(task.name, cfg["model"], cfg["vocab_size"], tokenizer, labels)
    # Dropout draws from here on: the same stream whether the build drew on every rank or,
    # under ZeRO-3, initialized on rank 0 only and broadcast.
    seed_everything(tr["seed"] + 1)
    # What building the model cost this process in host memory (under ZeRO-3 a shard).
    build_memory = peak_memory_bytes() - rss_before if not cfg["scaling"]["use_gpu"] else None
    if init_from != cfg["model"]["init_from"]:
        shutil.rmtree(cfg["model"]["init_from"], ignore_errors=True)  # loaded: the copy goes
    engine, *_ = deepspeed.initialize(
        model=model, config=ds_config, model_parameters=param_groups(model, tr["weight_decay"])
    )
    tokens_per_micro = micro * tr["seq_len"]
    fpt = flops_per_token(model.config, tr["seq_len"])
    peak = peak_flops(tr["precision"]) if cfg["scaling"]["use_gpu"] else None

    # --- restore: the checkpoint (above) or, for a sweep trial, another run's
    # best / best_step / stale_evals follow trainer.metric; they live in the checkpointed
    # state so a restarted run keeps judging against the same best.
    state = {
        "step": 0,
        "epoch": 0,
        "batch_in_epoch": 0,
        "micro": 0,
        "tokens": 0,
        "best": None,
        "best_step": None,
        "best_metrics": {},
        "stale_evals": 0,
        "best_world": world,
        "global_batch": micro * tr["grad_accum"] * world,  # sequences per step
    }
    # As a URI, each rank snapshots its own shard into its own dir of the mirror and
    # pushes it: the store holds the union.
    best_dir = str(run.local / (f"best.rank{rank}" if run.remote else "best"))
    restored = None
    if checkpoint:
        with checkpoint.as_directory() as d:
            if reshard:
                key = f"{cfg['run_id']}-{Path(checkpoint.path).name}"
                with universal_copy(d, key) as universal:
                    state = load_checkpoint(engine, d, universal)
                repair_universal_load(engine, tr)
            else:
                state = load_checkpoint(engine, d)
        # A restart (a lost worker or node) or resume=true: said in the log and metrics.
        restored = {"resumed_step": state["step"]}
        if reshard:
            restored["resumed_from_workers"] = state["world_size"]
        if skipped:
            restored["skipped_checkpoints"] = skipped
        if rank == 0:
            was = f" (taken on {state['world_size']} workers, now {world})" if reshard else ""
            print(f"resumed from the checkpoint of step {state['step']}{was}", flush=True)
            if line := batch_changed(state.get("global_batch"), micro, tr["grad_accum"], world):
                print(line, flush=True)
        state["global_batch"] = micro * tr["grad_accum"] * world
    elif cfg.get("init_checkpoint"):
        # Another run's checkpoint (a sweep trial's own last one after a retry or resume,
        # or under PBT the better trial's it copies): its weights, optimizer and data
        # position, with this run's hyperparameters. Its best snapshot is not ours to load.
        # In an object store each rank fetches it into the node's mirror itself.
        init = cfg["init_checkpoint"]
        if is_uri(init):
            init = RunDir(init).pull("", run.local / f"init.rank{rank}")
        state = load_checkpoint(engine, init)
        if is_uri(cfg["init_checkpoint"]):
            shutil.rmtree(init, ignore_errors=True)
        state.update(best=None, best_step=None, best_metrics={}, stale_evals=0)
        apply_hyperparameters(engine, tr)
        restored = {
            "restored_from": str(cfg["init_checkpoint"]),
            "restored_step": state["step"],
            "weights_checksum": weights_checksum(engine, cfg["deepspeed"]["zero_stage"]),
        }
    log = None
    if rank == 0:
        if checkpoint:  # restarted, maybe on another node: continue the stored log
            run.pull(METRICS_FILE)
            run.pull("tensorboard")
        log = MetricsLog(run.local, state["step"] if checkpoint else None)
    if log and restored:
        log.log(state["step"], restored)
    if log and build_memory is not None:
        log.log(state["step"], {"build_host_memory_gb": build_memory / 2**30})
    bar = None
    if rank == 0 and cfg.get("progress", True):
        from ray.experimental.tqdm_ray import tqdm

        bar = tqdm(total=max_steps, desc=f"{task.name} {cfg['model']['name']}", unit="step")
        bar.update(state["step"])

    if rank == 0 and cfg.get("placement_group_file"):
        # A sweep trial stopped by its scheduler dies before Ray Train removes this run's
        # placement group; the sweep's driver removes it by this id (tune.trial).
        pg_id = ray.get_runtime_context().get_placement_group_id()
        if pg_id:
            name = cfg["placement_group_file"]
            (run.local / name).parent.mkdir(parents=True, exist_ok=True)
            (run.local / name).write_text(pg_id)
            run.push(name)

    train_data = ray.train.get_dataset_shard(TRAIN)  # every rank's: see own_batches
    eval_shard = ray.train.get_dataset_shard(shard_name("eval", rank)) if cfg["has_eval"] else None
    batcher = task.batcher(tokenizer, tr, rank)
    objective = build_objective(cfg.get("objective"), task, engine.device)
    zero = torch.zeros((), device=engine.device)
    window = new_window(zero)
    first_step = not checkpoint and not restored and cfg.get("started_at")
    last: dict[str, Any] = {}
    evals: dict[str, Any] = {}  # the latest eval's scores, in every report to Ray

    metric, patience = tr["metric"], tr["early_stopping_patience"]
    stop = False
    diverged: tuple[int, float] | None = None  # (step, loss) of a NaN / inf loss
    stopping = False  # the driver asked (SIGTERM): checkpoint this step and stop

    # --- train
    while state["step"] < max_steps and not (stop or diverged or stopping):
        batches = train_data.iter_torch_batches(
            batch_size=micro,
            drop_last=True,
            local_shuffle_buffer_size=cfg["data"]["shuffle_buffer"] or None,
            local_shuffle_seed=tr["seed"] + state["epoch"]
            if cfg["data"]["shuffle_buffer"]
            else None,
        )
        # From the position a checkpoint this run restarted from holds, if any; on
        # another number of workers too (the position counts all ranks' batches).
        epoch_start = state["micro"] - state["batch_in_epoch"]
        mine = own_batches(batches, state["batch_in_epoch"], rank, world)
        for end, batch in timed(mine, window):
            t = time.perf_counter()
            # The batch's global index keys its random masking: the same on any world size.
            inputs = batcher(batch, epoch_start + end - world + rank, engine.device)
            window["wait"] += time.perf_counter() - t  # host-to-device copy included
            try:
                loss, _ = objective(engine, inputs)
                engine.backward(loss)
                engine.step()
            except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError included
                if (kind := memory_kind(exc)) is None:
                    raise
                raise out_of_memory(kind, cfg, state["step"] + 1) from None
            state["batch_in_epoch"] = end
            state["micro"] = epoch_start + end
            window["loss"] += loss.detach().float()
            window["n"] += 1
            window["tokens"] += tokens_per_micro
            if engine.global_steps == state["step"]:
                continue  # inside a gradient-accumulation window
            state["step"] = step = engine.global_steps
            state["tokens"] += tokens_per_micro * tr["grad_accum"] * world
            if bar:
                bar.update(1)
            if first_step and log:
                # From the command's start (the driver process's) to the first optimizer step.
                log.log(step, {"time_to_first_step_s": time.time() - cfg["started_at"]})
            first_step = False

            if step % tr["log_every"] == 0 or step == max_steps:
                # Rank 0 looks for the driver's stop request; the sum tells every rank.
                asked = float(rank == 0 and run.exists(STOP_FILE))
                loss_sum, n, tokens, wait, asked = _all_reduce_sum(
                    [window["loss"].item(), window["n"], window["tokens"], window["wait"], asked],
                    engine.device,
                )
                stopping = asked > 0
                if not math.isfinite(loss_sum / n):
                    diverged = (step, loss_sum / n)
                    break
                dt = time.perf_counter() - window["t"]
                last = {
                    "loss": loss_sum / n,
                    "lr": engine.get_lr()[0],
                    "tokens_per_s": tokens / dt,
                    "samples_per_s": tokens / tr["seq_len"] / dt,
                    "tokens_seen": state["tokens"],
                    "epoch": state["epoch"],
                    "peak_memory_gb": peak_memory_bytes() / 2**30,
                    # Share of the window each rank spent waiting for its next batch.
                    "data_wait_pct": 100 * wait / world / dt,
                }
                grad_norm = engine.get_global_grad_norm()
                if grad_norm is not None:
                    last["grad_norm"] = float(grad_norm)
                if peak:
                    last["mfu"] = fpt * tokens / dt / (peak * world)
                window = new_window(zero)
                if log:
                    log.log(step, last)
            paused = time.perf_counter()
            evaluated = False
            if eval_shard is not None and (step % tr["eval_every"] == 0 or step == max_steps):
                ev = evaluate(engine, eval_shard, batcher, task, micro, tr["eval_batches"], labels)
                last.update(ev)
                evals = {k: v for k, v in ev.items() if isinstance(v, (int, float))}
                evaluated = True
                if log:
                    log.log(step, ev)
                if metric in ev:
                    stop = track_best(
                        engine, state, ev[metric], tr["metric_mode"], step, last, best_dir, patience
                    )
                    if state["best_step"] == step:
                        run.push("best", Path(best_dir))
            if bar and "loss" in last:
                bar.set_description(task.progress(last))
            # Ray sees every eval (a sweep's scheduler judges trials by them) and every
            # checkpoint; each report carries the latest eval's scores.
            report = {**last, **evals, "step": step}
            if step % tr["checkpoint_every"] == 0 or step == max_steps or stopping:
                # Never checkpoint (or export) a diverged model: every rank sees the
                # same all-reduced loss, so all stop together.
                (window_loss,) = _all_reduce_sum([window["loss"].item()], engine.device)
                if not math.isfinite(window_loss):
                    diverged = (step, window_loss)
                    break
                with tempfile.TemporaryDirectory(prefix="raylm-ckpt-") as d:
                    saved = Checkpoint.from_directory(d)
                    saved.set_metadata(save_checkpoint(engine, d, state))
                    if log:  # the log as far as this checkpoint, for a restart elsewhere
                        run.push(METRICS_FILE)
                        run.push("tensorboard")
                    ray.train.report(report, checkpoint=saved)
            elif evaluated:
                ray.train.report(report)
            # Eval and checkpoint time is not training throughput.
            window["t"] += time.perf_counter() - paused
            if step >= max_steps or stop or stopping:
                break
        else:
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
    if stopping and state["step"] < max_steps:
        if bar:
            bar.close()
        return  # checkpointed above; resume=true continues from it
    if diverged:
        # Recorded, not raised: Ray Train would restart the run from its checkpoint and
        # diverge again, max_failures times. The driver makes it one line (job.fit).
        if bar:
            bar.close()
        if rank == 0:
            record = {"step": diverged[0], "loss": diverged[1]}
            (run.local / DIVERGED_FILE).write_text(json.dumps(record))
            run.push(DIVERGED_FILE)
        return

    # --- export: the best snapshot when trainer.metric picked one, else the last weights
    if bar:
        bar.close()
        # The closing state reaches the driver through this worker's stdout: flush it, or
        # the driver keeps redrawing the finished bar above every later line it prints.
        sys.stdout.flush()
    exported_step = state["step"]
    if state["best_step"] is not None and state["best_step"] != state["step"]:
        run.pull("best", Path(best_dir))  # every rank's shards, whoever wrote them
        load_best(engine, best_dir, state, world, f"{cfg['run_id']}-best")
        last, exported_step = state["best_metrics"], state["best_step"]
    artifact = Artifact(
        task=task.name,
        model=cfg["model"]["name"],
        step=exported_step,
        tokens_seen=state["tokens"],
        metrics=last,
        config=cfg["resolved_config"],
        config_hash=cfg["config_hash"],
        labels=labels,
        best=None
        if metric is None
        else {
            "metric": metric,
            "value": state["best"],
            "step": state["best_step"],
            "early_stopped": stop,
            "last_step": state["step"],
        },
        compression=cfg.get("compression"),
    )
    atol = 1e-4 if tr["precision"] == "fp32" else 5e-2
    path = export_model(
        engine,
        task.name,
        tokenizer,
        run.local / "model" if run.remote else cfg["export_dir"],
        artifact,
        cfg["deepspeed"]["zero_stage"],
        atol,
    )
    # best/ stays where it is: a run resumed with more steps may still export that step.
    if run.remote:
        shutil.rmtree(best_dir, ignore_errors=True)  # this rank's mirror copy
    if log:
        log.close()
        if run.remote:
            target = RunDir(cfg["export_dir"])  # output_dir/model, or a compress step's dir
            target.remove("")  # raylm.json goes up last: the model counts once it is there
            target.push("", run.local / "model", last=ARTIFACT_FILE)
            run.push(METRICS_FILE)
            run.push("tensorboard")
            run.clean_mirror()
            path = target.location
        print(f"exported {path}")
