"""``raylm serve``: check the model directories, then start the application on the
embedded local cluster or ``ray.address`` (and wait for Ctrl-C), or write its Serve
config file with ``serve.export=FILE``."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .._internal.logs import quiet_libraries
from ..config import ConfigError
from ..config.validate import get_key, local_path, writable_path
from ..models.artifact import model_info

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _default_name(model_dir: str) -> str:
    """``runs/cls/model`` -> ``cls``: an export is always called model/, its run is not."""
    p = Path(model_dir).expanduser().resolve()
    return p.parent.name if p.name == "model" else p.name


def resolve_models(c: dict[str, Any], files: bool | None = True) -> dict[str, dict[str, Any]]:
    """``model_dir`` and ``serve.models=[name:DIR, ...]`` -> {name: model_info}; with
    ``files=False`` the directories are left unread ({name: {"model_dir": DIR}}), with
    ``None`` only those that exist here are read (an export for another machine)."""
    models: dict[str, dict[str, Any]] = {}
    entries = [(None, c["model_dir"])] if c["model_dir"] else []
    for item in c["serve"]["models"]:
        # name=DIR as the issue spells it (Hydra wants it quoted: 'cls=runs/cls/model'),
        # or name:DIR, which Hydra takes unquoted.
        name, sep, path = str(item).partition("=" if "=" in str(item) else ":")
        if not sep or not name or not path:
            raise ConfigError("serve.models", f"entries are name:DIR (or 'name=DIR'), got {item!r}")
        entries.append((name, path))
    if not entries:
        raise ConfigError("model_dir", "give model_dir=DIR or serve.models=[name:DIR,...]")
    for name, path in entries:
        key = "model_dir" if name is None else "serve.models"
        local_path(path, key)  # replicas load from a path (a shared mount on a cluster)
        name = name or _default_name(path)
        if not _NAME.match(name):
            raise ConfigError(key, f"model name {name!r}: use letters, digits, _ . -")
        if name in models:
            raise ConfigError(key, f"model name {name!r} is given twice")
        read = files or (files is None and Path(path).expanduser().exists())
        models[name] = model_info(path, key) if read else {"model_dir": path}
    return models


def check(cfg: DictConfig, files: bool = True) -> list[str]:
    c = OmegaConf.to_container(cfg, resolve=True)
    validate_serve(c)
    resolve_models(c, files)
    return [] if files else [k for k in ("model_dir", "serve.models") if get_key(c, k)]


def validate_serve(c: dict[str, Any]) -> None:
    from .ingress import env

    s = c["serve"]
    env(s["ingress"])
    if s["export"]:
        writable_path(s["export"], "serve.export", "file")
    for key in ("num_replicas", "threads", "max_ongoing_requests", "batch_size", "max_texts"):
        if s[key] < 1:
            raise ConfigError(f"serve.{key}", f"must be >= 1, got {s[key]}")
    for key in ("max_chars", "max_new_tokens", "max_queued_requests", "max_body_bytes"):
        if s[key] < 1:
            raise ConfigError(f"serve.{key}", f"must be >= 1, got {s[key]}")
    if s["cpus_per_replica"] < 0 or s["gpus_per_replica"] < 0:
        raise ConfigError("serve.cpus_per_replica", "CPUs and GPUs per replica must be >= 0")
    if s["batch_wait_s"] < 0:
        raise ConfigError("serve.batch_wait_s", f"must be >= 0, got {s['batch_wait_s']}")
    a = s["autoscaling"]
    if a["max_replicas"] and not 0 <= a["min_replicas"] <= a["max_replicas"]:
        raise ConfigError(
            "serve.autoscaling.min_replicas",
            f"must be in [0, serve.autoscaling.max_replicas={a['max_replicas']}], "
            f"got {a['min_replicas']}",
        )
    if a["target_ongoing_requests"] <= 0:
        raise ConfigError("serve.autoscaling.target_ongoing_requests", "must be > 0")
    for key in ("upscale_delay_s", "downscale_delay_s"):
        if a[key] < 0:
            raise ConfigError(f"serve.autoscaling.{key}", f"must be >= 0, got {a[key]}")
    if s["detach"] and not c["ray"]["address"]:
        raise ConfigError(
            "serve.detach",
            "deploys to a running cluster and returns; give ray.address (an embedded "
            "cluster would stop with this process)",
        )
    if s["cors_origins"] and any(not str(o).strip() for o in s["cors_origins"]):
        raise ConfigError("serve.cors_origins", "origins are like https://app.example.com")
    if not s["export"] and not s["detach"]:
        # Served here: the token must be here (an export or a detached deploy reads it
        # where it runs, from the cluster's env or mounted Secret).
        from .gateway import read_token

        try:
            read_token(s)
        except ValueError as exc:
            key, _, message = str(exc).partition(": ")
            raise ConfigError(key, message) from None
    elif s["auth_token_env"] and s["auth_token_file"]:
        raise ConfigError("serve.auth_token_env", "give one of them or serve.auth_token_file")
    if not str(s["route_prefix"]).startswith("/"):
        raise ConfigError("serve.route_prefix", f"must start with /, got {s['route_prefix']!r}")
    if not 0 < s["port"] < 65536:
        raise ConfigError("serve.port", f"must be a TCP port, got {s['port']}")


def app_args(c: dict[str, Any], infos: dict[str, dict] | None = None) -> dict[str, Any]:
    """``build_app``'s args from the config (and the models' descriptions, if read)."""
    from .app import DEFAULTS

    s = c["serve"]
    args = {k: s[k] for k in DEFAULTS if k != "models"}
    infos = infos if infos is not None else resolve_models(c)
    args["models"] = {name: info["model_dir"] for name, info in infos.items()}
    return args


def write_config(path: Path, config: dict[str, Any], header: str = "") -> Path:
    """Checked against Serve's own schema, written under a temp name, then renamed."""
    import yaml
    from ray.serve.schema import ServeDeploySchema

    ServeDeploySchema.model_validate(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(header + yaml.safe_dump(config, sort_keys=False))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def ingress_note(mode: str) -> str:
    """The export's first lines: the ingress mode is the cluster's environment, which a
    Serve config cannot set."""
    from .ingress import env

    pairs = " ".join(f"{k}={v}" for k, v in env(mode).items())
    return f"# serve.ingress={mode}: start the cluster's Ray processes with {pairs}\n"


def check_port_free(host: str, port: int) -> None:
    """On the embedded cluster the HTTP proxy binds here; a taken port would otherwise
    surface as proxy tracebacks and a hang, not as one line."""
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                "serve.port", f"{host}:{port} is not free ({exc.strerror}); pick another serve.port"
            ) from None


