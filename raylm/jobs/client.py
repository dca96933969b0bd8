"""The Ray Jobs API of a cluster: where it is, the token it wants, and one-line errors.

Ray's own client sends a token only when ``RAY_AUTH_MODE=token`` is set on the client
machine, and otherwise fails with a paragraph of advice. raylm sends the token whenever
one is found (``RAY_AUTH_TOKEN``, then the file ``RAY_AUTH_TOKEN_PATH``, then
``~/.ray/auth_token``, Ray's own order), so a laptop needs the token and nothing else.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._internal.auth import DEFAULT_TOKEN_FILE, find_token
from ..config import ConfigError

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient


def resolve_address(flag: str | None, config_address: str | None = None) -> str:
    """``--address``, then ``RAY_ADDRESS``, then the command's ``ray.address``: the
    cluster's dashboard URL (``http://HEAD:8265``; ``HEAD:8265`` means http)."""
    for key, value in (
        ("--address", flag),
        ("RAY_ADDRESS", os.environ.get("RAY_ADDRESS")),
        ("ray.address", config_address),
    ):
        if not value:
            continue
        if value == "auto" or value.startswith("ray://"):
            raise ConfigError(
                key,
                f"{value!r} is an address for ray.init; jobs go to the cluster's dashboard: "
                "give --address http://HEAD:8265",
            )
        return value.rstrip("/") if "://" in value else f"http://{value.rstrip('/')}"
    raise ConfigError(
        "--address",
        "no cluster to submit to: give --address http://HEAD:8265 or set RAY_ADDRESS",
    )


@contextlib.contextmanager
def one_line_errors(address: str, token: tuple[str, str] | None) -> Iterator[None]:
    """Turn what the Jobs client raises for a wrong cluster, token or job id into one
    :class:`ConfigError` line."""
    import requests
    from ray.exceptions import AuthenticationError

    try:
        yield
    except AuthenticationError as exc:
        text = str(exc)
        if "invalid" in text.lower() or "Forbidden" in text:
            where = token[1] if token else "nowhere"
            raise ConfigError(
                "RAY_AUTH_TOKEN",
                f"the cluster at {address} refused the token from {where}; set RAY_AUTH_TOKEN "
                "(or RAY_AUTH_TOKEN_PATH) to the cluster's token",
            ) from None
        raise ConfigError(
            "RAY_AUTH_TOKEN",
            f"the cluster at {address} wants a token and none was found; set RAY_AUTH_TOKEN, "
            f"RAY_AUTH_TOKEN_PATH or {DEFAULT_TOKEN_FILE} (`ray get-auth-token` on the head prints it)",
        ) from None
    except (ConnectionError, requests.exceptions.ConnectionError) as exc:
        raise ConfigError(
            "--address",
            f"cannot reach a Ray dashboard at {address} ({type(exc).__name__}); check the "
            "address and that the dashboard port (8265 by default) is open",
        ) from None
    except RuntimeError as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "does not exist" in message or "404" in message:
            raise ConfigError("job id", message) from None
        raise


@dataclass
class Cluster:
    """A connected Jobs API client and what its errors need to say."""

    address: str
    client: JobSubmissionClient
    token: tuple[str, str] | None

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``client.<method>(...)`` with one-line errors."""
        with one_line_errors(self.address, self.token):
            return getattr(self.client, method)(*args, **kwargs)

    def dashboard(self, job_id: str | None = None) -> str:
        return f"{self.address}/#/jobs/{job_id}" if job_id else self.address


def connect(address: str) -> Cluster:
    """A Jobs API client for ``address``, carrying the token if one is configured."""
    import logging

    from ray.job_submission import JobSubmissionClient

    # Ray's client logs each upload step and each closed log stream at INFO.
    for name in (
        "ray.dashboard.modules.job.sdk",
        "ray.dashboard.modules.dashboard_sdk",
        "ray._private.runtime_env.packaging",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    token = find_token()
    headers = {"Authorization": f"Bearer {token[0]}"} if token else {}
    if not token:
        # Ray adds its own loader's token when token mode is on in this process, and that
        # loader caches: a token set and unset since (a notebook, a test) would still be
        # sent. Re-read, so Ray finds what find_token found: nothing (and says so, below).
        from ray._raylet import AuthenticationTokenLoader

        AuthenticationTokenLoader.instance().reset_cache()
    with one_line_errors(address, token):
        client = JobSubmissionClient(address, headers=headers)
        client.list_jobs()  # the constructor does not authenticate; fail here, not later
    return Cluster(address, client, token)
