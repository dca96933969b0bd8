"""The one place the Hydra config becomes a DeepSpeed config.

Batch sizes, precision, ZeRO stage, offload, optimizer and LR schedule all come from the
raylm keys, so they cannot disagree with what the training loop and the metrics assume;
``deepspeed.overrides`` is merged last for anything else DeepSpeed offers.
"""

from __future__ import annotations

import copy
from typing import Any


def _merge(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def warmup_steps(tr: dict[str, Any], max_steps: int) -> int:
    """``trainer.warmup_steps`` if set, else ``trainer.warmup_ratio`` of ``max_steps``."""
    if tr["warmup_steps"] is not None:
        return tr["warmup_steps"]
    return round(tr["warmup_ratio"] * max_steps)


def deepspeed_config(cfg: dict[str, Any], world_size: int, max_steps: int) -> dict[str, Any]:
    tr, ds = cfg["trainer"], cfg["deepspeed"]
    zero: dict[str, Any] = {"stage": ds["zero_stage"]}
    if ds["zero_stage"] == 3:
        # Lets the exporter gather full weights onto rank 0 for save_pretrained.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if ds["offload_optimizer"]:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": bool(cfg["scaling"]["use_gpu"])}
    if ds["offload_param"]:
        zero["offload_param"] = {"device": "cpu", "pin_memory": bool(cfg["scaling"]["use_gpu"])}

    # DeepSpeed's schedulers need at least one warmup step; 0 means "as short as allowed".
    warmup = max(1, min(warmup_steps(tr, max_steps), max_steps))
    min_ratio = tr["min_lr_ratio"]
    if tr["schedule"] == "cosine":
        scheduler = {
            "type": "WarmupCosineLR",
            "params": {
                "total_num_steps": max_steps,
                "warmup_num_steps": warmup,
                "warmup_min_ratio": 0.0,
                "cos_min_ratio": 0.1 if min_ratio is None else min_ratio,
                "warmup_type": "linear",
            },
        }
    elif tr["schedule"] == "linear":
        # WarmupDecayLR runs between warmup_min_lr and warmup_max_lr both ways: it warms
        # up from, and decays linearly back to, lr * min_lr_ratio (0 unless set).
        scheduler = {
            "type": "WarmupDecayLR",
            "params": {
                "total_num_steps": max_steps,
                "warmup_num_steps": warmup,
                "warmup_min_lr": tr["lr"] * (min_ratio or 0.0),
                "warmup_max_lr": tr["lr"],
                "warmup_type": "linear",
            },
        }
    else:
        scheduler = {
            "type": "WarmupLR",
            "params": {
                "warmup_num_steps": warmup,
                "warmup_min_lr": 0.0,
                "warmup_max_lr": tr["lr"],
                "warmup_type": "linear",
            },
        }

    optimizer = {
        "type": "AdamW",
        "params": {
            "lr": tr["lr"],
            "betas": [tr["beta1"], tr["beta2"]],
            "eps": 1e-8,
            "weight_decay": tr["weight_decay"],
        },
    }
    cpu_only = not cfg["scaling"]["use_gpu"]
    if cpu_only:
        # On CPU DeepSpeed's FusedAdam and DeepSpeedCPUAdam are C++ ops JIT-compiled on
        # first use (30-60 s); torch's AdamW is the same update with no compile step. With
        # no GPU, "offload to CPU" moves nothing, so DeepSpeedCPUAdam buys nothing either.
        optimizer["params"]["torch_adam"] = True

    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": tr["micro_batch_size"],
        "gradient_accumulation_steps": tr["grad_accum"],
        "train_batch_size": tr["micro_batch_size"] * tr["grad_accum"] * world_size,
        "gradient_clipping": tr["grad_clip"],
        "zero_optimization": zero,
        "optimizer": optimizer,
        "scheduler": scheduler,
        "bf16": {"enabled": tr["precision"] == "bf16"},
        "fp16": {"enabled": tr["precision"] == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        # raylm logs itself (rank 0, one progress bar); silence DeepSpeed's periodic prints.
        "steps_per_print": 10**9,
        # Let ZeRO-Offload step with torch's AdamW on CPU-only runs (see above).
        "zero_force_ds_cpu_optimizer": not cpu_only,
        "wall_clock_breakdown": False,
    }
    return _merge(config, ds.get("overrides") or {})


def _dotted(tree: dict, leaf: str, prefix: str = "deepspeed.overrides") -> str | None:
    """The dotted key under ``tree`` whose last part is ``leaf``, if one is."""
    for key, value in tree.items():
        here = f"{prefix}.{key}"
        if key == leaf:
            return here
        if isinstance(value, dict):
            found = _dotted(value, leaf, here)
            if found:
                return found
    return None


def check_overrides(cfg: dict[str, Any]) -> None:
    """Validate ``deepspeed.overrides`` with DeepSpeed's own config classes, here on the
    driver: in the workers a bad value is a pydantic error printed once per restart.

    The batch sizes are left out: they depend on the world size, which only the workers
    know (raylm derives them; an override of them is checked there)."""
    overrides = cfg["deepspeed"].get("overrides") or {}
    if not overrides:
        return
    from deepspeed.runtime.config import DeepSpeedConfig
    from pydantic import ValidationError

    from ..config import ConfigError

    config = deepspeed_config(cfg, world_size=1, max_steps=cfg["trainer"].get("max_steps") or 1)
    config.pop("train_batch_size", None)
    try:
        DeepSpeedConfig(config)
    except ValidationError as exc:
        error = exc.errors()[0]
        leaf = str(error["loc"][-1]) if error["loc"] else ""
        key = _dotted(overrides, leaf) or "deepspeed.overrides"
        got = f", got {error['input']!r}" if error["type"] != "missing" else ""
        raise ConfigError(key, f"{error['msg']}{got} (DeepSpeed's {exc.title})") from None
    except (AssertionError, ValueError, TypeError, KeyError) as exc:
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError("deepspeed.overrides", f"DeepSpeed refuses them: {text}") from None
