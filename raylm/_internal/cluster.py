"""Connect to the cluster every command runs on: ``ray.address``, or an embedded one."""

from __future__ import annotations

import os
from typing import Any

from .auth import send_token_if_found

# Set in every worker of the job. Ray Train V2 tees a training function's print() to
# stdout and to its logger (stderr), so each ray.experimental.tqdm_ray state line
# reaches the driver twice, and the second copy of a bar's "closed" state re-creates
# the bar: the finished bar is then redrawn above every later line the driver prints.
#
# Ray Train's controller polls its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by
# default): each report (what a sweep's scheduler judges), and a run's end, waits for the
# next poll. At 0.5 s a 20-step fine-tune on 2 CPUs went from 32 s to 26 s, command to
# exit; a poll is one small call per worker. Either is kept if already set.
WORKER_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}


def init_ray(c: dict[str, Any], log_to_driver: bool = True) -> None:
    """``ray.init`` once per process from a command's ``ray`` config section.

    ``log_to_driver=False`` (a sweep) keeps workers' output in Ray's logs: each trial has
    its own log file and the console shows the sweep's table."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)  # the embedded cluster's workers inherit it
    runtime_env = {"env_vars": {key: os.environ[key] for key in WORKER_ENV}}
    address = c["ray"]["address"]
    if address:
        check_reachable(address)
        found = send_token_if_found()
        try:
            ray.init(address=address, log_to_driver=log_to_driver, runtime_env=runtime_env)
        except ConnectionError as exc:
            from ..config import ConfigError

            hint = (
                f"the token from {found[1]} was sent: check that it is this cluster's"
                if found
                else "no token was found (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, "
                "~/.ray/auth_token), which a cluster with token authentication needs"
            )
            raise ConfigError(
                "ray.address", f"cannot connect to a Ray cluster at {address} ({exc}); {hint}"
            ) from None
    else:
        # address="local": a new embedded cluster even when `ray start` runs one here
        # (ray.init() would join that one, and then refuse num_cpus).
        ray.init(
            address="local",
            num_cpus=c["ray"]["num_cpus"],
            log_to_driver=log_to_driver,
            runtime_env=runtime_env,
        )


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Refuse an address nothing answers at, in seconds. ``ray.init`` retries such an
    address for minutes with no line naming it (measured: still retrying after 2 min)."""
    import socket

    from ..config import ConfigError

    target = address.removeprefix("ray://")
    if target == "auto" or "://" in target:
        return  # auto: Ray finds the local cluster itself and fails fast if there is none
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(
            "ray.address",
            f"{address!r} is not HOST:PORT (e.g. 10.0.0.5:6379, ray://head:10001, auto)",
        )
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise ConfigError(
            "ray.address",
            f"nothing answers at {target} ({reason} within {timeout_s:g} s); check the head "
            "node's address and port (6379 for the GCS, ray://HOST:10001 for Ray Client)",
        ) from None


def check_resources(needs: dict[str, tuple[float, str]], embedded: bool) -> None:
    """Refuse a request the cluster can never hold: ``needs`` maps a resource ("CPU",
    "GPU") to (amount, the config key that asks for it). Ray would queue it forever with
    no line saying why. On the embedded cluster that is final; a remote cluster may have
    an autoscaler that adds nodes, so there it is one warning line and the run waits."""
    import ray

    from ..config import ConfigError

    total = ray.cluster_resources()
    for resource, (amount, key) in needs.items():
        have = total.get(resource, 0.0)
        if amount <= have:
            continue
        message = f"asks for {amount:g} {resource} in all, but the cluster has {have:g}" + (
            " (no GPU found)" if resource == "GPU" and not have else ""
        )
        if embedded:
            hint = "ray.num_cpus=N raises the embedded cluster's CPUs" if resource == "CPU" else ""
            raise ConfigError(key, f"{message}; lower it{f', or {hint}' if hint else ''}")
        print(f"{key}: {message}; waiting for the cluster to add nodes", flush=True)


def remote_task(fn, here: bool = False, **resources: Any):
    """``ray.remote(fn)`` with its own resources, scheduled outside any placement group
    the caller runs in. A sweep trial runs inside Tune's placement group, which Tune makes
    capture child tasks; its bundle holds no CPUs, so a captured 1-CPU task could never
    be scheduled there. ``here``: on this process's node (the task reads files that only
    this node has, such as a URI output_dir's mirror)."""
    import ray

    strategy: Any = "DEFAULT"
    if here:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        strategy = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), False)
    return ray.remote(scheduling_strategy=strategy, **resources)(fn)


def check_shared_path(path: str, key: str) -> None:
    """On a multi-node cluster, refuse a ``path`` that not every node sees.

    Workers on every node write there (checkpoint shards, the best model, the export)
    and the driver reads it back, so a node-local directory would lose a run's pieces
    on other machines. The check is real, not a guess from the path's name: the driver
    writes a marker file and a zero-CPU task on each alive node looks for it. Nodes an
    autoscaler adds later are not probed."""
    import uuid
    from pathlib import Path

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from ..config import ConfigError

    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) < 2:
        return
    marker = Path(path) / f".raylm-shared-check-{uuid.uuid4().hex[:8]}"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("")
    try:
        probe = ray.remote(num_cpus=0, max_retries=0)(os.path.exists)
        refs = [
            probe.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(str(marker))
            for n in nodes
        ]
        seen = ray.get(refs, timeout=120)
    finally:
        marker.unlink(missing_ok=True)
    blind = [n["NodeManagerAddress"] for n, ok in zip(nodes, seen, strict=True) if not ok]
    if blind:
        raise ConfigError(
            key,
            f"{path} is local to this node: {len(blind)} of {len(nodes)} nodes of the "
            f"cluster do not see it (e.g. {blind[0]}); on a multi-node cluster put it on "
            "storage every node mounts at the same path (NFS, a ReadWriteMany PVC)",
        )
