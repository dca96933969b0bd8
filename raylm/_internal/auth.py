"""The Ray cluster token a client should send, found where Ray looks for it.

Ray 2.60 clusters can require token authentication. Ray's clients (``ray.init`` with an
address, the Jobs SDK) send a token only when ``RAY_AUTH_MODE=token`` is set on the
client machine; without it they retry and fail with "Authentication token is missing"
(``ray.init`` after 20 s, measured). raylm sends the token whenever one is found, so a
laptop needs the token and nothing else. A token sent to a cluster without
authentication is ignored (measured), so finding one is reason enough to send it.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..config import ConfigError

DEFAULT_TOKEN_FILE = "~/.ray/auth_token"


def find_token() -> tuple[str, str] | None:
    """(token, where it came from): ``RAY_AUTH_TOKEN``, then the file
    ``RAY_AUTH_TOKEN_PATH``, then ``~/.ray/auth_token`` (Ray's own order); None if none."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH", "").strip()
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ConfigError("RAY_AUTH_TOKEN_PATH", f"{path}: no such file")
        return p.read_text().strip(), f"RAY_AUTH_TOKEN_PATH ({path})"
    p = Path(DEFAULT_TOKEN_FILE).expanduser()
    if p.is_file() and p.read_text().strip():
        return p.read_text().strip(), DEFAULT_TOKEN_FILE
    return None


def send_token_if_found() -> tuple[str, str] | None:
    """Set ``RAY_AUTH_MODE=token`` for this process when a token is found and the mode
    is not set already (an explicit ``disabled`` is respected); the token found."""
    found = find_token()
    if found and "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"
        # Ray reads RAY_* settings once, when it is imported: re-read them, as Ray's own
        # switch to token mode does (without this the token is still not sent; measured).
        from ray._raylet import Config

        Config.initialize("")
    return found
