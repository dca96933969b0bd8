"""What a task is: everything that differs between clm, mlm, seq_cls, ... in one object.

The rest of raylm asks the task (``get_task(name)``) instead of comparing strings: how
documents become training rows, how a row becomes model inputs, what the loss and the
eval scores are, which transformers Auto class loads the model, which predictor and
HTTP endpoint serve it. Adding a task is one module in this package plus its tests.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from ..config.errors import ConfigError


class Task(abc.ABC):
    """A task's declaration (class attributes) and behaviour (methods).

    Subclasses set the attributes and override what differs; instances hold no state,
    so one instance per task is shared everywhere (and pickles to Ray workers).
    """

    name: ClassVar[str]
    # transformers Auto class that builds and loads the model, e.g. "AutoModelForMaskedLM".
    auto_class: ClassVar[str]
    # Architecture-name suffixes that mean this task, for directories raylm did not write.
    architectures: ClassVar[tuple[str, ...]] = ()
    # Preset families (conf/model/*.yaml ``family``) that can be trained for it.
    families: ClassVar[tuple[str, ...]] = ()
    # Eval metrics it reports, usable as trainer.metric; the first is the loss.
    metrics: ClassVar[tuple[str, ...]] = ("eval_loss",)
    # The metric fine-tuning keeps the best model by, unless trainer.metric says otherwise.
    default_metric: ClassVar[str | None] = None
    # The one number a compression report (or a sweep) compares models by, and whether
    # higher is better.
    headline_metric: ClassVar[str] = "eval_loss"
    headline_mode: ClassVar[str] = "min"
    # Rows carry a label column (data.label_column); eval scores every row.
    labeled: ClassVar[bool] = False
    # The loss is a language model's: eval also reports exp(loss) as eval_perplexity.
    perplexity: ClassVar[bool] = False
    # HTTP endpoint of ``raylm serve`` and the predictor class (module:Class) behind it.
    endpoint: ClassVar[str | None] = None
    predictor: ClassVar[str | None] = None
    # Takes a custom classification head (model.head, raylm.models.HEADS).
    custom_heads: ClassVar[bool] = False
    # What one training row is, for messages ("rows", "blocks of ... tokens").
    row_unit: ClassVar[str] = "rows"

    # --- data: documents -> training rows (a Ray Data map_batches function) ----------
    @abc.abstractmethod
    def encoder(self) -> Callable[..., dict]:
        """The map_batches function: numpy batch of documents -> numpy batch of rows,
        called with ``tokenizer_path``, ``column``, ``seq_len`` and :meth:`encoder_kwargs`."""

    def encoder_kwargs(self, c: dict[str, Any]) -> dict[str, Any]:
        """Keyword arguments of :meth:`encoder` beyond tokenizer, column and seq_len:
        for labeled tasks, the label column and the label list."""
        if self.labeled:
            return {"label_column": c["data"]["label_column"], "labels": c["labels"]}
        return {}

    def check_tokenizer(self, tokenizer) -> None:  # noqa: B027 (optional hook)
        """Raise ConfigError naming tokenizer.path if the tokenizer cannot serve the task."""

    def check_config(self, c: dict[str, Any]) -> None:  # noqa: B027 (optional hook)
        """Task-specific checks of a composed training config."""

    def check_documents(self, ds, c: dict[str, Any], key: str) -> None:  # noqa: B027 (optional hook)
        """Task-specific checks of a loaded ``datasets.Dataset`` (before encoding)."""

    def check_labels(self, labels: list[str], key: str) -> None:  # noqa: B027 (optional hook)
        """Task-specific checks of the resolved label list (labeled tasks)."""

    # --- worker side: rows -> inputs, loss, scores -----------------------------------
    def batcher(self, tokenizer, trainer: dict[str, Any], rank: int) -> Batcher:
        return Batcher(("input_ids", "attention_mask", "labels"))

    def loss(self, output, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The training loss from a forward pass; transformers computes it from labels."""
        return output.loss

    def distill_positions(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Which logits positions a distillation loss compares (``[batch, seq]`` bool),
        or None when the logits are per row (sequence classification)."""
        labels = inputs.get("labels")
        return None if labels is None else labels != -100

    def scorer(self, labels: list[str] | None, device) -> Any:
        """An object with ``update(inputs, output)`` and ``result() -> dict``, or None
        where the loss is the whole story."""
        return None

    def loss_metrics(self, mean_loss: float) -> dict[str, float]:
        """Metrics derived from the mean eval loss alone (perplexity for LMs)."""
        return {"eval_perplexity": math.exp(min(mean_loss, 50.0))} if self.perplexity else {}

    def eval_all_rows(self) -> bool:
        """Classification is scored on every eval row; LMs on trainer.eval_batches."""
        return self.labeled

    def progress(self, metrics: dict[str, Any]) -> str:
        """The progress bar's description from the latest metrics."""
        text = f"{self.name} loss {metrics['loss']:.3f}"
        if "eval_loss" in metrics:
            text += f" eval {metrics['eval_loss']:.3f}"
        return text


class Batcher:
    """Ray Data batch -> model inputs on the device: the named columns as int64."""

    def __init__(self, keys: tuple[str, ...]):
        self.keys = keys

    def __call__(self, batch: dict[str, torch.Tensor], index: int, device) -> dict[str, Any]:
        return {k: batch[k].long().to(device) for k in self.keys}


TASKS: dict[str, Task] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: the task answers to ``task=<cls.name>`` everywhere."""
    TASKS[cls.name] = cls()
    return cls


def get_task(name: str, key: str = "task") -> Task:
    if name not in TASKS:
        raise ConfigError(key, f"must be one of {tuple(TASKS)}, got {name!r}")
    return TASKS[name]
