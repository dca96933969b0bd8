"""``raylm sweep``: Ray Tune over whole raylm training runs.

Everything checkable before Ray starts is checked first: the base command and its
overrides, the space (parsed with Hydra's own parser, every key present in the base
config, every choice and each interval's ends composed and validated as a plain run
would be), the metric, the algorithm's own limits, the output directory.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .._internal.cluster import check_shared_path, init_ray
from .._internal.logs import quiet_libraries
from .._internal.redact import redact
from .._internal.storage import RunDir, is_uri, join, override
from ..api import compose_checked
from ..config import ConfigError
from ..config.validate import local_path, writable_path
from ..tasks import get_task
from . import algorithms
from .results import HISTORY_DIR, RESULT_FILES, TrialHistory, write_results
from .space import Param, flatten, hydra_value, parse_space

BASES = ("pretrain", "finetune", "compress")
TUNE_DIR = "tune"
TRIALS_DIR = "trials"
SWEEP_FILE = "sweep.json"
# What a compress trial reports besides its task's metrics (see trial._compress_trial).
COMPRESS_METRICS = ("latency_ms", "size_mb", "parameters", "throughput_rows_per_s")
LOWER_IS_BETTER = ("loss", "perplexity", "latency", "size", "parameters")


def validate_base(base: str, cfg: DictConfig, files: bool = True) -> dict[str, Any]:
    """The same validation a plain ``raylm <base>`` run does; its prepared config (with
    ``files=False``, the config checks alone, as ``raylm submit`` does them)."""
    if not files:
        from ..api import check_function

        unread = check_function(base)(cfg, False)
        return {**OmegaConf.to_container(cfg, resolve=True), "unread": unread}
    if base == "compress":
        from ..compress.job import prepare

        return prepare(cfg).c
    from ..train.job import prepare

    return prepare(cfg)


def default_mode(metric: str) -> str:
    return "min" if any(s in metric for s in LOWER_IS_BETTER) else "max"


def objectives(s: dict[str, Any], base: str, c: dict[str, Any]) -> tuple[Any, Any]:
    """``search.metric`` / ``search.mode`` resolved against what the base command reports."""
    task = get_task(c["task"])
    metric, mode = s["metric"], s["mode"]
    if metric is None:
        if base == "compress":
            metric, mode = task.headline_metric, mode or task.headline_mode
        elif c["trainer"]["metric"]:
            metric, mode = c["trainer"]["metric"], mode or c["trainer"]["metric_mode"]
        else:
            has_eval = task.labeled or bool(c["data"]["eval_files"])
            metric = "eval_loss" if has_eval else "loss"
    allowed = [*task.metrics, *(COMPRESS_METRICS if base == "compress" else ("loss",))]
    metrics = list(metric) if isinstance(metric, (list, tuple)) else [metric]
    if mode is None:
        modes = [default_mode(m) for m in metrics]
    else:
        modes = list(mode) if isinstance(mode, (list, tuple)) else [mode]
    if len(modes) != len(metrics):
        raise ConfigError(
            "search.mode", f"gives {len(modes)} modes for {len(metrics)} metrics; one per metric"
        )
    for m in metrics:
        if m not in allowed:
            raise ConfigError(
                "search.metric",
                f"base={base} (task={task.name}) reports {', '.join(allowed)}; got {m!r}",
            )
    for m in modes:
        if m not in ("min", "max"):
            raise ConfigError("search.mode", f"must be min or max, got {m!r}")
    has_eval = task.labeled or bool(c["data"]["eval_files"])
    if base != "compress" and metrics[0].startswith("eval_") and not has_eval:
        raise ConfigError("search.metric", f"{metrics[0]} needs data.eval_files")
    if len(metrics) == 1:
        return metrics[0], modes[0]
    return metrics, modes


def check_candidates(
    base: str, overrides: list[str], space: list[Param], files: bool = True
) -> None:
    """Compose and validate the base command with each choice and each interval end, one
    key at a time: a value no trial could run fails here, not an hour into the sweep."""
    for p in space:
        for value in p.candidates():
            text = hydra_value(value)
            cfg = compose_checked(base, [*overrides, f"{p.key}={text}"], f"search.params.{p.key}")
            try:
                validate_base(base, cfg, files)
            except ConfigError as exc:
                raise ConfigError(
                    f"search.params.{p.key}", f"{p.key}={text} fails: {exc.key}: {exc.message}"
                ) from None


def check(cfg: DictConfig, files: bool = True) -> list[str]:
    """Validate without sweeping (see :class:`raylm.api.Command`)."""
    spec = prepare(cfg, files)
    return spec["unread"]


def prepare(cfg: DictConfig, files: bool = True) -> dict[str, Any]:
    """The validated sweep: everything a trial needs, as plain data. ``files=False``
    checks it as ``raylm submit`` does, leaving the base command's files unread."""
    c = OmegaConf.to_container(cfg, resolve=True)
    base = c["base"]
    if base not in BASES:
        raise ConfigError("base", f"unknown command {base!r}; sweep one of {', '.join(BASES)}")
    s = c["search"]
    # A URI: trials and Tune's state go to the store; the sweep's own files are written
    # in a local mirror (``out``) and pushed (see _internal.storage).
    location = c["output_dir"]
    if is_uri(location):
        if files:  # opens the store: a malformed URI is one line, here
            RunDir(location)
        out = Path(tempfile.gettempdir()) / "raylm-runs" / f"sweep-{os.urandom(8).hex()}"
    else:
        out = local_path(location, "output_dir").resolve()
        if files:
            writable_path(location, "output_dir", "dir")
        location = str(out)
    overrides = [*c["base_overrides"], *c["extra_overrides"]]
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if key in ("output_dir", "resume", "overwrite"):
            raise ConfigError(
                key,
                f"is the sweep's own key here (trials get {join(location, TRIALS_DIR)}/<trial>)",
            )
    placeholder = [*overrides, override("output_dir", join(location, TRIALS_DIR, "check"))]
    base_cfg = compose_checked(base, placeholder, "base_overrides")
    prepared = validate_base(base, base_cfg, files)
    space = parse_space(flatten(s["params"]), base_cfg)
    if not prepared["task"]:  # a compress teacher's task, read on the cluster
        metric, mode = s["metric"], s["mode"]
    else:
        metric, mode = objectives(s, base, prepared)
    for key in ("num_samples", "max_failures"):
        low = 0 if key == "max_failures" else 1
        if s[key] < low:
            raise ConfigError(f"search.{key}", f"must be >= {low}, got {s[key]}")
    if s["max_concurrent_trials"] is not None and s["max_concurrent_trials"] < 1:
        raise ConfigError(
            "search.max_concurrent_trials",
            f"must be >= 1 (or null), got {s['max_concurrent_trials']}",
        )
    tr = prepared["trainer"]
    ctx = {
        "metric": metric,
        "mode": mode,
        "eval_every": tr["eval_every"],
        "max_steps": tr["max_steps"] if tr["epochs"] is None else None,
    }
    if metric is not None:
        algorithms.build(s, space, ctx)  # refuses what the algorithm cannot do, before Ray
    check_candidates(base, placeholder, space, files)
    if s["name"] == "pbt":
        # PBT exploits at evals: a checkpoint must exist at each one.
        overrides = [*overrides, f"trainer.checkpoint_every={tr['eval_every']}"]
    return {
        "base": base,
        "overrides": overrides,
        "space": space,
        "search": s,
        "metric": metric,
        "mode": mode,
        "ctx": ctx,
        "output_dir": out,
        "location": location,
        "trials_dir": join(location, TRIALS_DIR),
        "history_dir": str(out / HISTORY_DIR),
        "resume": c["resume"],
        "overwrite": c["overwrite"],
        "ray": c["ray"],
        "scaling": prepared["scaling"],
        "task": prepared["task"],
        "unread": prepared.get("unread", []),
    }


