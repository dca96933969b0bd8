"""Data: tokenizers, file loading, and the Ray Data tokenize-and-pack pipeline."""

from .files import load_text_dataset
from .tokenizer import load_tokenizer, train_tokenizer

__all__ = ["load_text_dataset", "load_tokenizer", "train_tokenizer"]
