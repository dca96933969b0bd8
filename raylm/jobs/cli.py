"""``raylm submit`` and ``raylm jobs``: any raylm command on a remote Ray cluster."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import ConfigError

SUBMIT_USAGE = """usage: raylm submit [--address URL] [--no-wait] [--dry-run] -- <command> [key=value ...]
       raylm submit [--address URL] [--no-wait] [--dry-run] jobs/<spec>.yaml [key=value ...]

Validates the command's config here (files only the cluster has are left to it, and
named), submits it through the Ray Jobs API with the project's code, prints the job id
and dashboard URL, streams the logs and exits with the job's status. The address comes
from --address, then RAY_ADDRESS, then ray.address; the token (clusters with
RAY_AUTH_MODE=token) from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token."""

JOBS_USAGE = """usage: raylm jobs [--address URL] list
       raylm jobs [--address URL] status ID
       raylm jobs [--address URL] logs ID [--follow]
       raylm jobs [--address URL] stop ID"""


def _submit_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="raylm submit", usage=SUBMIT_USAGE, add_help=True)
    p.add_argument("--address", help="the cluster's dashboard, http://HEAD:8265")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return")
    p.add_argument("--dry-run", action="store_true", help="validate and print; submit nothing")
    return p


def _split(args: list[str]) -> tuple[list[str], list[str]]:
    """Options before ``--`` (or before the first word that is not an option)."""
    if "--" in args:
        i = args.index("--")
        return args[:i], args[i + 1 :]
    options, i = [], 0
    while i < len(args) and args[i].startswith("-"):
        options.append(args[i])
        if args[i] == "--address" and i + 1 < len(args):
            options.append(args[i + 1])
            i += 1
        i += 1
    return options, args[i:]


def submit(args: list[str], prog: str = "raylm submit") -> int:
    from ..api import check_function, compose_checked
    from . import submission
    from .client import connect, resolve_address
    from .follow import exit_code, on_interrupt, stream_logs

    options, target = _split(args)
    opts = _submit_parser().parse_args(options)
    if not target:
        raise ConfigError(
            "command", "nothing to submit: give -- <command> [key=value ...] or a job spec"
        )
    runtime_env, extra = {}, {}
    if target[0].endswith((".yaml", ".yml")):
        spec_path = Path(target[0])
        command, overrides, runtime_env, extra = submission.read_spec(spec_path)
        overrides = [*overrides, *target[1:]]
    else:
        command, overrides = submission.parse_command_line(target, "command")

    # Compose and check as the cluster will, before anything leaves this machine.
    cfg = compose_checked(command, overrides, "overrides")
    user_address = cfg.get("ray", {}).get("address")
    overrides = submission.with_cluster_address(cfg, overrides)
    cfg = compose_checked(command, overrides, "overrides")  # as the cluster will see it
    unread = check_function(command)(cfg, False)
    job = submission.Submission(
        command=command,
        overrides=overrides,
        runtime_env=submission.build_runtime_env(runtime_env, cfg),
        options=extra,
    )
    print(f"{prog}: the config of raylm {command} is valid here", end="")
    print(f"; left to the cluster (its files): {', '.join(unread)}" if unread else "")
    if opts.dry_run:
        print(f"entrypoint: {job.entrypoint}")
        print(f"runtime_env: {job.runtime_env}")
        return 0

    address = resolve_address(opts.address, user_address)
    cluster = connect(address)
    job_id = cluster.call(
        "submit_job",
        entrypoint=job.entrypoint,
        runtime_env=job.runtime_env,
        submission_id=job.submission_id(),
        metadata={"raylm_command": command, **extra.get("metadata", {})},
        **{k: v for k, v in extra.items() if k != "metadata"},
    )
    print(f"{prog}: job {job_id} submitted to {address}")
    print(f"{prog}: dashboard: {cluster.dashboard(job_id)}")
    if opts.no_wait:
        print(job_id)
        return 0
    try:
        stream_logs(cluster, job_id)
    except KeyboardInterrupt:
        return on_interrupt(cluster, job_id, prog)
    return exit_code(cluster, job_id, prog)


def _jobs_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="raylm jobs", usage=JOBS_USAGE)
    p.add_argument("--address", help="the cluster's dashboard, http://HEAD:8265")
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("list")
    for name in ("status", "stop"):
        sub.add_parser(name).add_argument("job_id")
    logs = sub.add_parser("logs")
    logs.add_argument("job_id")
    logs.add_argument("--follow", "-f", action="store_true")
    return p


def jobs(args: list[str], prog: str = "raylm jobs") -> int:
    from .client import connect, resolve_address
    from .follow import stream_logs, wait_until_done

    opts = _jobs_parser().parse_args(args)
    cluster = connect(resolve_address(opts.address))
    if opts.action == "list":
        rows = sorted(cluster.call("list_jobs"), key=lambda j: j.start_time or 0)
        print(f"{'JOB ID':<40} {'STATUS':<10} ENTRYPOINT")
        for j in rows:
            print(f"{j.submission_id or j.job_id:<40} {j.status.value:<10} {j.entrypoint}")
        return 0
    if opts.action == "status":
        info = cluster.call("get_job_info", opts.job_id)
        code = f" (exit code {info.driver_exit_code})" if info.driver_exit_code is not None else ""
        message = (info.message or "").strip().splitlines()
        print(f"{opts.job_id}: {info.status.value}{code}" + (f": {message[-1]}" if message else ""))
        return 0
    if opts.action == "logs":
        if opts.follow:
            stream_logs(cluster, opts.job_id)
        else:
            sys.stdout.write(cluster.call("get_job_logs", opts.job_id))
        return 0
    stopped = cluster.call("stop_job", opts.job_id)
    status = wait_until_done(cluster, opts.job_id, timeout_s=30)
    note = "" if stopped else " (it had already ended)"
    print(f"{opts.job_id}: {status}{note}")
    return 0


def main(command: str, args: list[str]) -> int:
    """``raylm submit`` / ``raylm jobs``: user mistakes end as one ``error:`` line and exit
    status 2; a failed job exits with its driver's code."""
    prog = f"raylm {command}"
    try:
        return submit(args, prog) if command == "submit" else jobs(args, prog)
    except ConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
