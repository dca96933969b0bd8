"""Following a job: stream its logs, then exit with its status."""

from __future__ import annotations

import asyncio
import sys

from .client import Cluster, one_line_errors

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


async def _tail(cluster: Cluster, job_id: str) -> None:
    with one_line_errors(cluster.address, cluster.token):
        async for chunk in cluster.client.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()


def stream_logs(cluster: Cluster, job_id: str) -> None:
    """Print the job's logs as they come, until it ends."""
    from ..config import ConfigError

    try:
        asyncio.run(_tail(cluster, job_id))
    except ConfigError:
        raise
    except Exception as exc:  # the websocket dropped: say so, then report the status
        print(f"(log stream ended: {type(exc).__name__}: {exc})", file=sys.stderr)


def wait_until_done(cluster: Cluster, job_id: str, timeout_s: float = 60.0) -> str:
    """The job's status once terminal (the log stream can end a moment before)."""
    import time

    deadline = time.monotonic() + timeout_s
    status = str(cluster.call("get_job_status", job_id).value)
    while status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.5)
        status = str(cluster.call("get_job_status", job_id).value)
    return status


def exit_code(cluster: Cluster, job_id: str, prog: str) -> int:
    """One line with the job's end, and the exit status for it: 0 for SUCCEEDED, the
    driver's own non-zero exit code for FAILED (2 for a config error), 1 otherwise."""
    status = wait_until_done(cluster, job_id)
    info = cluster.call("get_job_info", job_id)
    if status == "SUCCEEDED":
        print(f"{prog}: job {job_id} SUCCEEDED")
        return 0
    code = info.driver_exit_code
    detail = (info.message or "").strip().splitlines()
    reason = f": {detail[-1]}" if detail else ""
    exit_note = f" (exit code {code})" if code is not None else ""
    print(f"{prog}: error: job {job_id} {status}{exit_note}{reason}", file=sys.stderr)
    return code if code and status == "FAILED" else 1


def on_interrupt(cluster: Cluster, job_id: str, prog: str) -> int:
    """Ctrl-C while following: ask whether to stop the job or leave it running. With no
    terminal to ask on, leave it running (stopping is the step that loses work)."""
    answer = ""
    if sys.stdin is not None and sys.stdin.isatty():
        try:
            answer = input(f"\nstop job {job_id} too? [y/N] ").strip().lower()
        except (EOFError, KeyboardInterrupt):
            answer = ""
    if answer in ("y", "yes", "s", "stop"):
        cluster.call("stop_job", job_id)
        status = wait_until_done(cluster, job_id, timeout_s=30)
        print(f"{prog}: job {job_id} {status}", file=sys.stderr)
        return 130
    print(
        f"\n{prog}: detached; job {job_id} keeps running. Follow it with `raylm jobs logs "
        f"{job_id} --follow`, stop it with `raylm jobs stop {job_id}`",
        file=sys.stderr,
    )
    return 130
