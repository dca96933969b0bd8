"""What goes to the cluster: the entrypoint, the runtime env, the job's resources.

A job spec (``jobs/<name>.yaml``) is what ``ray job submit`` takes, written down:

    entrypoint: python -m raylm pretrain model=gpt2-tiny ... ray.address=auto
    runtime_env: {pip: [...], env_vars: {...}}     # optional
    entrypoint_num_cpus: 1                          # optional, as in ray job submit
"""

from __future__ import annotations

import copy
import importlib.util
import shlex
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ..config import ConfigError, conf_dir

SPEC_KEYS = (
    "entrypoint",
    "runtime_env",
    "entrypoint_num_cpus",
    "entrypoint_num_gpus",
    "entrypoint_memory",
    "entrypoint_resources",
    "metadata",
)
# Never uploaded from a checkout: environments, caches, run outputs, data, weights.
# Anchored (leading /) where a package directory shares the name (raylm/data).
EXCLUDES = [
    ".git",
    "/.venv",
    "/venv",
    "/.whl",
    "/.gpusnap",
    "/outputs",
    "/multirun",
    "/runs",
    "/data",
    "/build",
    "/dist",
    "/bench/results",
    "__pycache__",
    "*.pyc",
    ".pytest_cache",
    ".ruff_cache",
    "*.egg-info",
    "*.safetensors",
    "*.onnx",
    "*.pt",
]
# The job's driver on the cluster joins that cluster.
CLUSTER_ADDRESS = "ray.address=auto"


@dataclass
class Submission:
    command: str
    overrides: list[str]
    runtime_env: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # entrypoint_num_cpus, ...

    @property
    def entrypoint(self) -> str:
        return shlex.join(["python", "-m", "raylm", self.command, *self.overrides])

    def submission_id(self) -> str:
        """Readable and unique: ``raylm-pretrain-20261125-181002-3f2a``."""
        return f"raylm-{self.command}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


def parse_command_line(words: list[str], where: str) -> tuple[str, list[str]]:
    """``[raylm | python -m raylm] <command> key=value ...`` -> (command, overrides)."""
    from ..api import COMMANDS

    words = list(words)
    if words[:1] == ["raylm"]:
        words = words[1:]
    elif (
        len(words) >= 3
        and Path(words[0]).name.startswith("python")
        and words[1:3] == ["-m", "raylm"]
    ):
        words = words[3:]
    if not words or words[0] not in COMMANDS:
        got = words[0] if words else "nothing"
        raise ConfigError(where, f"expected a raylm command ({', '.join(COMMANDS)}), got {got!r}")
    return words[0], words[1:]


def read_spec(path: Path) -> tuple[str, list[str], dict[str, Any], dict[str, Any]]:
    """A job spec file -> (command, overrides, runtime_env, options)."""
    import yaml

    try:
        spec = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read the job spec: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), f"not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(spec, dict) or "entrypoint" not in spec:
        raise ConfigError(
            str(path), "a job spec is a mapping with an entrypoint: raylm <command> ..."
        )
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(
            f"{path.name}: {unknown[0]}", f"unknown key; a job spec has {', '.join(SPEC_KEYS)}"
        )
    command, overrides = parse_command_line(
        shlex.split(str(spec["entrypoint"])), f"{path.name}: entrypoint"
    )
    runtime_env = spec.get("runtime_env") or {}
    if not isinstance(runtime_env, dict):
        raise ConfigError(f"{path.name}: runtime_env", "must be a mapping (pip, env_vars, ...)")
    options = {k: v for k, v in spec.items() if k not in ("entrypoint", "runtime_env")}
    return command, overrides, runtime_env, options


def checkout_root() -> Path | None:
    """The repository raylm runs from, or None for an installed raylm (a wheel)."""
    root = conf_dir().parent
    if (root / "pyproject.toml").exists() and (root / "raylm" / "__init__.py").exists():
        return root
    return None


def _user_module(head: str, root: Path | None) -> str | None:
    """The file or package of a custom head (``model.head=pkg.mod:Class``) that lives
    outside what is uploaded anyway; None for registered heads and raylm's own."""
    if ":" not in head:
        return None
    top = head.split(":", 1)[0].split(".")[0]
    spec = importlib.util.find_spec(top)
    if spec is None or spec.origin in (None, "built-in"):
        return None  # resolve_head has already said it cannot import it
    path = Path(spec.origin)
    path = path.parent if path.name == "__init__.py" else path
    if root is not None and root in path.parents:
        return None
    if "site-packages" in path.parts or "dist-packages" in path.parts:
        return None  # installed; the cluster's image must have it too
    return str(path)


def _as_package(module: Path) -> str:
    """A one-file module as a package of the same name (a temp dir holding it as
    ``__init__.py``): Ray's runtime env takes a ``.py`` file in ``py_modules``, but the
    Jobs SDK uploads every entry as a directory and refuses a file (measured, Ray 2.60)."""
    package = Path(tempfile.mkdtemp(prefix="raylm-py-module-")) / module.stem
    package.mkdir()
    shutil.copyfile(module, package / "__init__.py")
    return str(package)


def heads(c: dict[str, Any]) -> list[str]:
    """Every ``model.head`` a command uses, base commands of a sweep included."""
    found = []
    model = c.get("model") or {}
    if model.get("head"):
        found.append(model["head"])
    for item in [*c.get("base_overrides", []), *c.get("extra_overrides", [])]:
        key, _, value = str(item).partition("=")
        if key.lstrip("+~") == "model.head" and value:
            found.append(value)
    return found


def build_runtime_env(spec_env: dict[str, Any], cfg: DictConfig) -> dict[str, Any]:
    """The spec's runtime env plus raylm's code: the checkout as ``working_dir`` (Ray's
    convention for ``ray job submit --working-dir .``), or the installed package as
    ``py_modules``; a custom head's module joins ``py_modules``."""
    from omegaconf import OmegaConf

    env = copy.deepcopy(spec_env)
    root = checkout_root()
    py_modules = list(env.get("py_modules", []))
    if "working_dir" not in env:
        if root is not None:
            env["working_dir"] = str(root)
            env["excludes"] = [*EXCLUDES, *env.get("excludes", [])]
        else:
            py_modules.append(str(Path(__file__).resolve().parents[1]))
    c = OmegaConf.to_container(cfg, resolve=True)
    for head in heads(c):
        module = _user_module(head, root)
        if module and Path(module).is_file():
            module = _as_package(Path(module))
        if module and module not in py_modules:
            py_modules.append(module)
    if py_modules:
        env["py_modules"] = py_modules
    env_vars = {"TOKENIZERS_PARALLELISM": "false", **env.get("env_vars", {})}
    env["env_vars"] = {k: str(v) for k, v in env_vars.items()}
    return env


def with_cluster_address(cfg: DictConfig, overrides: list[str]) -> list[str]:
    """The job's driver joins the cluster it runs on: ``ray.address=auto`` replaces any
    address the user gave (it named the cluster from outside)."""
    if "ray" not in cfg:
        return overrides
    kept = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != "ray.address"]
    return [*kept, CLUSTER_ADDRESS]
