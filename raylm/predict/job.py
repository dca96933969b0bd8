"""``raylm predict``: read a file, classify (or tag) every row on a Ray Data actor pool,
write a file.

Rows stream through the actors in input order and are written by the driver into a temp
file renamed at the end, so the output lines up with the input and is never half there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .._internal.cluster import check_resources, init_ray
from .._internal.logs import quiet_libraries
from ..config import ConfigError
from ..config.validate import local_path, writable_path
from ..data.files import BUILDERS, unreadable
from ..data.pipeline import to_ray_dataset
from ..models.artifact import model_info
from .predictor import predictor_class

FORMATS = (".jsonl", ".csv", ".parquet")


def validate_predict(c: dict[str, Any], files: bool = True) -> dict[str, Any] | None:
    """Check the config; returns the model's description (:func:`model_info`), or None
    with ``files=False`` (the model and input are the cluster's, left unread)."""
    from ..tasks import get_task

    info = None
    local_path(c["model_dir"], "model_dir")
    src, dst = local_path(c["input"], "input"), local_path(c["output"], "output")
    if files:
        info = model_info(c["model_dir"])
        if not get_task(info["task"]).labeled:
            raise ConfigError(
                "model_dir",
                f"{c['model_dir']} is a {info['task']} model, neither a sequence nor a token "
                "classifier; fine-tune one with raylm finetune",
            )
    if files and not src.is_file():
        raise ConfigError("input", f"file not found: {src}")
    for key, path in (("input", src), ("output", dst)):
        if path.suffix.lower() not in FORMATS:
            raise ConfigError(
                key, f"{path.name}: unsupported file type; allowed: {', '.join(FORMATS)}"
            )
    if files:
        writable_path(c["output"], "output", "file")
    if files and dst.exists() and not c["overwrite"]:
        raise ConfigError("output", f"{dst} exists; set overwrite=true to replace it")
    for key in ("batch_size", "num_actors", "cpus_per_actor"):
        if c[key] <= 0:
            raise ConfigError(key, f"must be > 0, got {c[key]}")
    return info


def check(cfg: DictConfig, files: bool = True) -> list[str]:
    validate_predict(OmegaConf.to_container(cfg, resolve=True), files)
    return [] if files else ["model_dir", "input", "output"]


def read_rows(path: Path, text_column: str):
    import datasets

    datasets.disable_progress_bars()
    kind = BUILDERS[path.suffix.lower()]
    if path.stat().st_size < 4096 and not path.read_bytes().strip():
        raise ConfigError("input", f"{path} is empty; give a file with at least one row")
    try:
        ds = datasets.load_dataset(kind, data_files=[str(path)], split="train")
    except Exception as exc:  # noqa: BLE001 - as for training data: one line naming the file
        raise unreadable([path], kind, "input", exc) from None
    if text_column not in ds.column_names:
        raise ConfigError(
            "text_column",
            f"column {text_column!r} not found in {path.name}; "
            f"columns: {', '.join(ds.column_names)}",
        )
    return ds.select_columns([text_column])


def write_rows(tables, path: Path) -> int:
    """Append the streamed Arrow batches to a temp file, then rename it to ``path``: memory
    stays at one batch and a crash leaves no partial output under the final name. In CSV,
    list columns (a tagger's tags and entities) are written as JSON strings."""
    import pandas as pd
    import pyarrow.parquet as pq

    tmp = path.with_name(f".{path.name}.tmp")
    suffix, n, writer = path.suffix.lower(), 0, None
    try:
        with open(tmp, "wb") as f:
            for table in tables:
                if suffix == ".jsonl":
                    lines = (
                        json.dumps(row, ensure_ascii=False) + "\n" for row in table.to_pylist()
                    )
                    f.write("".join(lines).encode())
                elif suffix == ".csv":
                    frame = pd.DataFrame(
                        {
                            name: [
                                json.dumps(v) if isinstance(v, (list, dict)) else v
                                for v in table.column(name).to_pylist()
                            ]
                            for name in table.column_names
                        }
                    )
                    f.write(frame.to_csv(index=False, header=n == 0).encode())
                else:
                    writer = writer or pq.ParquetWriter(f, table.schema)
                    writer.write_table(table)
                n += table.num_rows
            if writer:
                writer.close()
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return n


def run(cfg: DictConfig) -> Path:
    import ray.data

    c = OmegaConf.to_container(cfg, resolve=True)
    info = validate_predict(c)
    model_dir = Path(c["model_dir"]).expanduser().resolve()
    predictor = predictor_class(info["task"])
    quiet_libraries(c["ray"]["verbose"])
    src, dst = Path(c["input"]).expanduser(), Path(c["output"]).expanduser().resolve()
    rows = read_rows(src, c["text_column"])
    if len(rows) == 0:
        raise ConfigError("input", f"{src} has no rows; give a file with at least one")
    init_ray(c)
    actors = max(1, min(c["num_actors"], -(-len(rows) // (c["batch_size"] * 4))))
    needs = {"CPU": (actors * c["cpus_per_actor"], "num_actors")}
    if c["use_gpu"]:
        needs["GPU"] = (actors, "use_gpu")
    check_resources(needs, embedded=not c["ray"]["address"])
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = bool(c["ray"]["verbose"])
    rows_per_block = c["batch_size"] * 4
    blocks = -(-len(rows) // rows_per_block)  # no more actors than there is work for
    predictions = to_ray_dataset(rows, rows_per_block).map_batches(
        predictor,
        fn_constructor_kwargs={
            "model_dir": str(model_dir),
            "text_column": c["text_column"],
            "use_gpu": c["use_gpu"],
        },
        batch_size=c["batch_size"],
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=max(1, min(c["num_actors"], blocks))),
        num_cpus=c["cpus_per_actor"],
        num_gpus=1 if c["use_gpu"] else 0,
    )
    dst.parent.mkdir(parents=True, exist_ok=True)
    n = write_rows(predictions.iter_batches(batch_format="pyarrow"), dst)
    print(f"predictions for {n} rows written to {dst}")
    return dst