def _fingerprint(spec: dict[str, Any]) -> dict[str, Any]:
    """What a resumed sweep must share with the one it continues."""
    return {
        "base": spec["base"],
        "overrides": spec["overrides"],
        "space": {p.key: p.describe() for p in spec["space"]},
        "search": {k: v for k, v in spec["search"].items() if k != "params"},
    }


def check_output_dir(spec: dict[str, Any]) -> None:
    out, store = spec["location"], RunDir(spec["location"])
    if spec["resume"]:
        from ray import tune

        if not tune.Tuner.can_restore(**tune_storage(spec)):
            raise ConfigError("resume", f"no earlier sweep in {out} to resume; drop resume=true")
        saved = json.loads(store.read_text(SWEEP_FILE) or "null")
        now = _saved_fingerprint(spec)
        if saved != now:
            changed = [k for k in saved if saved[k] != now.get(k)]
            raise ConfigError(
                "resume",
                f"the sweep in {out} was started with a different {', '.join(changed)}; resume "
                "it with the same settings, or start a new one with overwrite=true",
            )
        store.pull(HISTORY_DIR, spec["output_dir"] / HISTORY_DIR)  # to append to
        return
    ours = (TUNE_DIR, TRIALS_DIR, HISTORY_DIR, SWEEP_FILE, *RESULT_FILES)
    local = spec["output_dir"]
    previous = [n for n in ours if store.exists(n) or (local / n).is_symlink()]
    if previous and not spec["overwrite"]:
        raise ConfigError(
            "output_dir",
            f"{out} holds an earlier sweep; set resume=true to continue it or overwrite=true "
            "to replace it",
        )
    for name in previous:
        store.remove(name)
    local.mkdir(parents=True, exist_ok=True)
    (local / SWEEP_FILE).write_text(json.dumps(_saved_fingerprint(spec), indent=2))
    store.push(SWEEP_FILE, local / SWEEP_FILE)


def _saved_fingerprint(spec: dict[str, Any]) -> Any:
    return json.loads(json.dumps(redact(_fingerprint(spec))))


