"""What an exported model directory is: its task (from raylm.json, else its architecture),
labels, metrics, and the serving endpoint for it. Read on the driver to validate a
``model_dir`` before anything starts, and by the stages that load it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..config.errors import ConfigError

# task -> the endpoint that serves it
ENDPOINTS = {
    "seq_cls": "/v1/classify",
    "token_cls": "/v1/tag",
    "mlm": "/v1/fill-mask",
    "mlm_nsp": "/v1/fill-mask",
    "clm": "/v1/generate",
}
# architecture name suffix -> task, for directories raylm did not write
ARCHITECTURE_TASKS = {
    "ForSequenceClassification": "seq_cls",
    "ForTokenClassification": "token_cls",
    "ForMaskedLM": "mlm",
    "ForPreTraining": "mlm_nsp",
    "ForCausalLM": "clm",
    "LMHeadModel": "clm",
}


def model_info(model_dir: str | Path, key: str = "model_dir") -> dict[str, Any]:
    model_dir = Path(model_dir).expanduser()
    if not (model_dir / "config.json").exists():
        raise ConfigError(key, f"{model_dir} is not a save_pretrained directory (no config.json)")
    if not any(model_dir.glob("*.safetensors")) and not any(model_dir.glob("*.bin")):
        raise ConfigError(key, f"{model_dir} holds no weights (*.safetensors or *.bin)")
    config = json.loads((model_dir / "config.json").read_text())
    artifact_file = model_dir / "raylm.json"
    artifact = json.loads(artifact_file.read_text()) if artifact_file.exists() else {}
    task = artifact.get("task")
    if task is None:
        archs = config.get("architectures") or []
        task = next(
            (t for a in archs for suffix, t in ARCHITECTURE_TASKS.items() if a.endswith(suffix)),
            None,
        )
    if task not in ENDPOINTS:
        raise ConfigError(
            key,
            f"{model_dir}: cannot serve task {task!r} (architectures "
            f"{config.get('architectures')}); servable: {', '.join(ENDPOINTS)}",
        )
    labels = artifact.get("labels")
    if labels is None and task in ("seq_cls", "token_cls"):
        id2label = config.get("id2label") or {}
        labels = [id2label[k] for k in sorted(id2label, key=int)]
    return {
        "task": task,
        "endpoint": ENDPOINTS[task],
        "labels": labels,
        "metrics": {
            k: v
            for k, v in (artifact.get("metrics") or {}).items()
            if isinstance(v, (int, float)) and k.startswith("eval_")
        },
        "compression": artifact.get("compression"),
        "architecture": (config.get("architectures") or [None])[0],
        "model_dir": str(model_dir.resolve()),
    }
