"""Python entry points: the same commands as the CLI, from a notebook or a test.

from raylm import compose, run
summary = run("pretrain", ["data.train_files=[corpus.txt]", "trainer.max_steps=100"])
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

from omegaconf import DictConfig

from .config import conf_dir, register_configs

# command -> (module:function taking the composed DictConfig, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "tokenizer": (
        "raylm.data.tokenizer_job:run",
        "train a BPE or WordPiece tokenizer on text files",
    ),
    "pretrain": (
        "raylm.train.job:run",
        "pretrain a GPT-style (clm) or BERT-style (mlm, mlm_nsp) model",
    ),
    "finetune": (
        "raylm.train.job:run",
        "fine-tune a model for sequence (seq_cls) or token (token_cls) classification",
    ),
    "compress": (
        "raylm.compress.job:run",
        "distill, prune and quantize a model, with a report of what each step cost and bought",
    ),
    "sweep": (
        "raylm.tune.job:run",
        "sweep a pretrain, finetune or compress command with Ray Tune (ASHA, PBT, Optuna, ...)",
    ),
    "predict": (
        "raylm.predict.job:run",
        "label or tag every row of a file with a fine-tuned model (Ray Data, actor pool)",
    ),
    "serve": (
        "raylm.serve.job:run",
        "serve models over HTTP with Ray Serve (or write the Serve config for serve deploy)",
    ),
}


def command_function(command: str) -> Callable[[DictConfig], Any]:
    module, func = COMMANDS[command][0].split(":")
    return getattr(importlib.import_module(module), func)


def compose(command: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``conf/<command>.yaml`` with overrides, exactly as the CLI would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    if command == "sweep":
        from .tune.space import split_command_line

        overrides = split_command_line(list(overrides))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return hydra_compose(config_name=command, overrides=list(overrides))


def run(command: str, overrides: Sequence[str] = ()) -> Any:
    """Compose and run a command in this process; raises ``ConfigError`` on bad input."""
    return command_function(command)(compose(command, overrides))
