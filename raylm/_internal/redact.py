"""Secrets out of every config raylm logs or saves (``raylm.json``, ``.hydra/``, a
sweep's files, ``--dry-run``).

A key is a secret by its name's last word: ``token``, ``secret``, ``password``, ``key``
(``hf_token``, ``aws_secret_access_key``, ``api_key``), in any case. Names that only hold
where a secret is (``auth_token_env``, ``auth_token_file``) or count things
(``max_new_tokens``) are kept. Values are matched in three shapes: a mapping's entry, an
override string ``a.b.hf_token=...``, and a URI's query (``s3://b/run?secret_key=...``,
which pyarrow reads credentials from).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "***"
_SECRET = re.compile(r"(?:^|[_.\-])(?:token|secret|password|passwd|key|credentials?)$", re.I)


def is_secret_name(name: str) -> bool:
    return bool(_SECRET.search(str(name).lstrip("+~")))


def _redact_text(text: str) -> str:
    key, sep, value = text.partition("=")
    if sep and re.fullmatch(r"[+~]*[\w.\-]+", key) and is_secret_name(key):
        return f"{key}={REDACTED}"
    if "://" in text and "?" in text:
        parts = urlsplit(text)
        query = parse_qsl(parts.query, keep_blank_values=True)
        if any(is_secret_name(k) for k, _ in query):
            safe = [(k, REDACTED if is_secret_name(k) else v) for k, v in query]
            return urlunsplit(parts._replace(query=urlencode(safe, safe="*")))
    return text


def redact(value: Any) -> Any:
    """A copy of ``value`` (dicts, lists, strings) with every secret replaced by ***."""
    if isinstance(value, dict):
        return {
            k: REDACTED if is_secret_name(k) and v not in (None, "") else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    if isinstance(value, str):
        return _redact_text(value)
    return value


def redact_yaml_files(directory) -> None:
    """Rewrite each YAML file in ``directory`` (Hydra's ``.hydra/``) with secrets redacted."""
    from pathlib import Path

    import yaml

    for path in Path(directory).glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        clean = redact(data)
        if clean != data:
            path.write_text(yaml.safe_dump(clean, sort_keys=False))
