"""``raylm predict``: read a file, classify every row on a Ray Data actor pool, write a file.

Rows stream through the actors in input order and are written by the driver into a temp
file renamed at the end, so the output lines up with the input and is never half there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .._internal.logs import quiet_libraries
from ..config import ConfigError
from ..data.files import BUILDERS
from ..data.pipeline import to_ray_dataset
from ..train.job import init_ray

FORMATS = (".jsonl", ".csv", ".parquet")


def validate_predict(c: dict[str, Any]) -> None:
    model_dir = Path(c["model_dir"]).expanduser()
    if not (model_dir / "config.json").exists():
        raise ConfigError(
            "model_dir", f"{model_dir} is not a save_pretrained directory (no config.json)"
        )
    if not any(model_dir.glob("*.safetensors")) and not any(model_dir.glob("*.bin")):
        raise ConfigError("model_dir", f"{model_dir} holds no weights (*.safetensors or *.bin)")
    config = json.loads((model_dir / "config.json").read_text())
    if not any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or []):
        raise ConfigError(
            "model_dir",
            f"{model_dir} is not a sequence classifier (architectures: "
            f"{config.get('architectures')}); fine-tune one with raylm finetune",
        )
    src, dst = Path(c["input"]).expanduser(), Path(c["output"]).expanduser()
    if not src.is_file():
        raise ConfigError("input", f"file not found: {src}")
    for key, path in (("input", src), ("output", dst)):
        if path.suffix.lower() not in FORMATS:
            raise ConfigError(
                key, f"{path.name}: unsupported file type; allowed: {', '.join(FORMATS)}"
            )
    if dst.exists() and not c["overwrite"]:
        raise ConfigError("output", f"{dst} exists; set overwrite=true to replace it")
    for key in ("batch_size", "num_actors", "cpus_per_actor"):
        if c[key] <= 0:
            raise ConfigError(key, f"must be > 0, got {c[key]}")


def read_rows(path: Path, text_column: str):
    import datasets

    datasets.disable_progress_bars()
    kind = BUILDERS[path.suffix.lower()]
    ds = datasets.load_dataset(kind, data_files=[str(path)], split="train")
    if text_column not in ds.column_names:
        raise ConfigError(
            "text_column",
            f"column {text_column!r} not found in {path.name}; "
            f"columns: {', '.join(ds.column_names)}",
        )
    return ds.select_columns([text_column])


def write_rows(frames, path: Path) -> int:
    """Append the streamed batches to a temp file, then rename it to ``path``: memory
    stays at one batch and a crash leaves no partial output under the final name."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tmp = path.with_name(f".{path.name}.tmp")
    suffix, n, writer = path.suffix.lower(), 0, None
    try:
        with open(tmp, "wb") as f:
            for frame in frames:
                if suffix == ".jsonl":
                    f.write(frame.to_json(orient="records", lines=True, force_ascii=False).encode())
                elif suffix == ".csv":
                    f.write(frame.to_csv(index=False, header=n == 0).encode())
                else:
                    table = pa.Table.from_pandas(frame, preserve_index=False)
                    writer = writer or pq.ParquetWriter(f, table.schema)
                    writer.write_table(table)
                n += len(frame)
            if writer:
                writer.close()
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return n


def run(cfg: DictConfig) -> Path:
    import ray.data

    from .predictor import Classifier

    c = OmegaConf.to_container(cfg, resolve=True)
    validate_predict(c)
    quiet_libraries(c["ray"]["verbose"])
    src, dst = Path(c["input"]).expanduser(), Path(c["output"]).expanduser().resolve()
    rows = read_rows(src, c["text_column"])
    init_ray(c)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = bool(c["ray"]["verbose"])
    predictions = to_ray_dataset(rows, rows_per_block=c["batch_size"] * 4).map_batches(
        Classifier,
        fn_constructor_kwargs={
            "model_dir": str(Path(c["model_dir"]).expanduser().resolve()),
            "text_column": c["text_column"],
            "use_gpu": c["use_gpu"],
        },
        batch_size=c["batch_size"],
        batch_format="numpy",
        concurrency=c["num_actors"],
        num_cpus=c["cpus_per_actor"],
        num_gpus=1 if c["use_gpu"] else 0,
    )
    dst.parent.mkdir(parents=True, exist_ok=True)
    n = write_rows(predictions.iter_batches(batch_format="pandas"), dst)
    print(f"predictions for {n} rows written to {dst}")
    return dst
