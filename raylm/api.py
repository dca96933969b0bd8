"""Python entry points: the same commands as the CLI, from a notebook or a test.

from raylm import compose, run
summary = run("pretrain", ["data.train_files=[corpus.txt]", "trainer.max_steps=100"])
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .config import conf_dir, register_configs


@dataclass(frozen=True)
class Command:
    """One raylm command: its driver, its checks, and a line for ``raylm --help``.

    ``check(cfg, files)`` validates a composed config without running anything. With
    ``files=True`` it also reads what the config points at here (data files, tokenizer,
    model directories); with ``files=False`` (``raylm submit``: those paths name the
    cluster's files) it checks the config alone and returns the keys it left unread."""

    run: str
    check: str
    description: str
    # The conf/<config>.yaml it composes; None: conf/<command>.yaml.
    config: str | None = None


COMMANDS: dict[str, Command] = {
    "tokenizer": Command(
        "raylm.data.tokenizer_job:run",
        "raylm.data.tokenizer_job:check",
        "train a BPE or WordPiece tokenizer on text files",
    ),
    "pretrain": Command(
        "raylm.train.job:run",
        "raylm.train.job:check",
        "pretrain a GPT-style (clm) or BERT-style (mlm, mlm_nsp) model",
    ),
    "finetune": Command(
        "raylm.train.job:run",
        "raylm.train.job:check",
        "fine-tune a model for sequence (seq_cls) or token (token_cls) classification",
    ),
    "compress": Command(
        "raylm.compress.job:run",
        "raylm.compress.job:check",
        "distill, prune and quantize a model, with a report of what each step cost and bought",
    ),
    "sweep": Command(
        "raylm.tune.job:run",
        "raylm.tune.job:check",
        "sweep a pretrain, finetune or compress command with Ray Tune (ASHA, PBT, Optuna, ...)",
    ),
    "plan": Command(
        "raylm.train.job:plan",
        "raylm.train.job:check",
        "print which ZeRO stage, offload and micro-batch fit memory: `raylm plan "
        "[pretrain|finetune] <its overrides>` (deepspeed=auto applies it)",
        config="pretrain",
    ),
    "predict": Command(
        "raylm.predict.job:run",
        "raylm.predict.job:check",
        "label or tag every row of a file with a fine-tuned model (Ray Data, actor pool)",
    ),
    "serve": Command(
        "raylm.serve.job:run",
        "raylm.serve.job:check",
        "serve models over HTTP with Ray Serve (or write the Serve config for serve deploy)",
    ),
}


_started_at: float | None = None


def mark_started(at: float | None = None) -> None:
    """Record when the running command started (``at``, else now)."""
    global _started_at
    _started_at = time.time() if at is None else at


def started_at() -> float:
    """When the running command started, for ``time_to_first_step_s``: the process's
    start under the ``raylm`` CLI (imports included: a user waits for them too), the
    latest :func:`run` call from Python, else now."""
    return _started_at or time.time()


def _load(ref: str) -> Callable:
    module, func = ref.split(":")
    return getattr(importlib.import_module(module), func)


def config_name(command: str) -> str:
    return COMMANDS[command].config or command


def require_values(cfg: DictConfig) -> None:
    """A mandatory key (``???`` in the YAML) left unset is one line naming it: OmegaConf
    would hand the literal "???" on (predict read "model_dir: ??? is not a save_pretrained
    directory")."""
    from .config import ConfigError

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        also = f" (also unset: {', '.join(missing[1:])})" if len(missing) > 1 else ""
        raise ConfigError(missing[0], f"is required; give {missing[0]}=VALUE{also}")


def command_function(command: str) -> Callable[[DictConfig], Any]:
    run = _load(COMMANDS[command].run)

    def checked(cfg: DictConfig) -> Any:
        require_values(cfg)
        return run(cfg)

    return checked


def check_function(command: str) -> Callable[[DictConfig, bool], list[str]]:
    check = _load(COMMANDS[command].check)

    def checked(cfg: DictConfig, files: bool) -> list[str]:
        require_values(cfg)
        return check(cfg, files)

    return checked


def compose(command: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``conf/<command>.yaml`` with overrides, exactly as the CLI would.

    Hydra's errors (an unknown key, a malformed override, a wrong type) come out as one
    :class:`ConfigError` line naming the key."""
    if command == "sweep":
        from .tune.space import split_command_line

        overrides = split_command_line(list(overrides))
    return compose_config(config_name(command), overrides)


def compose_config(config: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``conf/<config>.yaml``; see :func:`compose`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from .config.hydra_errors import one_line

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        try:
            return hydra_compose(config_name=config, overrides=list(overrides))
        except (HydraException, OmegaConfBaseException) as exc:
            base = None

            def known(section: str) -> list[str]:
                nonlocal base
                base = base if base is not None else hydra_compose(config_name=config)
                node = OmegaConf.select(base, section) if section else base
                return [str(k) for k in node] if isinstance(node, DictConfig) else []

            raise one_line(exc, overrides, known) from None


def compose_checked(command: str, overrides: Sequence[str], key: str) -> DictConfig:
    """:func:`compose`, its error named by ``key`` (the key that holds ``overrides``, as
    ``base_overrides`` of a sweep): ``key: trainer.lr: takes a number, got 'fast'``."""
    from .config import ConfigError

    try:
        return compose(command, overrides)
    except ConfigError as exc:
        raise ConfigError(key, str(exc)) from None


def check(command: str, overrides: Sequence[str] = (), files: bool = True) -> list[str]:
    """Compose and validate a command without running it (``raylm <command> --dry-run``);
    the keys whose files were left unread (none when ``files``)."""
    return check_function(command)(compose(command, overrides), files)


def run(command: str, overrides: Sequence[str] = ()) -> Any:
    """Compose and run a command in this process; raises ``ConfigError`` on bad input."""
    mark_started()
    return command_function(command)(compose(command, overrides))
