"""``raylm tokenizer``: train a tokenizer on the configured text files."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..config import ConfigError, validate_tokenizer_job
from ..config.validate import check_data_files, local_path
from .files import load_text_dataset
from .tokenizer import batched_texts, save_atomically, train_tokenizer


def check(cfg: DictConfig, files: bool = True) -> list[str]:
    validate_tokenizer_job(OmegaConf.to_container(cfg, resolve=True), files)
    return [] if files else ["data.train_files"]


def run(cfg: DictConfig) -> Path:
    c = OmegaConf.to_container(cfg, resolve=True)
    validate_tokenizer_job(c)
    tc = c["tokenizer"]
    out = local_path(tc["path"], "tokenizer.path")
    if (out / "tokenizer.json").exists() and not c["overwrite"]:
        raise ConfigError(
            "tokenizer.path", f"{out} already holds a tokenizer; set overwrite=true to replace it"
        )
    files = check_data_files(c["data"]["train_files"], "data.train_files", required=True)
    ds = load_text_dataset(files, c["data"]["text_column"])
    tok = train_tokenizer(
        batched_texts(ds, c["data"]["text_column"]),
        tc["type"],
        tc["vocab_size"],
        tc["min_frequency"],
        tc["lowercase"],
    )
    path = save_atomically(tok, out)
    print(f"tokenizer ({tc['type']}, {len(tok)} tokens from {len(ds)} documents) saved to {path}")
    return path
