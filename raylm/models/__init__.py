"""Models: presets and ``init_from`` directories -> transformers models, custom heads."""

from .build import AUTO_CLASS, auto_class, build_model, flops_per_token, preset_config
from .heads import HEADS, ClassificationHead, register_head

__all__ = [
    "AUTO_CLASS",
    "HEADS",
    "ClassificationHead",
    "auto_class",
    "build_model",
    "flops_per_token",
    "preset_config",
    "register_head",
]
