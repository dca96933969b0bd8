"""Keep the console to raylm's progress bar and results unless ``ray.verbose=true``."""

from __future__ import annotations

import logging
import os
import warnings

NOISY = (
    "ray.data",
    "ray.train",
    "ray.tune",
    "ray.serve",
    "DeepSpeed",
    "deepspeed",
    "torch.distributed",
    "transformers.modeling_utils",
    "datasets",
)


def quiet_libraries(verbose: bool) -> None:
    if verbose:
        return
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
    # Deprecation chatter from library internals (e.g. DeepSpeed's all_gather_into_tensor).
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*exclude_resources.*")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
