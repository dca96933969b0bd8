"""Hydra's and OmegaConf's composition errors as one :class:`ConfigError` line.

Hydra prints six lines for a typo (the override, a hint, ``full_key``,
``reference_type``, ``object_type``, and how to get a stack trace). The facts a user needs
are two: which key, and what it takes. This module finds both in the exception Hydra
raised (the OmegaConf cause carries ``full_key``) and says them in one line, with a
"did you mean" for an unknown key.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from typing import Any

from .errors import ConfigError

GRAMMAR = "https://hydra.cc/docs/advanced/override_grammar/basic/"
_TYPES = {"Float": "a number", "Integer": "an integer", "Boolean": "true or false"}


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _bad_syntax(overrides: Sequence[str]) -> tuple[str, str] | None:
    """The first override Hydra's grammar refuses, and why, or None."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for item in overrides:
        try:
            parser.parse_override(item)
        except HydraException as exc:
            key = _override_key(item)
            if "=" not in item and not item.startswith("~"):
                return key, f"has no value; write {key}=VALUE (or ~{key} to delete it)"
            reason = str(exc).splitlines()[0].replace(f"Error parsing override '{item}'", "")
            reason = reason.strip() or "malformed"
            return key, f"cannot parse {item!r} ({reason}); see Hydra's override grammar: {GRAMMAR}"
    return None


def _first_line(text: str) -> str:
    return next((x.strip() for x in text.splitlines() if x.strip()), text.strip())


def _value_message(key: str, cause: Any, overrides: Sequence[str]) -> str:
    """What a key takes, from OmegaConf's ``ValidationError``."""
    text = _first_line(str(cause))
    given = next(
        (o.split("=", 1)[1] for o in overrides if "=" in o and _override_key(o) == key), None
    )
    m = re.match(r"Value '(.*)' of type '\w+' could not be converted to (\w+)", text)
    if m:
        return f"takes {_TYPES.get(m.group(2), m.group(2))}, got {m.group(1)!r}"
    m = re.match(r"Value '(.*)' is not a valid bool", text)
    if m:
        return f"takes true or false, got {m.group(1)!r}"
    if "is not a ListConfig, list or tuple" in text:
        return f"takes a list, e.g. {key}=[{given or 'a,b'}]; got {given!r}"
    if "is not a DictConfig" in text or "is not a subclass of" in text:
        return f"is a config section, not a value; set its keys ({key}.KEY=VALUE), got {given!r}"
    return text


def _unknown_key_message(
    key: str, known: Callable[[str], list[str]] | None, overrides: Sequence[str]
) -> str:
    parent, _, leaf = key.rpartition(".")
    written = next((_override_key(o) for o in overrides if _override_key(o).startswith(key)), key)
    message = "is not a config key"
    names = known(parent) if known else []
    close = difflib.get_close_matches(leaf, names, n=1, cutoff=0.6)
    if close:
        message += f"; did you mean {f'{parent}.' if parent else ''}{close[0]}?"
    elif names:
        message += f"; {parent or 'the config'} has: {', '.join(sorted(names))}"
    return message + f" (to add a key of your own, write +{written}=VALUE)"


def one_line(
    exc: BaseException,
    overrides: Sequence[str],
    known: Callable[[str], list[str]] | None = None,
) -> ConfigError:
    """``exc`` (raised composing ``overrides``) as one ConfigError naming the key.

    ``known(section)`` lists the keys of a config section, for "did you mean".
    """
    from hydra.errors import OverrideParseException

    syntax = _bad_syntax(overrides) if isinstance(exc, OverrideParseException) else None
    if syntax:
        return ConfigError(*syntax)
    cause = exc.__cause__ or exc
    key = getattr(cause, "full_key", None)
    text = str(exc)
    if key:
        if type(cause).__name__ in ("ConfigAttributeError", "ConfigKeyError"):
            return ConfigError(key, _unknown_key_message(key, known, overrides))
        return ConfigError(key, _value_message(key, cause, overrides))
    m = re.search(r"'([^']+)' does not exist", text)  # ~key of a key that is not there
    if m:
        return ConfigError(m.group(1), "cannot be deleted: it is not in the config")
    m = re.search(r"An item is already at '([^']+)'", text)
    if m:
        k = m.group(1)
        return ConfigError(k, f"already exists; write {k}=VALUE (no +) to change it")
    m = re.search(r"Ambiguous value for argument '([^']+)'", text)
    if m:
        k = _override_key(m.group(1))
        return ConfigError(
            k,
            "has a comma; for a list write [a,b], for a string quote it: 'a,b' (sweeps: --multirun)",
        )
    mentioned = next((_override_key(o) for o in overrides if _override_key(o) in text), "overrides")
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    noise = ("full_key", "reference_type", "object_type", "Set the environment variable")
    return ConfigError(mentioned, "; ".join(x for x in lines if not x.startswith(noise)))
