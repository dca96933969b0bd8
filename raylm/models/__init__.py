"""Models: presets and ``init_from`` directories -> transformers models, custom heads."""

from .build import auto_class, build_model, flops_per_token, max_input_length, preset_config
from .heads import HEADS, ClassificationHead, register_head
from .pruned import PRUNED_CLASSES  # noqa: F401  (registers the pruned architectures)

__all__ = [
    "HEADS",
    "ClassificationHead",
    "auto_class",
    "build_model",
    "flops_per_token",
    "max_input_length",
    "preset_config",
    "register_architectures",
    "register_head",
]


def register_architectures() -> None:
    """Make raylm's own model classes (custom heads, pruned encoders) loadable with
    transformers' Auto classes; importing :mod:`raylm.models` already does this."""
