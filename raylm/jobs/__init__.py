"""Running raylm commands on a remote Ray cluster through the Ray Jobs API."""

from .client import Cluster, connect, find_token, resolve_address
from .submission import Submission, build_runtime_env, read_spec

__all__ = [
    "Cluster",
    "Submission",
    "build_runtime_env",
    "connect",
    "find_token",
    "read_spec",
    "resolve_address",
]
