"""raylm: transformer language models from raw text to a served model on a Ray cluster.

The CLI (``raylm <command> key=value ...``) and these functions run the same code.
"""

from .api import COMMANDS, compose, run
from .config import ConfigError
from .models import register_architectures

# raylm's own model classes (custom heads, pruned encoders) load with transformers' Auto
# classes in any process that has imported raylm.
register_architectures()

__version__ = "0.1.0"
__all__ = ["COMMANDS", "ConfigError", "compose", "run"]
