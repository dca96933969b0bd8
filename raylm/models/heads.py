"""Custom classification heads: ``model.head=NAME`` puts a head of your own on any encoder.

transformers' ``*ForSequenceClassification`` classes fix the head per architecture
(BERT: dropout + linear over the pooler; GPT-2: linear over the last token). A head
here is a small ``nn.Module`` from the encoder's hidden states to logits, chosen by
name, and the model that carries it is an ordinary ``PreTrainedModel``: it trains under
every ZeRO stage, exports with ``save_pretrained`` and loads with
``AutoModelForSequenceClassification`` once ``raylm`` is imported (which registers it).

Adding a head: subclass :class:`ClassificationHead` in a module the Ray workers can
import, and name it ``model.head=package.module:ClassName``; or decorate it with
``@register_head("name")`` in a module imported before the model is built.
"""

from __future__ import annotations

import abc
import importlib

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.modeling_outputs import SequenceClassifierOutput

from ..config.errors import ConfigError


class ClassificationHead(nn.Module, abc.ABC):
    """Encoder outputs -> logits ``[batch, num_labels]``.

    ``hidden_states`` is the last layer ``[batch, seq, hidden]``; ``attention_mask``
    marks real tokens; ``pooled_output`` is the encoder's pooler output where it has
    one (BERT), else None.
    """

    def __init__(self, hidden_size: int, num_labels: int, dropout: float):
        super().__init__()

    @abc.abstractmethod
    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        pooled_output: torch.Tensor | None,
    ) -> torch.Tensor: ...


HEADS: dict[str, type[ClassificationHead]] = {}


def register_head(name: str):
    """Class decorator: make a head available as ``model.head=name``."""

    def register(cls: type[ClassificationHead]) -> type[ClassificationHead]:
        HEADS[name] = cls
        return cls

    return register


@register_head("mean_pool")
class MeanPoolHead(ClassificationHead):
    """Dropout + linear over the mean of the real tokens' last hidden states.

    Sentence-BERT found the mean a better sentence vector than BERT's [CLS] pooler, and
    it works the same for encoders with no pooler or [CLS] token (GPT-2).
    """

    def __init__(self, hidden_size: int, num_labels: int, dropout: float):
        super().__init__(hidden_size, num_labels, dropout)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden_states, attention_mask, pooled_output=None):
        if attention_mask is None:
            pooled = hidden_states.mean(1)
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden_states.dtype)
            pooled = (hidden_states * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.classifier(self.dropout(pooled))


def resolve_head(name: str) -> type[ClassificationHead]:
    """A registered name, or ``package.module:ClassName`` of a ClassificationHead."""
    if name in HEADS:
        return HEADS[name]
    if ":" not in name:
        raise ConfigError(
            "model.head",
            f"unknown head {name!r}; registered: {', '.join(sorted(HEADS))}, "
            "or give package.module:ClassName",
        )
    module, _, attr = name.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError("model.head", f"cannot import {name}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, ClassificationHead)):
        raise ConfigError(
            "model.head", f"{name} is not a subclass of raylm.models.ClassificationHead"
        )
    return cls


class HeadedConfig(PretrainedConfig):
    """The encoder's own config (as a dict) plus which head sits on it."""

    model_type = "raylm_headed"

    def __init__(
        self,
        encoder: dict | None = None,
        head: str = "mean_pool",
        head_dropout: float = 0.1,
        **kwargs,
    ):
        self.encoder = encoder or {}
        self.head = head
        self.head_dropout = head_dropout
        super().__init__(**kwargs)

    def encoder_config(self) -> PretrainedConfig:
        encoder = dict(self.encoder)
        return AutoConfig.for_model(encoder.pop("model_type"), **encoder)


class EncoderWithHeadForSequenceClassification(PreTrainedModel):
    """``AutoModel`` encoder + a :class:`ClassificationHead`, cross-entropy loss."""

    config_class = HeadedConfig
    base_model_prefix = "encoder"

    def __init__(self, config: HeadedConfig, encoder: PreTrainedModel | None = None):
        super().__init__(config)
        encoder_config = config.encoder_config()
        self.encoder = encoder if encoder is not None else AutoModel.from_config(encoder_config)
        self.head = resolve_head(config.head)(
            encoder_config.hidden_size, config.num_labels, config.head_dropout
        )
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # The encoder initializes itself (or holds pretrained weights); only the head's
        # layers start here, as in BERT: normal(0, 0.02), zero bias.
        if isinstance(module, nn.Linear) and any(module is m for m in self.head.modules()):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        out = self.encoder(**inputs)
        logits = self.head(
            out.last_hidden_state, attention_mask, getattr(out, "pooler_output", None)
        )
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def build_headed(head: str, encoder: PreTrainedModel, label_kwargs: dict, dropout: float):
    """Wrap an encoder (random or pretrained) with a fresh head named ``head``."""
    config = HeadedConfig(
        encoder=encoder.config.to_dict(), head=head, head_dropout=dropout, **label_kwargs
    )
    return EncoderWithHeadForSequenceClassification(config, encoder=encoder)


AutoConfig.register(HeadedConfig.model_type, HeadedConfig, exist_ok=True)
AutoModelForSequenceClassification.register(
    HeadedConfig, EncoderWithHeadForSequenceClassification, exist_ok=True
)
