"""Read the user's text files (or a saved dataset) with Hugging Face ``datasets``."""

from __future__ import annotations

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
        ds = datasets.load_dataset(
            kind, data_files=[str(p) for p in paths], split="train", **kwargs
        )
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