def tune_storage(spec: dict[str, Any]) -> dict[str, Any]:
    """Where Tune's experiment lives, as ``Tuner.restore`` / ``can_restore`` take it."""
    store = RunDir(spec["location"])
    if not store.remote:
        return {"path": str(spec["output_dir"] / TUNE_DIR)}
    return {"path": f"{store.path}/{TUNE_DIR}", "storage_filesystem": store.fs}


def max_concurrent(spec: dict[str, Any]) -> int:
    """``search.max_concurrent_trials``, else as many trials as the cluster holds workers
    for: a trial's Tune actor takes no CPU, its Ray Train workers take the rest."""
    import ray

    if spec["search"]["max_concurrent_trials"]:
        return spec["search"]["max_concurrent_trials"]
    sc = spec["scaling"]
    have = ray.cluster_resources()
    n = have.get("CPU", 0) // max(sc["num_workers"] * sc["cpus_per_worker"], 1e-9)
    if sc["use_gpu"]:
        n = min(n, have.get("GPU", 0) // max(sc["num_workers"] * sc["gpus_per_worker"], 1e-9))
    return max(1, int(n))


def build_tuner(spec: dict[str, Any]):
    from ray import tune

    from .progress import TrialTable
    from .trial import ReleaseStoppedTrials, run_trial

    s = spec["search"]
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial,
            spec={k: spec[k] for k in ("base", "overrides", "space", "trials_dir", "location")},
        ),
        # Tune wants a non-empty request; one byte of memory reserves nothing a CPU-only
        # 2-core machine needs (0.01 CPU would leave 1.99 for two 1-CPU workers).
        {"memory": 1},
    )
    table = TrialTable([p.key for p in spec["space"]], spec["metric"], spec["ctx"]["max_steps"])
    run_config = tune.RunConfig(
        name=TUNE_DIR,
        **RunDir(spec["location"]).storage(""),
        failure_config=tune.FailureConfig(max_failures=s["max_failures"]),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2 if s["name"] != "pbt" else None),
        callbacks=[
            table,
            TrialHistory(spec["history_dir"]),
            ReleaseStoppedTrials(spec["trials_dir"]),
        ],
        verbose=0,
        log_to_file=True,
    )
    if spec["resume"]:
        # The run config (with this table) comes back from the saved experiment.
        return tune.Tuner.restore(
            **tune_storage(spec),
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=True,
        )
    concurrent = max_concurrent(spec)
    searcher, scheduler = algorithms.build(
        s, spec["space"], {**spec["ctx"], "max_concurrent": concurrent}
    )
    multi = isinstance(spec["metric"], list)
    tune_config = tune.TuneConfig(
        metric=None if multi else spec["metric"],
        mode=None if multi else spec["mode"],
        search_alg=searcher,
        scheduler=scheduler,
        num_samples=s["num_samples"],
        max_concurrent_trials=None,  # the searcher limits itself (algorithms.build)
        time_budget_s=s["time_budget_s"],
        reuse_actors=False,  # a stopped trial's actor must exit: its Ray Train run goes with it
        trial_dirname_creator=lambda trial: trial.trial_id,
    )
    param_space = {p.key: p.tune_domain(grid=s["name"] == "grid") for p in spec["space"]}
    return tune.Tuner(
        trainable, param_space=param_space, tune_config=tune_config, run_config=run_config
    )


def interrupted(trial) -> bool:
    """A trial the sweep's end cut short. On Ctrl-C Tune saves the experiment (running
    trials as running, which ``resume=true`` continues) and then marks them terminated;
    only a trial that ended on its own or by its scheduler has a last result marked done.
    """
    if trial.status == "ERROR":
        return False
    return trial.status != "TERMINATED" or not (trial.last_result or {}).get("done")


def run(cfg: DictConfig) -> dict[str, Any]:
    """Sweep, then write the trials table, best.yaml, best_model and the plots."""
    spec = prepare(cfg)
    verbose = spec["ray"]["verbose"]
    quiet_libraries(verbose)
    if not verbose:
        # Tune logs each failed trial's traceback; the table and the summary name them.
        logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    check_output_dir(spec)
    # Tune's own console output (an experiment box, per-trial status blocks) would
    # duplicate the trial table; RAY_AIR_NEW_OUTPUT=0 with verbose=0 silences it.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    init_ray({"ray": spec["ray"]}, log_to_driver=verbose)
    store = RunDir(spec["location"])
    if not store.remote:  # a store is every node's by definition
        check_shared_path(spec["location"], "output_dir")
    try:
        grid = build_tuner(spec).fit()
        trials = getattr(getattr(grid, "_experiment_analysis", None), "trials", None) or []
        unfinished = [t for t in trials if interrupted(t)]
        if unfinished:  # Ctrl-C (SIGINT): Tune saved the experiment and stopped the trials
            print(
                f"sweep interrupted with {len(unfinished)} of {len(trials)} trials unfinished; "
                "run the same command with resume=true to continue it",
                flush=True,
            )
            raise KeyboardInterrupt
        return write_results(grid, spec)
    finally:
        if store.remote:  # the history a resume continues, whatever happened
            store.push(HISTORY_DIR, spec["output_dir"] / HISTORY_DIR)
            shutil.rmtree(spec["output_dir"], ignore_errors=True)
