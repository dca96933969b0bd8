"""``raylm <command> [hydra overrides]``: one Hydra app per command.

Each command composes ``conf/<command>.yaml``; Hydra's own flags (``--cfg job``,
``--help``, ``--multirun``) work as usual. User mistakes end as one ``error:`` line and
exit status 2, never a traceback.
"""

from __future__ import annotations

import sys

from .api import COMMANDS, check_function, command_function, config_name, mark_started
from .config import ConfigError, conf_dir, register_configs

USAGE = """usage: raylm <command> [key=value ...] [--dry-run] [hydra flags]
       raylm submit [--address URL] [--no-wait] -- <command> [key=value ...]
       raylm submit jobs/<spec>.yaml [key=value ...]
       raylm jobs list | status ID | logs ID [--follow] | stop ID

Transformer language models from raw text to a served model on a Ray cluster.

commands:
{commands}

Each command composes conf/<command>.yaml with Hydra; for its keys and groups run
`raylm <command> --help`, for the composed config `raylm <command> --cfg job`.
--dry-run validates everything (files included), prints the resolved config and exits.
`raylm submit` runs a command on a remote Ray cluster through the Ray Jobs API.
"""


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {cmd.description}" for name, cmd in COMMANDS.items()]
    return USAGE.format(commands="\n".join(lines))


def _fail(command: str, message: str) -> None:
    print(f"raylm {command}: error: {message}", file=sys.stderr)
    sys.exit(2)


def _check_group_choices(command: str, overrides: list[str]) -> None:
    """Reject ``group=unknown`` with one line listing the choices.

    Hydra would say the same across a dozen lines plus its search path; this is the
    most common typo (``model=gpt2-tiney``), so it gets the short answer.
    """
    root = conf_dir()
    groups = {p.name for p in root.iterdir() if p.is_dir()}
    for item in overrides:
        if item.startswith("-") or "=" not in item:
            continue
        key, value = item.split("=", 1)
        key = key.lstrip("+~")
        if (
            key not in groups
            or "," in value
            or not value
            or value.startswith(("glob(", "range(", "choice("))
        ):
            continue
        choices = sorted(p.stem for p in (root / key).glob("*.yaml"))
        if value not in choices:
            kind = "preset" if key == "model" else "option"
            _fail(
                command, f"{key}={value} is not a known {kind}; choose one of: {', '.join(choices)}"
            )


# Hydra's flags that take a value (the next argument).
_FLAGS_WITH_VALUE = ("--cfg", "-c", "--package", "-p", "--config-name", "-cn")


def _check_composes(command: str, config: str, args: list[str]) -> None:
    """Compose once before Hydra does, so its errors (an unknown key, a wrong type, a
    malformed override) are one ``error:`` line rather than Hydra's block of six."""
    from ._internal.storage import is_uri
    from .api import compose_config
    from .config.validate import writable_path

    if {"-m", "--multirun", "--config-path", "-cp", "--config-dir", "-cd"} & set(args):
        return  # sweep values, or another config tree: Hydra's own parsing
    overrides, skip = [], False
    for a in args:
        if skip or a.startswith("-"):
            skip = not skip and a in _FLAGS_WITH_VALUE
            continue
        overrides.append(a)
    try:
        cfg = compose_config(config, overrides)
        # Hydra makes output_dir (its run dir) before the command starts: a parent that
        # is a file would be its traceback.
        if "output_dir" in cfg and not is_uri(str(cfg.output_dir)):
            writable_path(cfg.output_dir, "output_dir", "dir")
    except ConfigError as exc:
        _fail(command, str(exc))


def _redact_hydra_output() -> None:
    """Hydra has just saved the config and overrides in output_dir/.hydra/: the copy a
    user shares with a run must not carry their tokens (see _internal.redact)."""
    from pathlib import Path

    from hydra.core.hydra_config import HydraConfig

    from ._internal.redact import redact_yaml_files

    hc = HydraConfig.get()
    if hc.output_subdir:
        redact_yaml_files(Path(hc.runtime.output_dir) / hc.output_subdir)


def _dry_run(command: str):
    def dry_run(cfg) -> None:
        from omegaconf import OmegaConf

        from ._internal.redact import redact

        check_function(command)(cfg, True)
        print(OmegaConf.to_yaml(redact(OmegaConf.to_container(cfg, resolve=True))), end="")
        print(f"raylm {command}: dry run: the config is valid; nothing was run")

    return dry_run


def main(argv: list[str] | None = None) -> None:
    import hydra
    import psutil

    mark_started(psutil.Process().create_time())
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return
    command, rest = argv[0], argv[1:]
    if command in ("submit", "jobs"):
        from .jobs.cli import main as jobs_main

        sys.exit(jobs_main(command, rest))
    if command not in COMMANDS:
        _fail(command, f"unknown command; choose one of: {', '.join(COMMANDS)}")
    config = config_name(command)
    if command == "plan" and rest and rest[0] in ("pretrain", "finetune"):
        config, rest = rest[0], rest[1:]  # raylm plan finetune <finetune overrides>
    _check_group_choices(command, rest)
    register_configs()
    dry_run = "--dry-run" in rest
    rest = [a for a in rest if a != "--dry-run"]
    if dry_run or command == "plan":  # else Hydra creates output_dir, writes .hydra/ in it
        rest += ["hydra.output_subdir=null", "hydra.run.dir=."]
    run = _dry_run(command) if dry_run else command_function(command)

    def task(cfg) -> None:
        _redact_hydra_output()
        try:
            run(cfg)
        except ConfigError as exc:
            _fail(command, str(exc))
        except KeyboardInterrupt:
            print(f"raylm {command}: interrupted", file=sys.stderr)
            sys.exit(130)

    if command == "sweep":
        from .tune.space import split_command_line

        rest = split_command_line(rest)  # the base command's keys travel in extra_overrides
    _check_composes(command, config, rest)
    sys.argv = [f"raylm-{command}", *rest]
    hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name=config)(task)()


if __name__ == "__main__":
    main()
