"""``raylm pretrain`` and ``raylm finetune``: the driver. Validate, build the data, run
Ray Train, report.

Everything that can be checked without a worker is checked here first, so a typo costs
one line and no cluster start-up.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import signal
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .._internal.cluster import check_resources, check_shared_path, init_ray
from .._internal.logs import quiet_libraries
from .._internal.storage import RunDir, fetch, is_uri, uri_of
from ..api import started_at
from ..config import ConfigError, validate_training
from ..config.validate import check_data_files, check_vocab, get_key
from ..models.artifact import ARTIFACT_FILE, Artifact
from .deepspeed_config import check_overrides
from .metrics import (
    DIVERGED_FILE,
    LOSS_CURVE_FILE,
    METRICS_FILE,
    STOP_FILE,
    plot_confusion,
    plot_loss_curve,
)

CONFUSION_FILE = "confusion_matrix.png"

RUN_NAME = "train"


def _tokenizer_source(c: dict[str, Any]) -> str:
    tok_path = Path(c["tokenizer"]["path"]).expanduser()
    if (tok_path / "tokenizer.json").exists() or not c["model"]["init_from"]:
        return str(tok_path.resolve())
    return c["model"]["init_from"]  # a model directory carries its own tokenizer


def prepare(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """Compose -> validate -> the plain dict the workers get.

    Takes the composed config, or a plain dict of the same keys (how ``raylm compress``
    hands its training steps over).
    """
    from ..data.tokenizer import load_tokenizer
    from ..models.build import load_init_config, positions_and_vocab
    from ..tasks import get_task

    if isinstance(cfg, DictConfig):
        c = OmegaConf.to_container(cfg, resolve=True)
        resolved = OmegaConf.to_container(cfg, resolve=True)
    else:
        c, resolved = copy.deepcopy(cfg), copy.deepcopy(cfg)
    init_config = None
    init_from = c["model"]["init_from"]
    if init_from and is_uri(init_from):  # read here from a copy; workers fetch their own
        init_from = str(
            fetch(init_from, Path(tempfile.mkdtemp(prefix="raylm-init-")), "model.init_from")
        )
    if c["model"]["init_from"]:
        if looks_like_path(init_from):  # else a Hub name
            from ..models.artifact import check_model_dir

            check_model_dir(Path(init_from).expanduser(), "model.init_from")
        try:
            init_config = load_init_config(init_from)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                "model.init_from",
                f"cannot load a model config from {c['model']['init_from']}: {exc}",
            ) from None
        # The architecture is the directory's, not the preset's: name it so in raylm.json.
        c["model"]["name"] = str(c["model"]["init_from"])
    validate_training(c, init_config=init_config)  # before the tokenizer is read
    check_overrides(c)
    task = get_task(c["task"])
    tok_src = _tokenizer_source(c)
    try:
        tokenizer = load_tokenizer(init_from if tok_src == c["model"]["init_from"] else tok_src)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            "tokenizer.path", f"cannot load a tokenizer from {tok_src}: {exc}"
        ) from None
    check_vocab(c, len(tokenizer), init_config)
    task.check_tokenizer(tokenizer)
    if task.labeled and c["model"]["init_from"]:
        from ..models.build import has_head_for

        head = c["model"]["head"]
        if head and getattr(init_config, "head", None) is None:
            print(
                f"model.head={head}: a new head is initialized and trained on top of the "
                f"encoder of {c['model']['init_from']}"
            )
        elif has_head_for(init_config, c["task"]):
            c["init_head_labels"] = init_config.num_labels  # checked once labels are read
        else:
            print(
                f"model.init_from={c['model']['init_from']} has no {c['task']} head: a new one "
                "is initialized and trained from scratch on top of its encoder"
            )
    if init_from != c["model"]["init_from"]:
        shutil.rmtree(init_from, ignore_errors=True)  # the copy read here

    # A URI (s3://, gs://, ...) stays as written: see _internal.storage.
    if is_uri(c["output_dir"]):
        store = RunDir(c["output_dir"])  # opens the URI here: a malformed one is one line
        c.setdefault("export_dir", store.uri("model"))  # in the store too
    else:
        out = Path(c["output_dir"]).expanduser().resolve()
        c["output_dir"] = str(out)
        c.setdefault("export_dir", str(out / "model"))
    c["tokenizer_path"] = tok_src
    c["vocab_size"] = (
        positions_and_vocab(init_config)[1]
        if init_config
        else c["model"]["vocab_size"] or len(tokenizer)
    )
    c["data"]["train_files"] = check_data_files(c["data"]["train_files"], "data.train_files", True)
    c["data"]["eval_files"] = check_data_files(c["data"]["eval_files"], "data.eval_files", False)
    c.setdefault("started_at", started_at())
    c["resolved_config"] = resolved
    c["config_hash"] = hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[
        :16
    ]
    return c


def looks_like_path(name: str) -> bool:
    """A local path rather than a Hub name (``org/model``): what transformers would
    otherwise answer with "Repo id must be in the form 'namespace/repo_name'"."""
    return (
        Path(name).expanduser().exists()
        or name.startswith(("/", ".", "~"))
        or name.count("/") > 1
        or "\\" in name
    )


def file_keys(c: dict[str, Any]) -> list[str]:
    """The keys of a training config that name files (what a cluster must have)."""
    keys = ["data.train_files", "data.eval_files", "model.init_from"]
    if not c["model"]["init_from"]:  # else the model directory carries the tokenizer
        keys.insert(2, "tokenizer.path")
    return [k for k in keys if get_key(c, k)]


def check(cfg: DictConfig | dict[str, Any], files: bool = True) -> list[str]:
    """Validate without training (see :class:`raylm.api.Command`)."""
    if files:
        prepare(cfg)
        return []
    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    validate_training(c, files=False)
    return file_keys(c)


def check_output_dir(c: dict[str, Any]) -> None:
    out = RunDir(c["output_dir"])
    checkpoints = f"checkpoints/{RUN_NAME}"
    previous = out.exists(checkpoints) or out.exists(METRICS_FILE)
    if c["resume"]:
        if not out.exists(checkpoints):
            raise ConfigError(
                "resume", f"no earlier run in {out} to resume; drop resume=true to start one"
            )
    elif previous:
        if not c["overwrite"]:
            raise ConfigError(
                "output_dir",
                f"{out} holds an earlier run; set resume=true to continue it or overwrite=true to replace it",
            )
        # model/ stays until the new run's export replaces it whole (atomic_dir): a run
        # that fails before then, a full disk included, leaves the earlier model usable.
        for name in (
            "checkpoints",
            "best",
            "tensorboard",
            METRICS_FILE,
            "loss_curve.png",
            CONFUSION_FILE,
        ):
            out.remove(name)


def load_documents(c: dict[str, Any]) -> dict[str, Any]:
    """The train (and eval) ``datasets.Dataset``s; for classification also ``c["labels"]``."""
    from ..data.files import load_text_dataset
    from ..data.labeled import decode_class_labels, hold_out, resolve_labels
    from ..tasks import get_task

    data, task = c["data"], get_task(c["task"])
    labeled = task.labeled
    extra = (data["label_column"],) if labeled else ()
    files = {"train": data["train_files"], "eval": data["eval_files"]}
    docs = {}
    for name, paths in files.items():
        if not paths:
            continue
        key = f"data.{name}_files"
        docs[name] = load_text_dataset(paths, data["text_column"], key, extra)
        if labeled:
            docs[name] = decode_class_labels(docs[name], data["label_column"])
        task.check_documents(docs[name], c, key)
    if labeled:
        c["labels"] = resolve_labels(
            docs["train"], docs.get("eval"), data["label_column"], data["labels"]
        )
        task.check_labels(c["labels"], "data.labels" if data["labels"] else "data.label_column")
        if c.get("init_head_labels") not in (None, len(c["labels"])):
            print(
                f"model.init_from={c['model']['init_from']} has a {c['task']} head for "
                f"{c['init_head_labels']} labels, the data has {len(c['labels'])}: a new head "
                "is initialized and trained on top of its encoder"
            )
        if "eval" not in docs:
            docs["train"], docs["eval"] = hold_out(
                docs["train"], data["eval_fraction"], c["trainer"]["seed"]
            )
    return docs


def build_datasets(c: dict[str, Any]) -> dict[str, Any]:
    import ray.data

    from ..data.pipeline import build_dataset
    from ..tasks import get_task

    ray.data.DataContext.get_current().enable_progress_bars = bool(c["ray"]["verbose"])
    tr = c["trainer"]
    out = {}
    for name, docs in load_documents(c).items():
        ds = build_dataset(docs, c, name)
        rows = ds.count()
        need = c["scaling"]["num_workers"] * tr["micro_batch_size"]
        if rows < need:
            unit = get_task(c["task"]).row_unit.replace(
                "trainer.seq_len", f"trainer.seq_len={tr['seq_len']}"
            )
            raise ConfigError(
                f"data.{name}_files",
                f"gives {rows} {unit}, fewer than one micro-batch per worker ({need}); "
                "add data or lower trainer.micro_batch_size",
            )
        out[name] = ds
    return out


def worker_failures(exc: BaseException) -> list[BaseException]:
    """What each failed worker raised, if ``fit()`` failed because workers did."""
    return list((getattr(exc, "worker_failures", None) or {}).values())


def worker_config_error(exc: BaseException) -> ConfigError | None:
    """The ConfigError a training worker raised, if that is why ``fit()`` failed."""
    for failure in worker_failures(exc):
        for candidate in (failure, getattr(failure, "cause", None), failure.__cause__):
            if isinstance(candidate, ConfigError):
                return ConfigError(candidate.key, candidate.message)
    return None


def worker_memory_error(exc: BaseException, c: dict[str, Any]) -> ConfigError | None:
    """One line naming the memory knobs if ``fit()`` failed because a worker ran out of
    memory (Ray's memory monitor killed it, or an OOM the worker could not name)."""
    from .oom import memory_kind, out_of_memory

    for failure in worker_failures(exc):
        if kind := memory_kind(failure):
            return out_of_memory(kind, c)
    return None


def steps_for(c: dict[str, Any], train_rows: int) -> int:
    tr = c["trainer"]
    if tr["epochs"] is None:
        return tr["max_steps"]
    world = c["scaling"]["num_workers"]
    # The ranks share one stream of micro-batches (data_config.own_batches).
    per_worker_batches = (train_rows // tr["micro_batch_size"]) // world
    return max(1, tr["epochs"] * per_worker_batches // tr["grad_accum"])


def doubtful_settings(c: dict[str, Any]) -> list[str]:
    """One warning line per setting that is valid but cannot do what was likely meant;
    known only once the data is read (``max_steps`` may come from ``trainer.epochs``)."""
    from .deepspeed_config import warmup_steps

    tr, steps, lines = c["trainer"], c["max_steps"], []
    if tr["warmup_steps"] is not None and warmup_steps(tr, steps) >= steps:
        lines.append(
            f"warning: trainer.warmup_steps={tr['warmup_steps']} is not below the run's "
            f"{steps} steps: the learning rate never reaches trainer.lr; lower it, or drop "
            f"it for trainer.warmup_ratio ({tr['warmup_ratio']} of the steps)"
        )
    if c["has_eval"] and tr["eval_every"] > steps:
        lines.append(
            f"warning: trainer.eval_every={tr['eval_every']} is beyond the run's {steps} "
            "steps: it evaluates once, at the end"
            + ("; trainer.metric has one eval to choose from" if tr["metric"] else "")
        )
    return lines  # (an eval set under one batch per worker is refused: build_datasets)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train, export, plot. Returns a summary (paths and final metrics)."""
    return fit(prepare(cfg))


def plan(cfg: DictConfig) -> dict[str, Any]:
    """``raylm plan``: the memory plan of a pretrain/finetune config, printed; no training."""
    from .plan import plan_run

    c = prepare(cfg)
    quiet_libraries(c["ray"]["verbose"])
    init_ray(c)
    result = plan_run(c)
    print(result.table())
    return {"chosen": result.chosen.name if result.chosen else None, "plan": result}


def worker_needs(sc: dict[str, Any]) -> dict[str, tuple[float, str]]:
    """What all training workers ask of the cluster, each with the key that asks."""
    n = sc["num_workers"]
    needs = {"CPU": (n * sc["cpus_per_worker"], "scaling.num_workers")}
    if sc["use_gpu"]:
        needs["GPU"] = (n * sc["gpus_per_worker"], "scaling.use_gpu")
    for name, amount in sc["resources_per_worker"].items():
        needs.setdefault(name, (n * amount, f"scaling.resources_per_worker.{name}"))
    return needs


def fit(c: dict[str, Any], callbacks: list | None = None) -> dict[str, Any]:
    """Run a prepared config (:func:`prepare`) on Ray Train, export, plot; the summary.

    ``callbacks`` are Ray Train ``UserCallback``s (a sweep trial passes the one that
    forwards every report to Ray Tune)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from .data_config import worker_datasets
    from .loop import train_loop_per_worker

    quiet_libraries(c["ray"]["verbose"])
    check_output_dir(c)
    init_ray(c)
    check_resources(worker_needs(c["scaling"]), embedded=not c["ray"]["address"])
    if not is_uri(c["output_dir"]):  # a store is every node's by definition
        check_shared_path(c["output_dir"], "output_dir")
    # Names this run's node-local mirrors of a URI output_dir (see _internal.storage).
    c["run_id"] = uuid.uuid4().hex
    if c["deepspeed"].get("auto"):
        from .plan import apply, plan_run

        plan = plan_run(c)
        print(plan.table(), flush=True)
        apply(c, plan)
    datasets = build_datasets(c)
    c["max_steps"] = steps_for(c, datasets["train"].count())
    c["has_eval"] = "eval" in datasets
    for line in doubtful_settings(c):
        print(line, flush=True)
    sc = c["scaling"]
    resources = {"CPU": sc["cpus_per_worker"], **sc["resources_per_worker"]}
    if sc["use_gpu"]:
        resources["GPU"] = sc["gpus_per_worker"]
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=c,
        scaling_config=ray.train.ScalingConfig(
            num_workers=sc["num_workers"],
            use_gpu=sc["use_gpu"],
            resources_per_worker=resources,
            placement_strategy=sc["placement_strategy"],
        ),
        run_config=ray.train.RunConfig(
            name=RUN_NAME,
            **RunDir(c["output_dir"]).storage("checkpoints"),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=c["trainer"]["keep_checkpoints"]
            ),
            failure_config=ray.train.FailureConfig(max_failures=c["trainer"]["max_failures"]),
            callbacks=callbacks or [],
            # Without this, each report's whole metrics dict is logged to the console.
            logging_config=ray.train.LoggingConfig(
                log_level="INFO" if c["ray"]["verbose"] else "WARNING"
            ),
        ),
        datasets=worker_datasets(datasets, sc["num_workers"]),
        dataset_config=ray.train.DataConfig(datasets_to_split=[]),
    )
    out = RunDir(c["output_dir"], c["run_id"])
    for name in (DIVERGED_FILE, STOP_FILE):  # a resumed run's, not this one's
        out.remove(name)
    previous = stop_on_sigterm(out)
    try:
        result = trainer.fit()
        if out.exists(STOP_FILE):
            out.remove(STOP_FILE)
            step = checkpoint_step(result.checkpoint)
            print(
                f"stopped at step {step} after its checkpoint; resume=true continues from it",
                flush=True,
            )
            raise KeyboardInterrupt
        record = RunDir(c["output_dir"]).read_text(DIVERGED_FILE)
        if record:
            raise diverged(c, json.loads(record), result) from None
        return report(c, out, result)
    except Exception as exc:
        # A user mistake only a worker could see (say, model.head importable here but not
        # on the cluster) ends as its one-line ConfigError, not a worker traceback.
        mistake = worker_config_error(exc) or worker_memory_error(exc, c)
        if mistake is None:
            raise
        raise mistake from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        out.clean_mirror()  # this node's; a failed worker's on another node is in its /tmp


def checkpoint_step(checkpoint) -> int | None:
    """The training step a Ray Train checkpoint of this loop was taken at."""
    if checkpoint is None:
        return None
    from .checkpoint import STATE_FILE

    with checkpoint.as_directory() as d:
        return json.loads((Path(d) / STATE_FILE).read_text()).get("step")


def stop_on_sigterm(out: RunDir) -> Any:
    """SIGTERM (Kubernetes, Docker, systemd) asks the workers to checkpoint at the next
    log step and stop (train.loop reads the request), so ``resume=true`` loses nothing;
    a second SIGTERM, or Ctrl-C, stops at once. Installed after ``ray.init``, whose own
    handler prints a native stack dump and leaves the embedded cluster's processes.
    Returns the handler it replaced (None off the main thread: a sweep's trials)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    asked = False

    def request_stop(signum, frame):
        nonlocal asked
        if asked:
            raise KeyboardInterrupt
        asked = True
        print(
            "SIGTERM: stopping after a checkpoint at the next log step (again: stop now)",
            flush=True,
        )
        out.local.mkdir(parents=True, exist_ok=True)
        (out.local / STOP_FILE).write_text("")
        out.push(STOP_FILE)

    return signal.signal(signal.SIGTERM, request_stop)  # the handler it replaces


def diverged(c: dict[str, Any], m: dict[str, Any], result) -> ConfigError:
    """The run stopped on a NaN / inf loss (train.loop wrote ``m``: its step and loss):
    one line with the step and the knobs. Nothing was exported; the checkpoints before it
    are kept."""
    tr = c["trainer"]
    step = checkpoint_step(result.checkpoint)
    before = (
        f"; the checkpoint of step {step} is from before it (resume=true with a lower "
        "trainer.lr continues from there)"
        if step is not None and step < m["step"]
        else ""
    )
    return ConfigError(
        "trainer.lr",
        f"the loss became {m['loss']} by step {m['step']} (checked every "
        f"trainer.log_every={tr['log_every']} steps and at each checkpoint): training "
        "diverged and nothing was exported; lower trainer.lr, keep trainer.grad_clip on, "
        f"lengthen the warmup (trainer.warmup_ratio), or use bf16 rather than fp16{before}",
    )


def checkpoint_location(out: RunDir, checkpoint) -> str | None:
    """Where Ray Train put the last checkpoint, as the user wrote the location."""
    if checkpoint is None:
        return None
    return uri_of(out.location, checkpoint.path) if out.remote else checkpoint.path


def report(c: dict[str, Any], out: RunDir, result) -> dict[str, Any]:
    """Plot the loss curve (and confusion matrix) next to the run's metrics; the summary."""
    model_dir = c["export_dir"]
    curve = plot_loss_curve(out.pull(METRICS_FILE).parent)
    out.push(LOSS_CURVE_FILE)
    artifact = Artifact.loads(RunDir(model_dir).read_text(ARTIFACT_FILE))
    summary = {
        "output_dir": str(out),
        "model_dir": str(model_dir),
        "loss_curve": out.uri(LOSS_CURVE_FILE) if out.remote else str(curve),
        "metrics_file": out.uri(METRICS_FILE),
        "checkpoint": checkpoint_location(out, result.checkpoint),
        # The exported model's metrics: the best eval under trainer.metric, else the last.
        "metrics": artifact.metrics,
        "best": artifact.best,
    }
    lines = [
        f"model:      {summary['model_dir']} (step {artifact.step})",
        f"loss curve: {summary['loss_curve']}",
        f"metrics:    {summary['metrics_file']}",
    ]
    if "eval_confusion" in artifact.metrics:
        summary["confusion_matrix"] = out.uri(CONFUSION_FILE)
        plot_confusion(
            artifact.metrics["eval_confusion"], artifact.labels, out.local / CONFUSION_FILE
        )
        out.push(CONFUSION_FILE)
        lines.append(f"confusion:  {summary['confusion_matrix']}")
    print("\n".join(lines))
    return summary
