"""Read the user's text files (or a saved dataset) with Hugging Face ``datasets``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from ..config.errors import ConfigError

# file suffix -> datasets builder
BUILDERS = {
    ".txt": "text",
    ".text": "text",
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
}


def load_text_dataset(
    files: list[str],
    text_column: str,
    key: str = "data.train_files",
    extra_columns: tuple[str, ...] = (),
):
    """Load ``files`` as one ``datasets.Dataset`` with a non-empty string column ``text_column``.

    Plain-text files are read one document per paragraph (blank-line separated), the
    layout BERT's pretraining data uses, so sentence pairs never cross documents.
    Empty rows (blank text, or an empty word list) are dropped, with a count printed.
    """
    import datasets

    datasets.disable_progress_bars()
    paths = [Path(f) for f in files]
    if len(paths) == 1 and paths[0].is_dir():
        ds = datasets.load_from_disk(str(paths[0]))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    else:
        kinds = {BUILDERS[p.suffix.lower()] for p in paths}
        if len(kinds) > 1:
            raise ConfigError(
                key, f"mixes file types ({', '.join(sorted(kinds))}); use one type per list"
            )
        kind = kinds.pop()
        kwargs = {"sample_by": "paragraph"} if kind == "text" else {}
        # datasets logs a reader's failure at ERROR before raising it: the raise below
        # is the one line the user gets.
        reader_log = logging.getLogger("datasets.packaged_modules")
        level = reader_log.level
        reader_log.setLevel(logging.CRITICAL)
        try:
            ds = datasets.load_dataset(
                kind, data_files=[str(p) for p in paths], split="train", **kwargs
            )
        except Exception as exc:  # noqa: BLE001 - every reader error becomes one line
            raise unreadable(paths, kind, key, exc) from None
        finally:
            reader_log.setLevel(level)
        if kind == "text":
            ds = ds.map(lambda t: {"text": t.strip()}, input_columns="text")
            if text_column != "text":
                ds = ds.rename_column("text", text_column)
    if text_column not in ds.column_names:
        raise ConfigError(
            "data.text_column",
            f"column {text_column!r} not found in {key}; columns: {', '.join(ds.column_names)}",
        )
    for column, config_key in zip(extra_columns, ("data.label_column",), strict=False):
        if column not in ds.column_names:
            raise ConfigError(
                config_key,
                f"column {column!r} not found in {key}; columns: {', '.join(ds.column_names)}",
            )
    ds = ds.select_columns([text_column, *extra_columns])
    rows = len(ds)
    ds = ds.filter(_non_empty, input_columns=text_column)
    if len(ds) == 0:
        raise ConfigError(key, f"holds no non-empty {text_column!r} rows")
    if len(ds) < rows:
        print(f"{key}: dropped {rows - len(ds)} rows with an empty {text_column!r}")
    return ds


def _non_empty(value) -> bool:
    if isinstance(value, str):
        return value.strip() != ""
    return isinstance(value, list) and len(value) > 0


def unreadable(paths: list[Path], kind: str, key: str, exc: BaseException) -> ConfigError:
    """Why ``datasets`` could not read ``paths``, as one line naming the file (its own
    ``DatasetGenerationError`` names none): each file is examined until one shows the
    fault, with its line number where the format has lines."""
    for path in paths:
        reason = _fault(path, kind)
        if reason:
            return ConfigError(key, f"{path}: {reason}")
    return ConfigError(key, f"cannot read {', '.join(map(str, paths))}: {_root_cause(exc)}")


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip(": ")


def _fault(path: Path, kind: str) -> str | None:
    """The first thing wrong with one file, or None if it reads."""
    import json

    if kind == "parquet":
        import pyarrow.parquet as pq

        return _reader_fault(pq.read_table, path, "not a readable parquet file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return (
            f"line {line} is not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the file as UTF-8"
        )
    if kind == "json":
        try:
            whole = json.loads(text)
        except ValueError:
            whole = None
        if isinstance(whole, (list, dict)):
            return None  # one JSON document; the reader's own error is the best we have
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                return f"line {n} is not valid JSON ({exc.msg}); each line must be one JSON object"
            if not isinstance(row, dict):
                return f'line {n} is a JSON {type(row).__name__}, not an object; each line must be one object like {{"text": ...}}'
        return _mixed_types(text)
    if kind == "csv":
        import pandas as pd

        return _reader_fault(pd.read_csv, path, "not readable as CSV")
    return None


def _reader_fault(read: Callable[[Path], object], path: Path, what: str) -> str | None:
    """``what`` with the reader's root cause if ``read(path)`` raises: a binary format's
    reader is the only judge of it, and any error it raises is the file's."""
    try:
        read(path)
    except Exception as exc:  # noqa: BLE001
        return f"{what} ({_root_cause(exc)})"
    return None


def _mixed_types(text: str) -> str | None:
    """A JSON-lines column holding values of different types (Arrow cannot hold them)."""
    import json

    seen: dict[str, tuple[str, int]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        for column, value in json.loads(line).items():
            if value is None:
                continue
            kind = (
                "number"
                if isinstance(value, (int, float)) and not isinstance(value, bool)
                else type(value).__name__
            )
            first = seen.setdefault(column, (kind, n))
            if first[0] != kind:
                return (
                    f"column {column!r} mixes types: a {first[0]} on line {first[1]}, a {kind} "
                    f"on line {n}; use one type per column (quote numbers to make them strings)"
                )
    return None
