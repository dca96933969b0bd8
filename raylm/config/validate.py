"""Semantic checks on the driver, before any Ray worker starts.

Hydra has already checked types against :mod:`.schema`; these checks are about meaning.
Each raises :class:`ConfigError` naming the key and what is allowed, so a mistake costs
one line of output instead of a cluster start-up and a worker traceback.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError

FAMILIES = ("gpt2", "bert")
TOKENIZER_TYPES = ("bpe", "wordpiece")
PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULES = ("cosine", "linear", "constant")
DATA_SUFFIXES = (".txt", ".text", ".jsonl", ".json", ".csv", ".parquet")


def local_path(value: Any, key: str) -> Path:
    """``value`` as a path; a URI is refused by name. Only output_dir and model.init_from
    go through a store (``_internal.storage``): without this, ``s3://b/x`` would quietly
    become a local directory ``./s3:/b/x``."""
    from .._internal.storage import is_uri

    if is_uri(value):
        raise ConfigError(
            key,
            f"{value} is a URI; this key takes a path (a shared mount on a multi-node "
            "cluster). URIs such as s3:// are for output_dir and model.init_from",
        )
    return Path(os.path.expanduser(str(value)))


def writable_path(value: Any, key: str, kind: str) -> Path:
    """:func:`local_path`, checked to be somewhere this machine can write a ``kind``
    ("file" or "dir") before any work is done: a parent that is a file, or a path that
    is the other kind, would otherwise fail at the end (predict: after predicting every
    row)."""
    path = local_path(value, key)
    if path.exists() and path.is_dir() != (kind == "dir"):
        what = "a directory" if path.is_dir() else "a file"
        raise ConfigError(key, f"{path} is {what}; give a path for a {kind} (or remove it)")
    parent = path.parent if not path.exists() else path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(
            key, f"{parent} is a file, so {path} cannot be created; give another path"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(key, f"{parent} is not writable by this user; give another path")
    return path


def get_key(cfg: Mapping[str, Any], dotted: str) -> Any:
    """``cfg["a"]["b"]`` for ``"a.b"``: config keys are named dotted, as in errors."""
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


def _positive(cfg: Mapping[str, Any], section: str, keys: tuple[str, ...]) -> None:
    for key in keys:
        value = cfg[section][key]
        if value is None or value <= 0:
            raise ConfigError(f"{section}.{key}", f"must be > 0, got {value}")


def check_data_files(files: list[str] | None, key: str, required: bool) -> list[str]:
    """Return the files as absolute paths; a datasets.save_to_disk dir counts as one."""
    files = list(files or [])
    if not files:
        if required:
            raise ConfigError(key, "is empty; give a list of local data files, e.g. [corpus.txt]")
        return []
    out = []
    for f in files:
        p = local_path(f, key).resolve()
        if not p.exists():
            raise ConfigError(key, f"file not found: {f}")
        if p.is_dir():
            if not (p / "dataset_info.json").exists() and not (p / "state.json").exists():
                raise ConfigError(
                    key, f"{f} is a directory but not one written by datasets.save_to_disk"
                )
        else:
            if p.suffix.lower() not in DATA_SUFFIXES:
                raise ConfigError(
                    key, f"{f}: unsupported file type; allowed: {', '.join(DATA_SUFFIXES)}"
                )
            if p.stat().st_size == 0:
                raise ConfigError(key, f"file is empty: {f}")
        out.append(str(p))
    return out


def validate_tokenizer_job(cfg: Mapping[str, Any], files: bool = True) -> None:
    tok = cfg["tokenizer"]
    if tok["type"] not in TOKENIZER_TYPES:
        raise ConfigError(
            "tokenizer.type", f"must be one of {TOKENIZER_TYPES}, got {tok['type']!r}"
        )
    if tok["vocab_size"] < 64:
        raise ConfigError("tokenizer.vocab_size", f"must be >= 64, got {tok['vocab_size']}")
    if tok["min_frequency"] < 0:
        raise ConfigError(
            "tokenizer.min_frequency",
            f"must be >= 0 (a pair's count to be merged), got {tok['min_frequency']}",
        )
    writable_path(tok["path"], "tokenizer.path", "dir")
    if files:
        check_data_files(cfg["data"]["train_files"], "data.train_files", required=True)
    elif not cfg["data"]["train_files"]:
        raise ConfigError("data.train_files", "is empty; give a list of data files")


def validate_training(cfg: Mapping[str, Any], init_config: Any = None, files: bool = True) -> None:
    """Check a composed ``raylm pretrain`` or ``raylm finetune`` config.

    ``init_config`` is the transformers config of ``model.init_from``, which the caller
    reads; the tokenizer-dependent check is :func:`check_vocab`, run once it is loaded.
    ``files=False`` leaves the data files and the tokenizer unread (they are the
    cluster's: ``raylm submit``).
    """
    from ..tasks import TASKS, get_task

    task = cfg["task"]
    spec = get_task(task)
    model = cfg["model"]
    family = model["family"]
    if family not in FAMILIES:
        raise ConfigError("model.family", f"must be one of {FAMILIES}, got {family!r}")
    if init_config is not None:
        from ..models.build import supports_task

        if not supports_task(init_config, task):
            raise ConfigError(
                "task",
                f"{task!r} does not fit model.init_from={model['init_from']} "
                f"({init_config.model_type}); allowed: {', '.join(t for t in TASKS if supports_task(init_config, t))}",
            )
    elif not model["init_from"] and family not in spec.families:
        # (init_from set but unread: raylm submit's config-only check; the cluster reads it)
        raise ConfigError(
            "task",
            f"{task!r} does not fit model {model['name']!r} ({family}); "
            f"allowed: {', '.join(t for t, s in TASKS.items() if family in s.families)}",
        )
    if model["head"]:
        _check_head(model["head"], task, init_config)
    _positive(cfg, "model", ("hidden_size", "num_layers", "num_heads", "max_positions"))
    if model["hidden_size"] % model["num_heads"]:
        raise ConfigError(
            "model.num_heads",
            f"must divide model.hidden_size ({model['hidden_size']}), got {model['num_heads']}",
        )
    if not str(cfg["output_dir"]).strip():
        raise ConfigError("output_dir", "must be a directory path")
    from .._internal.storage import is_uri

    if files and not is_uri(cfg["output_dir"]):
        writable_path(cfg["output_dir"], "output_dir", "dir")

    tr = cfg["trainer"]
    _positive(
        cfg,
        "trainer",
        (
            "micro_batch_size",
            "grad_accum",
            "seq_len",
            "lr",
            "log_every",
            "eval_every",
            "eval_batches",
            "checkpoint_every",
        ),
    )
    if tr["epochs"] is None:
        _positive(cfg, "trainer", ("max_steps",))
    elif tr["epochs"] <= 0:
        raise ConfigError("trainer.epochs", f"must be > 0, got {tr['epochs']}")
    if tr["warmup_steps"] is not None and tr["warmup_steps"] < 0:
        raise ConfigError("trainer.warmup_steps", f"must be >= 0, got {tr['warmup_steps']}")
    if not 0 <= tr["warmup_ratio"] < 1:
        raise ConfigError("trainer.warmup_ratio", f"must be in [0, 1), got {tr['warmup_ratio']}")
    if tr["schedule"] not in SCHEDULES:
        raise ConfigError("trainer.schedule", f"must be one of {SCHEDULES}, got {tr['schedule']!r}")
    if tr["min_lr_ratio"] is not None:
        if tr["schedule"] == "constant":
            raise ConfigError(
                "trainer.min_lr_ratio",
                "trainer.schedule=constant never decays; drop min_lr_ratio or use cosine or linear",
            )
        if not 0 <= tr["min_lr_ratio"] <= 1:
            raise ConfigError(
                "trainer.min_lr_ratio", f"must be in [0, 1], got {tr['min_lr_ratio']}"
            )
    if tr["precision"] not in PRECISIONS:
        raise ConfigError(
            "trainer.precision", f"must be one of {PRECISIONS}, got {tr['precision']!r}"
        )
    if tr["grad_clip"] < 0:
        raise ConfigError("trainer.grad_clip", f"must be >= 0 (0 disables), got {tr['grad_clip']}")
    if not 0 < tr["mlm_probability"] < 1:
        raise ConfigError(
            "trainer.mlm_probability", f"must be in (0, 1), got {tr['mlm_probability']}"
        )
    if tr["metric_mode"] not in ("min", "max"):
        raise ConfigError("trainer.metric_mode", f"must be min or max, got {tr['metric_mode']!r}")
    if tr["early_stopping_patience"] < 0:
        raise ConfigError(
            "trainer.early_stopping_patience", f"must be >= 0, got {tr['early_stopping_patience']}"
        )
    if tr["metric"] is not None:
        allowed = spec.metrics
        if tr["metric"] not in allowed:
            raise ConfigError(
                "trainer.metric", f"task={task} reports {', '.join(allowed)}; got {tr['metric']!r}"
            )
        if not spec.labeled and not cfg["data"]["eval_files"]:
            raise ConfigError("trainer.metric", "needs data.eval_files to compute it")
    elif tr["early_stopping_patience"]:
        raise ConfigError("trainer.early_stopping_patience", "needs trainer.metric to watch")
    spec.check_config(cfg)

    if init_config is not None:
        from ..models.build import positions_and_vocab

        positions, _ = positions_and_vocab(init_config)
    else:
        positions = model["max_positions"]
    if tr["seq_len"] > positions:
        raise ConfigError(
            "trainer.seq_len",
            f"{tr['seq_len']} exceeds the model's {positions} positions "
            f"(model {model['name']!r}); use trainer.seq_len<={positions}",
        )

    sc = cfg["scaling"]
    if sc["num_workers"] < 1:
        raise ConfigError("scaling.num_workers", f"must be >= 1, got {sc['num_workers']}")
    if sc["cpus_per_worker"] <= 0:
        raise ConfigError("scaling.cpus_per_worker", f"must be > 0, got {sc['cpus_per_worker']}")
    if sc["use_gpu"] and sc["gpus_per_worker"] <= 0:
        raise ConfigError(
            "scaling.gpus_per_worker",
            f"must be > 0 with scaling.use_gpu=true, got {sc['gpus_per_worker']}",
        )
    if sc["placement_strategy"] not in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"):
        raise ConfigError(
            "scaling.placement_strategy", "must be one of PACK, SPREAD, STRICT_PACK, STRICT_SPREAD"
        )
    if tr["precision"] == "fp16" and not sc["use_gpu"]:
        raise ConfigError(
            "trainer.precision", "fp16 needs a GPU (scaling.use_gpu=true); on CPU use fp32 or bf16"
        )

    ds = cfg["deepspeed"]
    if ds["zero_stage"] not in (0, 1, 2, 3):
        raise ConfigError("deepspeed.zero_stage", f"must be 0, 1, 2 or 3, got {ds['zero_stage']}")
    if ds["offload_param"] and ds["zero_stage"] != 3:
        raise ConfigError(
            "deepspeed.offload_param",
            f"parameter offload needs deepspeed.zero_stage=3, got {ds['zero_stage']} (use deepspeed=zero3_offload)",
        )
    if ds["offload_optimizer"] and ds["zero_stage"] == 0:
        raise ConfigError(
            "deepspeed.offload_optimizer",
            "optimizer offload needs deepspeed.zero_stage 1, 2 or 3, got 0",
        )
    plan = cfg.get("plan") or {}
    if plan and not 0 <= plan["margin"] < 1:
        raise ConfigError("plan.margin", f"is a fraction in [0, 1), got {plan['margin']}")
    for key in ("device_memory_gb", "host_memory_gb"):
        if plan.get(key) is not None and plan[key] <= 0:
            raise ConfigError(
                f"plan.{key}", f"must be > 0 (or null: read it from the cluster), got {plan[key]}"
            )
    if files:
        check_data_files(cfg["data"]["train_files"], "data.train_files", required=True)
        check_data_files(cfg["data"]["eval_files"], "data.eval_files", required=False)
    elif not cfg["data"]["train_files"]:
        raise ConfigError("data.train_files", "is empty; give a list of data files")
    if not str(cfg["data"]["text_column"]).strip():
        raise ConfigError("data.text_column", "must name a column")
    if spec.labeled:
        if not str(cfg["data"]["label_column"]).strip():
            raise ConfigError("data.label_column", "must name a column")
        if not cfg["data"]["eval_files"] and not 0 < cfg["data"]["eval_fraction"] < 1:
            raise ConfigError(
                "data.eval_fraction",
                f"must be in (0, 1) when data.eval_files is empty, got {cfg['data']['eval_fraction']}",
            )

    tok_path = Path(os.path.expanduser(str(cfg["tokenizer"]["path"])))
    if files and not model["init_from"] and not (tok_path / "tokenizer.json").exists():
        raise ConfigError(
            "tokenizer.path",
            f"no tokenizer at {tok_path}; train one with `raylm tokenizer tokenizer.path={tok_path} data.train_files=[...]`",
        )


def _check_head(head: str, task: str, init_config: Any) -> None:
    from ..models.heads import resolve_head
    from ..tasks import TASKS

    if not TASKS[task].custom_heads:
        able = ", ".join(n for n, t in TASKS.items() if t.custom_heads)
        raise ConfigError("model.head", f"custom heads are for task={able}, got task={task}")
    resolve_head(head)  # raises naming model.head if unknown or not importable
    saved = getattr(init_config, "head", None)
    if saved is not None and saved != head:
        raise ConfigError(
            "model.head",
            f"model.init_from already carries head {saved!r}; drop model.head or set it to {saved!r}",
        )


def check_vocab(cfg: Mapping[str, Any], tokenizer_vocab: int, init_config: Any = None) -> None:
    """The tokenizer must fit the model's embeddings (the preset's or init_from's)."""
    model_vocab = None
    if init_config is not None:
        from ..models.build import positions_and_vocab

        _, model_vocab = positions_and_vocab(init_config)
    vocab = model_vocab or cfg["model"]["vocab_size"]
    if vocab is not None and tokenizer_vocab > vocab:
        raise ConfigError(
            "model.vocab_size" if not model_vocab else "tokenizer.path",
            f"the tokenizer has {tokenizer_vocab} tokens but the model's embeddings hold {vocab}; "
            "use a smaller tokenizer.vocab_size or a larger model.vocab_size",
        )
