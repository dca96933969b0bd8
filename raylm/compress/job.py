"""``raylm compress``: check every step, run them in order (each reads the previous
step's artifact), measure the teacher and every artifact the same way, report.

Everything checkable without a worker is checked first: the teacher directory, its
task against each method, every method's settings, the data and training keys the
training steps use, and the output directory.
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .._internal.cluster import check_shared_path, init_ray, remote_task
from .._internal.logs import quiet_libraries
from .._internal.storage import RunDir, fetch, is_uri
from ..config import ConfigError, validate_training
from ..config.validate import get_key, writable_path
from ..models.artifact import ARTIFACT_FILE, Artifact, model_info
from ..tasks import get_task

# Each method registers itself on import.
from . import distill, prune, quantize  # noqa: F401, E402, I001
from .base import METHODS, RUNS_DIR, StepContext
from .report import REPORT_FILES, build_report, write_report


def _check_steps(steps: list[str]) -> None:
    if not steps:
        raise ConfigError("compress.steps", f"is empty; choose from {', '.join(METHODS)}")
    for i, name in enumerate(steps):
        if name not in METHODS:
            raise ConfigError(
                "compress.steps", f"unknown step {name!r}; choose from {', '.join(METHODS)}"
            )
        if name in steps[:i]:
            raise ConfigError("compress.steps", f"{name} is listed twice")
        if i and METHODS[steps[i - 1]].final:
            raise ConfigError(
                "compress.steps",
                f"{name} cannot follow {steps[i - 1]}: {steps[i - 1]} must be the last step",
            )
    if "distill" in steps and "prune" in steps and steps.index("prune") < steps.index("distill"):
        raise ConfigError(
            "compress.steps",
            "distill must come before prune: the student is built from the teacher's layers",
        )


def _check_report(c: dict[str, Any]) -> None:
    r = c["compress"]["report"]
    for key in ("threads", "repeats"):
        if r[key] < 1:
            raise ConfigError(f"compress.report.{key}", f"must be >= 1, got {r[key]}")
    if not r["batch_sizes"] or min(r["batch_sizes"]) < 1:
        raise ConfigError(
            "compress.report.batch_sizes", f"must be batch sizes >= 1, got {r['batch_sizes']}"
        )
    r["batch_sizes"] = sorted(set(r["batch_sizes"]))
    if r["max_eval_rows"] < 0:
        raise ConfigError("compress.report.max_eval_rows", "must be >= 0 (0: all)")


def prepare(cfg: DictConfig | dict[str, Any]) -> StepContext:
    """The validated job: config, task, teacher. Raises ConfigError on any bad input."""
    from ..models.build import load_init_config

    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    c = copy.deepcopy(c)
    teacher = c["model"]["init_from"]
    if not teacher:
        raise ConfigError("model.init_from", "give the model to compress: model.init_from=DIR")
    # A URI output_dir: steps are written in a local mirror and pushed, training steps run
    # in the store; a URI teacher is read here from a copy (see _internal.storage).
    location = c["output_dir"]
    remote = is_uri(location)
    out = (
        RunDir(location, run_id=os.urandom(8).hex()).local
        if remote
        else writable_path(location, "output_dir", "dir").resolve()
    )
    teacher_location = teacher
    if is_uri(teacher):
        teacher = str(fetch(teacher, out / ".teacher", "model.init_from"))
    info = model_info(teacher, "model.init_from")
    if info["runtime"] != "torch":
        raise ConfigError(
            "model.init_from",
            f"{teacher} is an {info['runtime']} model; compress a torch model (quantize writes "
            "the int8 one)",
        )
    if c["task"] and c["task"] != info["task"]:
        raise ConfigError(
            "task",
            f"model.init_from is a {info['task']} model; drop task or set task={info['task']}",
        )
    c["task"] = info["task"]
    task = get_task(c["task"])
    steps = list(c["compress"]["steps"])
    _check_steps(steps)
    _check_report(c)
    if task.labeled:
        c["data"]["labels"] = info["labels"]  # the teacher's label order, unseen ones refused
    elif not c["data"]["eval_files"]:
        raise ConfigError(
            "data.eval_files",
            f"compress measures a {task.name} model on held-out text; give data.eval_files",
        )
    teacher_config = load_init_config(teacher)
    validate_training(c, init_config=teacher_config)
    c["output_dir"] = location if remote else str(out)
    c["tokenizer_path"] = str(Path(teacher).expanduser().resolve())
    ctx = StepContext(
        c=c,
        task=task,
        teacher_dir=Path(teacher).expanduser().resolve(),
        teacher_config=teacher_config,
        output_dir=out,
        chain=[],
        location=c["output_dir"],
        teacher_location=teacher_location,
    )
    for name in steps:
        METHODS[name].check_task(task.name)
        METHODS[name].validate(ctx)
    return ctx


def check(cfg: DictConfig | dict[str, Any], files: bool = True) -> list[str]:
    """Validate without compressing (see :class:`raylm.api.Command`)."""
    if files:
        prepare(cfg)
        return []
    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    if not c["model"]["init_from"]:
        raise ConfigError("model.init_from", "give the model to compress: model.init_from=DIR")
    steps = list(c["compress"]["steps"])
    _check_steps(steps)
    _check_report(copy.deepcopy(c))
    if c["task"]:
        for name in steps:
            METHODS[name].check_task(c["task"])
    keys = ["model.init_from", "data.train_files", "data.eval_files"]
    return [k for k in keys if get_key(c, k)]


def check_output_dir(ctx: StepContext) -> None:
    c, store = ctx.c, ctx.store
    previous = [n for n in (*METHODS, RUNS_DIR, *REPORT_FILES) if store.exists(n)]
    if not previous or c["resume"]:
        return
    if not c["overwrite"]:
        raise ConfigError(
            "output_dir",
            f"{store} holds an earlier compress run; set resume=true to reuse its finished "
            "steps or overwrite=true to replace it",
        )
    for name in previous:
        store.remove(name)


def _finished(ctx: StepContext, name: str) -> bool:
    """With resume=true: the step's artifact exists and was made by the same chain of
    methods with the same settings, from the same teacher, data and training keys."""
    text = ctx.store.read_text(f"{name}/{ARTIFACT_FILE}") if ctx.c["resume"] else None
    artifact = Artifact.loads(text) if text else None
    if artifact is None or not artifact.compression:
        return False

    def key(e: dict) -> tuple:
        return e["method"], e["settings"], e.get("fingerprint")

    wanted = [*map(key, ctx.chain), (name, ctx.settings(name), ctx.fingerprint())]
    return list(map(key, artifact.compression["chain"])) == wanted


def measure_all(ctx: StepContext, dirs: dict[str, Path]) -> list[dict[str, Any]]:
    """One Ray task per model, one after another, each holding compress.report.threads CPUs."""
    import ray

    from ..train.job import load_documents
    from .measure import encode_rows, measure_model

    docs = load_documents(ctx.c)  # the same seeded eval split fine-tuning held out
    rows = encode_rows(ctx.c, docs["eval"])
    threads = ctx.c["compress"]["report"]["threads"]
    remote = remote_task(measure_model, here=ctx.store.remote, num_cpus=threads)
    out = []
    for name, path in dirs.items():
        print(f"measuring {name} ...", flush=True)
        row = ray.get(remote.remote(str(path), ctx.task.name, rows, ctx.c))
        out.append({"name": name, **row})
    return out


def run(cfg: DictConfig) -> dict[str, Any]:
    """Compress, measure, report. Returns the report's paths and rows."""
    ctx = prepare(cfg)
    c = ctx.c
    quiet_libraries(c["ray"]["verbose"])
    check_output_dir(ctx)
    ctx.output_dir.mkdir(parents=True, exist_ok=True)
    init_ray(c)
    store = ctx.store
    if not store.remote:  # a store is every node's by definition
        check_shared_path(str(ctx.output_dir), "output_dir")
    try:
        return _run_steps(ctx)
    finally:
        store.clean_mirror()
        shutil.rmtree(ctx.output_dir / ".teacher", ignore_errors=True)  # a URI's copy


