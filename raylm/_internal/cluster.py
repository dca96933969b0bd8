"""Connect to the cluster every command runs on: ``ray.address``, or an embedded one."""

from __future__ import annotations

import os
from typing import Any


def init_ray(c: dict[str, Any]) -> None:
    """``ray.init`` once per process from a command's ``ray`` config section."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if c["ray"]["address"]:
        ray.init(address=c["ray"]["address"], log_to_driver=True)
    else:
        ray.init(num_cpus=c["ray"]["num_cpus"])
