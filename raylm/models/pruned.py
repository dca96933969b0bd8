"""Structurally pruned BERT and GPT-2 models that load with transformers' Auto classes.

A pruned layer keeps fewer attention heads (each still ``head_size`` wide) and fewer FFN
neurons than its config's ``num_attention_heads`` and ``intermediate_size`` say, and
the count differs per layer, which no transformers config can express (transformers 5
also dropped ``prune_heads``). So a pruned model's config is the original one plus
``layer_heads`` and ``layer_intermediate`` (kept per layer), under its own model type
(``raylm_pruned_bert`` / ``raylm_pruned_gpt2``), and its classes build the original
architecture and then shrink each layer to those shapes, so ``from_pretrained`` loads the
smaller matrices. Registered with the Auto classes when :mod:`raylm` is imported.

The same layer surgery removes heads and neurons when pruning (:func:`prune_layer`);
transformers' attention reshapes by ``head_size`` with ``-1`` heads, so a layer with
fewer heads runs unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForPreTraining,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertConfig,
    GPT2Config,
)
from transformers import models as hf_models
from transformers.pytorch_utils import Conv1D, prune_linear_layer


@dataclasses.dataclass
class Layer:
    """One transformer layer's prunable parts: ``attn_out`` takes the concatenated head
    outputs as its input, ``ffn_out`` the FFN neurons."""

    module: nn.Module
    heads: int
    head_size: int
    neurons: int
    attn_out: nn.Module
    ffn_out: nn.Module


def layers(model: nn.Module) -> list[Layer]:
    """The prunable layers of a BERT- or GPT-2-family model (any head), in order."""
    base = model.base_model
    if hasattr(base, "encoder") and hasattr(base.encoder, "layer"):  # BERT
        return [
            Layer(
                layer,
                layer.attention.self.num_attention_heads,
                layer.attention.self.attention_head_size,
                layer.intermediate.dense.out_features,
                layer.attention.output.dense,
                layer.output.dense,
            )
            for layer in base.encoder.layer
        ]
    if hasattr(base, "h"):  # GPT-2
        return [
            Layer(
                block,
                block.attn.num_heads,
                block.attn.head_dim,
                block.mlp.c_fc.nf,
                block.attn.c_proj,
                block.mlp.c_proj,
            )
            for block in base.h
        ]
    raise ValueError(f"{type(model).__name__}: not a BERT- or GPT-2-family model")


def _prune_conv1d(layer: Conv1D, index: torch.Tensor, dim: int) -> Conv1D:
    """GPT-2's Conv1D keeps weights as [in, out]: dim 1 selects outputs, dim 0 inputs."""
    index = index.to(layer.weight.device)
    weight = layer.weight.index_select(dim, index).detach().clone()
    bias = layer.bias if dim == 0 else layer.bias[index]
    new = Conv1D(weight.shape[1], weight.shape[0]).to(layer.weight.device, layer.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        new.bias.copy_(bias.detach())
    return new


def _head_index(keep: Sequence[int], head_size: int) -> torch.Tensor:
    return torch.cat([torch.arange(h * head_size, (h + 1) * head_size) for h in keep])


def prune_layer(layer: Layer, keep_heads: Sequence[int], keep_neurons: Sequence[int]) -> None:
    """Keep only the given heads and FFN neurons of one layer (in place)."""
    idx = _head_index(sorted(keep_heads), layer.head_size)
    neurons = torch.tensor(sorted(keep_neurons), dtype=torch.long)
    m = layer.module
    if hasattr(m, "attention"):  # BERT
        sa = m.attention.self
        sa.query = prune_linear_layer(sa.query, idx, 0)
        sa.key = prune_linear_layer(sa.key, idx, 0)
        sa.value = prune_linear_layer(sa.value, idx, 0)
        m.attention.output.dense = prune_linear_layer(m.attention.output.dense, idx, 1)
        sa.num_attention_heads = len(keep_heads)
        sa.all_head_size = len(idx)
        m.intermediate.dense = prune_linear_layer(m.intermediate.dense, neurons, 0)
        m.output.dense = prune_linear_layer(m.output.dense, neurons, 1)
    else:  # GPT-2: c_attn holds [q | k | v], each split_size wide
        attn, width = m.attn, m.attn.split_size
        attn.c_attn = _prune_conv1d(attn.c_attn, torch.cat([idx, idx + width, idx + 2 * width]), 1)
        attn.c_proj = _prune_conv1d(attn.c_proj, idx, 0)
        attn.num_heads = len(keep_heads)
        attn.split_size = len(idx)
        m.mlp.c_fc = _prune_conv1d(m.mlp.c_fc, neurons, 1)
        m.mlp.c_proj = _prune_conv1d(m.mlp.c_proj, neurons, 0)


def shrink_to(model: nn.Module, heads: Sequence[int], neurons: Sequence[int]) -> None:
    """Give each layer the recorded number of heads and neurons (the first ones: the
    weights that land there come from the checkpoint)."""
    for layer, h, n in zip(layers(model), heads, neurons, strict=True):
        if (h, n) != (layer.heads, layer.neurons):
            prune_layer(layer, range(h), range(n))


class _LayerShapes:
    """Config fields of a pruned model: heads and FFN neurons kept, per layer."""

    def __init__(self, layer_heads: list[int] | None = None, layer_intermediate=None, **kwargs):
        super().__init__(**kwargs)
        self.layer_heads = list(layer_heads or [])
        self.layer_intermediate = list(layer_intermediate or [])


class PrunedBertConfig(_LayerShapes, BertConfig):
    model_type = "raylm_pruned_bert"


class PrunedGPT2Config(_LayerShapes, GPT2Config):
    model_type = "raylm_pruned_gpt2"


def _pruned_class(base: type, config_class: type) -> type:
    def __init__(self, config, *args, **kwargs):
        base.__init__(self, config, *args, **kwargs)
        if config.layer_heads:
            shrink_to(self, config.layer_heads, config.layer_intermediate)

    return type(
        f"Pruned{base.__name__}",
        (base,),
        {"config_class": config_class, "__init__": __init__, "__module__": __name__},
    )


# (config class, original family) -> for each Auto class, the original model class
_FAMILIES = {
    PrunedBertConfig: (
        hf_models.bert,
        {
            AutoModel: "BertModel",
            AutoModelForMaskedLM: "BertForMaskedLM",
            AutoModelForPreTraining: "BertForPreTraining",
            AutoModelForSequenceClassification: "BertForSequenceClassification",
            AutoModelForTokenClassification: "BertForTokenClassification",
        },
    ),
    PrunedGPT2Config: (
        hf_models.gpt2,
        {
            AutoModel: "GPT2Model",
            AutoModelForCausalLM: "GPT2LMHeadModel",
            AutoModelForSequenceClassification: "GPT2ForSequenceClassification",
            AutoModelForTokenClassification: "GPT2ForTokenClassification",
        },
    ),
}
PRUNED_CONFIGS = {"bert": PrunedBertConfig, "gpt2": PrunedGPT2Config}
PRUNED_CLASSES: dict[str, type] = {}

for _config, (_module, _classes) in _FAMILIES.items():
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    for _auto, _name in _classes.items():
        _cls = _pruned_class(getattr(_module, _name), _config)
        PRUNED_CLASSES[_cls.__name__] = _cls
        globals()[_cls.__name__] = _cls  # importable by name, as save_pretrained records it
        _auto.register(_config, _cls, exist_ok=True)


def pruned_config(config, heads: list[int], neurons: list[int]):
    """The pruned model's config: the original one plus the kept heads / neurons per layer."""
    family = "bert" if isinstance(config, BertConfig) else "gpt2"
    d = config.to_dict()
    d.pop("model_type", None)
    d.update(layer_heads=heads, layer_intermediate=neurons)
    return PRUNED_CONFIGS[family](**d)


def pruned_class_for(model: nn.Module) -> type:
    """The pruned counterpart of a model's class (BertForSequenceClassification -> ...)."""
    name = type(model).__name__
    name = name if name.startswith("Pruned") else f"Pruned{name}"
    return PRUNED_CLASSES[name]
