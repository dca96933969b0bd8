"""Batch prediction with a fine-tuned model over Ray Data (``raylm predict``)."""

from .predictor import Classifier

__all__ = ["Classifier"]
