"""Configuration: typed Hydra schemas, the conf/ tree, and semantic validation."""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError
from .schema import SCHEMAS, register_configs
from .validate import validate_tokenizer_job, validate_training

__all__ = [
    "SCHEMAS",
    "ConfigError",
    "conf_dir",
    "register_configs",
    "validate_training",
    "validate_tokenizer_job",
]


def conf_dir() -> Path:
    """The Hydra config tree: ``raylm/conf`` in a wheel, ``<repo>/conf`` in a checkout."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "pretrain.yaml").exists():
            return candidate
    raise FileNotFoundError(f"raylm's conf/ directory is missing (looked next to {here})")
