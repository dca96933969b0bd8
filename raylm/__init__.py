"""raylm: transformer language models from raw text to a served model on a Ray cluster."""

__version__ = "0.1.0"
