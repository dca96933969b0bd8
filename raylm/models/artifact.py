"""``raylm.json``: what an exported model directory is, written and read in one place.

Every stage that writes a model (training's export, each compression step) writes an
:class:`Artifact`; every stage that reads one (predict, serve, compress, the report)
reads it through :func:`model_info`, which also describes directories raylm did not
write, from their architecture.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ..config.errors import ConfigError

ARTIFACT_FILE = "raylm.json"
# runtime -> the file that holds its weights (checked before anything loads them)
RUNTIME_WEIGHTS = {"torch": ("*.safetensors", "*.bin"), "onnxruntime": ("model.onnx",)}


@dataclasses.dataclass
class Artifact:
    task: str
    # What it was trained from: a preset name or the init_from directory.
    model: str | None = None
    step: int | None = None
    tokens_seen: int | None = None
    # The exported model's metrics (the best eval under trainer.metric, else the last).
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    labels: list[str] | None = None
    best: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    config_hash: str | None = None
    # How the export was verified: max logit difference to the trained model, Auto class.
    export_check: dict[str, Any] | None = None
    # Which runtime loads the weights: "torch" (transformers Auto classes) or
    # "onnxruntime" (model.onnx, from raylm compress's quantize step).
    runtime: str = "torch"
    # raylm compress: {"chain": [one entry per step: method, settings, source, ...],
    # "load": how to load this directory}; None for a model no step has touched.
    compression: dict[str, Any] | None = None

    @classmethod
    def read(cls, model_dir: str | Path) -> Artifact | None:
        path = Path(model_dir) / ARTIFACT_FILE
        return cls.loads(path.read_text()) if path.exists() else None

    @classmethod
    def loads(cls, text: str) -> Artifact:
        """From ``raylm.json``'s text (read from wherever it is stored)."""
        data = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def write(self, model_dir: str | Path) -> Path:
        from .._internal.redact import redact

        path = Path(model_dir) / ARTIFACT_FILE
        data = dataclasses.asdict(self)
        data["config"] = redact(data["config"])  # tokens and keys never reach the disk
        path.write_text(json.dumps(data, indent=2, default=str))
        return path

    def replace(self, **changes: Any) -> Artifact:
        return dataclasses.replace(self, **changes)


def _task_from_architecture(config: dict[str, Any]) -> str | None:
    from ..tasks import TASKS

    for arch in config.get("architectures") or []:
        for name, task in TASKS.items():
            if any(arch.endswith(suffix) for suffix in task.architectures):
                return name
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def check_model_dir(model_dir: Path, key: str) -> tuple[Artifact | None, dict[str, Any]]:
    """Read every header a load would read (config, raylm.json, weights, tokenizer), so a
    corrupted or missing file is one line here, on the driver, not a traceback in each
    replica, actor or worker later. Returns raylm.json (or None) and config.json."""
    if not model_dir.is_dir():
        raise ConfigError(key, f"no such directory: {model_dir}")
    if not (model_dir / "config.json").exists():
        raise ConfigError(key, f"{model_dir} is not a save_pretrained directory (no config.json)")
    try:
        config = json.loads((model_dir / "config.json").read_text())
        artifact = Artifact.read(model_dir)
    except (ValueError, TypeError) as exc:
        raise ConfigError(key, f"{model_dir}: a corrupted JSON file ({_first_line(exc)})") from None
    runtime = artifact.runtime if artifact else "torch"
    if runtime not in RUNTIME_WEIGHTS:
        raise ConfigError(
            key, f"{model_dir}: unknown runtime {runtime!r}; known: {', '.join(RUNTIME_WEIGHTS)}"
        )
    if not any(any(model_dir.glob(p)) for p in RUNTIME_WEIGHTS[runtime]):
        raise ConfigError(
            key,
            f"{model_dir} has a config but no weights ({' or '.join(RUNTIME_WEIGHTS[runtime])}); "
            "give the directory an export wrote (output_dir/model)",
        )
    from safetensors import safe_open

    for weights in sorted(model_dir.glob("*.safetensors")):
        try:
            with safe_open(str(weights), "np"):
                pass  # the header: its tensors must fit the file
        except Exception as exc:  # noqa: BLE001 - SafetensorError and OSError alike
            raise ConfigError(
                key, f"{weights} is corrupted ({_first_line(exc)}); export the model again"
            ) from None
    tokenizer = model_dir / "tokenizer.json"
    if tokenizer.exists():
        from tokenizers import Tokenizer

        try:
            Tokenizer.from_file(str(tokenizer))
        except Exception as exc:  # noqa: BLE001 - the Rust side raises a bare Exception
            raise ConfigError(
                key, f"{tokenizer} is corrupted ({_first_line(exc)}); export the model again"
            ) from None
    return artifact, config


def model_info(model_dir: str | Path, key: str = "model_dir") -> dict[str, Any]:
    """Check that ``model_dir`` is a model raylm can load, and describe it: task,
    endpoint, labels, eval metrics, runtime, compression. ``key`` names the config key
    in the error if it is not."""
    from ..tasks import TASKS

    model_dir = Path(model_dir).expanduser()
    artifact, config = check_model_dir(model_dir, key)
    runtime = artifact.runtime if artifact else "torch"
    task = artifact.task if artifact else _task_from_architecture(config)
    if task not in TASKS or TASKS[task].endpoint is None:
        servable = [n for n, t in TASKS.items() if t.endpoint]
        raise ConfigError(
            key,
            f"{model_dir}: cannot serve task {task!r} (architectures "
            f"{config.get('architectures')}); servable: {', '.join(servable)}",
        )
    labels = artifact.labels if artifact else None
    if labels is None and TASKS[task].labeled:
        id2label = config.get("id2label") or {}
        labels = [id2label[k] for k in sorted(id2label, key=int)]
    metrics = artifact.metrics if artifact else {}
    return {
        "task": task,
        "endpoint": TASKS[task].endpoint,
        "labels": labels,
        "metrics": {
            k: v
            for k, v in (metrics or {}).items()
            if isinstance(v, (int, float)) and k.startswith("eval_")
        },
        "runtime": runtime,
        "compression": artifact.compression if artifact else None,
        "architecture": (config.get("architectures") or [None])[0],
        "model_dir": str(model_dir.resolve()),
    }
