"""The application, built from plain ``args`` so the same application starts from
``raylm serve``, from ``serve run raylm.serve:build_app``, and from a Serve config file
(``serve deploy``, a KubeRay RayService) that names ``raylm.serve:build_app``.

One model: a single deployment, the :class:`Gateway` ingress holding the model in its
own process, so a request is one hop (measured: the ingress -> model Ray call cost
about 2.8 ms of a 9 ms request on 2 cores). Several models: the Gateway routes to one
:class:`ModelServer` deployment per model, each scaled on its own.
"""

from __future__ import annotations

from typing import Any

IMPORT_PATH = "raylm.serve:build_app"
GATEWAY = "Gateway"

# args keys and their defaults (conf/serve.yaml documents each)
DEFAULTS: dict[str, Any] = {
    "models": {},
    "num_replicas": 1,
    "autoscaling": {
        "min_replicas": 1,
        "max_replicas": 0,
        "target_ongoing_requests": 2.0,
        "upscale_delay_s": 30.0,
        "downscale_delay_s": 600.0,
    },
    "cpus_per_replica": 1.0,
    "gpus_per_replica": 0.0,
    "threads": 1,
    "max_ongoing_requests": 32,
    "max_queued_requests": 64,
    "retry_after_s": 1,
    "batch_size": 16,
    "batch_wait_s": 0.0,
    "max_texts": 64,
    "max_chars": 2000,
    "max_new_tokens": 256,
    "max_body_bytes": 1_048_576,
    "auth_token_env": None,
    "auth_token_file": None,
    "cors_origins": [],
}
LIMITS = ("max_texts", "max_chars", "max_new_tokens", "max_body_bytes", "retry_after_s")
# ModelServer's arguments besides name and model_dir.
ENGINE = ("batch_size", "batch_wait_s", "threads")
# Serve's logging as raylm serve runs it without ray.verbose: no access-log line per
# request (5 % of a replica's CPU samples at concurrency 32 went to them), no INFO.
QUIET_LOGGING = {"log_level": "WARNING", "enable_access_log": False}
# Who may call: where the bearer token is (never the token itself), and CORS origins.
ACCESS = ("auth_token_env", "auth_token_file", "cors_origins")
# The ingress only parses JSON and forwards: no CPU reserved, and never the bottleneck
# queue (overload is measured, and answered, at the model deployments).
GATEWAY_OPTIONS = {"max_ongoing_requests": 1000, "ray_actor_options": {"num_cpus": 0}}


def deployment_name(model: str) -> str:
    return f"model-{model}"


def model_deployment_options(args: dict[str, Any]) -> dict[str, Any]:
    """Replicas (or autoscaling), resources and queue limits of each model deployment."""
    a = {**DEFAULTS, **args}
    options: dict[str, Any] = {
        "max_ongoing_requests": a["max_ongoing_requests"],
        "max_queued_requests": a["max_queued_requests"],
        # Past the queue Serve itself answers 503 + Retry-After (at the proxy, at
        # HAProxy's replica port, or to the Gateway's handle call).
        "backpressure_config": {"status_code": 503, "retry_after_s": a["retry_after_s"]},
        "ray_actor_options": {"num_cpus": a["cpus_per_replica"], "num_gpus": a["gpus_per_replica"]},
    }
    scaling = {**DEFAULTS["autoscaling"], **(a["autoscaling"] or {})}
    if scaling["max_replicas"]:
        options["autoscaling_config"] = dict(scaling)
    else:
        options["num_replicas"] = a["num_replicas"]
    return options


def build_app(args: dict[str, Any]):
    """Serve's application builder: ``args`` -> the bound application."""
    from .gateway import Gateway
    from .replica import ModelServer

    a = {**DEFAULTS, **args}
    if not a["models"]:
        raise ValueError("args.models is empty: give {name: model_dir, ...}")
    options = model_deployment_options(a)
    limits, access = {k: a[k] for k in LIMITS}, {k: a[k] for k in ACCESS}
    engines = {
        name: {"name": name, "model_dir": str(model_dir), **{k: a[k] for k in ENGINE}}
        for name, model_dir in a["models"].items()
    }
    if single(a):
        return Gateway.options(name=GATEWAY, **options).bind(engines, limits, access)
    handles = {
        name: ModelServer.options(name=deployment_name(name), **options).bind(**engine)
        for name, engine in engines.items()
    }
    return Gateway.options(name=GATEWAY, **GATEWAY_OPTIONS).bind(handles, limits, access)


def single(args: dict[str, Any]) -> bool:
    """One model: served from the ingress deployment itself."""
    return len(args["models"]) == 1


def serve_config(
    args: dict[str, Any], app_name: str, route_prefix: str, host: str, port: int
) -> dict[str, Any]:
    """A Serve config (``ServeDeploySchema``): what ``serve deploy`` and a RayService's
    ``serveConfigV2`` take. The deployment options are spelled out so an operator can
    edit replicas or resources in the file without touching args."""
    options = model_deployment_options(args)
    if single(args):
        deployments = [{"name": GATEWAY, **options}]
    else:
        deployments = [{"name": GATEWAY, **GATEWAY_OPTIONS}]
        deployments += [{"name": deployment_name(m), **options} for m in args["models"]]
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": host, "port": port},
        "applications": [
            {
                "name": app_name,
                "route_prefix": route_prefix,
                "import_path": IMPORT_PATH,
                "args": args,
                "deployments": deployments,
            }
        ],
    }