def stop_on_sigterm() -> None:
    """SIGTERM (what Kubernetes, Docker and systemd send) stops like Ctrl-C: Serve shuts
    down, requests in flight finish, the embedded cluster goes with this process.

    Without it Ray's native handler, installed by ray.init, prints a stack dump and the
    process hangs pushing errors to a driver that is gone, leaving the cluster's agents
    running. Only from the main thread (a test may call ``start`` from another)."""
    import signal
    import threading

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def replica_needs(s: dict[str, Any], n_models: int) -> dict[str, tuple[float, str]]:
    """What the replicas ask of the cluster at start (each model is a deployment)."""
    a = s["autoscaling"]
    replicas = n_models * (max(1, a["min_replicas"]) if a["max_replicas"] else s["num_replicas"])
    needs = {"CPU": (replicas * s["cpus_per_replica"], "serve.num_replicas")}
    if s["gpus_per_replica"]:
        needs["GPU"] = (replicas * s["gpus_per_replica"], "serve.gpus_per_replica")
    return needs


def start(c: dict[str, Any], args: dict[str, Any]) -> str:
    """Deploy on the connected (or a new embedded) cluster; returns the base URL."""
    import ray
    from ray import serve

    from .._internal.cluster import check_resources, init_ray
    from .app import QUIET_LOGGING, build_app
    from .ingress import use

    s = c["serve"]
    if not c["ray"]["address"] and not ray.is_initialized():
        check_port_free(s["host"], s["port"])
        use(s["ingress"])  # the cluster about to start serves in this mode
    init_ray(c)
    check_resources(replica_needs(s, len(args["models"])), embedded=not c["ray"]["address"])
    stop_on_sigterm()  # after ray.init, which installs its own handlers
    # Access logs and controller INFO lines only with ray.verbose=true.
    logs = None if c["ray"]["verbose"] else QUIET_LOGGING
    serve.start(http_options={"host": s["host"], "port": s["port"]}, logging_config=logs)
    serve.run(
        build_app(args), name=s["app_name"], route_prefix=s["route_prefix"], logging_config=logs
    )
    host = "127.0.0.1" if s["host"] in ("0.0.0.0", "::") else s["host"]
    return f"http://{host}:{s['port']}{s['route_prefix'].rstrip('/')}"


def run(cfg: DictConfig) -> dict[str, Any]:
    c = OmegaConf.to_container(cfg, resolve=True)
    validate_serve(c)
    s = c["serve"]
    # An export is often for another machine (a RayService): its paths may not exist here.
    infos = resolve_models(c, None if s["export"] else True)
    args = app_args(c, infos)
    if s["export"]:
        unread = [name for name, info in infos.items() if "task" not in info]
        if unread:
            print(f"not on this machine, left to the cluster to check: {', '.join(unread)}")
        from .app import serve_config

        config = serve_config(args, s["app_name"], s["route_prefix"], s["host"], s["port"])
        path = write_config(
            local_path(s["export"], "serve.export").resolve(), config, ingress_note(s["ingress"])
        )
        print(f"Serve config written to {path}; deploy it with `serve deploy {path}`")
        print(ingress_note(s["ingress"]).replace("# ", "").strip())
        return {"export": str(path), "models": args["models"]}
    quiet_libraries(c["ray"]["verbose"])
    url = start(c, args)
    for name, info in infos.items():
        print(f"{name}: {info['task']} model at {url}{info['endpoint']}")
    from ray import serve

    if s["detach"]:
        print(f"deployed at {url} (API docs: {url}/docs); it keeps running on the cluster")
        print(f"stop it with `serve shutdown` or `serve delete {s['app_name']}` on the cluster")
        return {"url": url, "models": args["models"]}
    print(f"serving at {url} (API docs: {url}/docs); Ctrl-C stops")

    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("shutting down", flush=True)
    finally:
        # Deleting the app first drains it: its replicas stop taking new requests and
        # answer those in flight while the ingress still runs (serve.shutdown alone
        # stops the ingress with them, and their clients see the connection drop).
        serve.delete(s["app_name"])
        serve.shutdown()
    return {"url": url, "models": args["models"]}
