"""Models: presets and ``init_from`` directories -> transformers models."""

from .build import AUTO_CLASS, auto_class, build_model, flops_per_token, preset_config

__all__ = ["AUTO_CLASS", "auto_class", "build_model", "flops_per_token", "preset_config"]