def _run_steps(ctx: StepContext) -> dict[str, Any]:
    c, store = ctx.c, ctx.store
    dirs = {"teacher": ctx.teacher_dir}
    source = ctx.teacher_dir
    rerun = False  # once a step runs again, every later one does: its input changed
    for name in c["compress"]["steps"]:
        method = METHODS[name]
        if not rerun and _finished(ctx, name):
            print(f"\n== {name}: finished earlier, kept ({store.uri(name)})")
            store.pull(name, ctx.output_dir / name)  # a later step or the report reads it
            entry = Artifact.read(ctx.output_dir / name).compression["chain"][-1]
        else:
            print(f"\n== {name} {ctx.settings(name)}", flush=True)
            entry = method.apply(source, ctx)
            if store.remote and name not in ctx.in_store:  # written here: up it goes
                store.remove(name)
                store.push(name, ctx.output_dir / name, last=ARTIFACT_FILE)
            rerun = True
        ctx.chain.append(entry)
        source = dirs[name] = ctx.output_dir / name
    print("\n== report", flush=True)
    rows = measure_all(ctx, dirs)
    r = c["compress"]["report"]
    report = build_report(
        rows, ctx.task.name, ctx.task.headline_metric, ctx.task.headline_mode, r["threads"]
    )
    paths = write_report(report, ctx.output_dir)
    print(paths["md"].read_text())
    for path in paths.values():
        store.push(path.name, path)
    where = {k: store.uri(p.name) for k, p in paths.items()}
    print(f"report: {where['json']}, {where['md']}, {where['png']}")
    models = {name: store.uri(name) for name in dirs if name != "teacher"}
    return {
        "output_dir": store.location,
        "models": {"teacher": ctx.teacher_location or str(ctx.teacher_dir), **models},
        "report": where,
        "rows": report["models"],
        "targets": report["targets"],
    }
