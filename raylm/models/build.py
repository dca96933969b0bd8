"""Model construction: a preset (conf/model/*.yaml) or ``model.init_from`` -> an HF model.

Models are plain transformers classes, so the exported directory loads with the Auto
classes and nothing of raylm's is needed to use it.
"""

from __future__ import annotations

from typing import Any


def auto_class(task: str):
    """The transformers Auto class that builds and loads a model for ``task``."""
    import transformers

    from ..tasks import get_task

    return getattr(transformers, get_task(task).auto_class)


def preset_config(model: dict[str, Any], vocab_size: int, tokenizer=None):
    """A ``transformers`` config from a preset's keys (field names follow each paper)."""
    from transformers import BertConfig, GPT2Config

    inner = model["intermediate_size"] or 4 * model["hidden_size"]
    vocab = model["vocab_size"] or vocab_size
    if model["family"] == "gpt2":
        eos = getattr(tokenizer, "eos_token_id", None)
        return GPT2Config(
            vocab_size=vocab,
            n_positions=model["max_positions"],
            n_embd=model["hidden_size"],
            n_layer=model["num_layers"],
            n_head=model["num_heads"],
            n_inner=inner,
            resid_pdrop=model["dropout"],
            embd_pdrop=model["dropout"],
            attn_pdrop=model["dropout"],
            bos_token_id=eos if eos is not None else vocab - 1,
            eos_token_id=eos if eos is not None else vocab - 1,
        )
    if model["family"] == "bert":
        pad = getattr(tokenizer, "pad_token_id", None)
        return BertConfig(
            vocab_size=vocab,
            hidden_size=model["hidden_size"],
            num_hidden_layers=model["num_layers"],
            num_attention_heads=model["num_heads"],
            intermediate_size=inner,
            max_position_embeddings=model["max_positions"],
            hidden_dropout_prob=model["dropout"],
            attention_probs_dropout_prob=model["dropout"],
            pad_token_id=pad if pad is not None else 0,
        )
    raise ValueError(f"unknown model family {model['family']!r}")


def load_init_config(init_from: str):
    """The config of ``model.init_from``: positions and vocabulary for validation."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(init_from)


def supports_task(config, task: str) -> bool:
    """Whether the task's Auto class has a model class for this config's architecture."""
    return type(config) in auto_class(task)._model_mapping


def base_config(config):
    """The encoder's config of a custom-head model (:mod:`.heads`), else the config."""
    return config.encoder_config() if hasattr(config, "encoder_config") else config


def positions_and_vocab(config) -> tuple[int, int]:
    """How many positions the model embeds and how many tokens its vocabulary holds;
    for a custom-head model, its encoder's."""
    config = base_config(config)
    positions = getattr(config, "n_positions", None) or config.max_position_embeddings
    return int(positions), int(config.vocab_size)


def max_input_length(config) -> int:
    """The longest input (in tokens) a model takes: what predict, serve and the export
    check truncate to."""
    return positions_and_vocab(config)[0]


def label_kwargs(labels: list[str] | None, tokenizer=None) -> dict:
    """Config fields of a classification head: label names, and a pad token so models
    without one (GPT-2) can find the last real token of each padded row."""
    if not labels:
        return {}
    kwargs = {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {name: i for i, name in enumerate(labels)},
    }
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    if pad is not None:
        kwargs["pad_token_id"] = pad
    return kwargs


def has_head_for(config, task: str) -> bool:
    """Whether a loaded config's saved architecture already is the task's model class."""
    wanted = auto_class(task)._model_mapping.get(type(config), None)
    return bool(wanted) and wanted.__name__ in (config.architectures or [])


def head_size_differs(config, task: str, labels: list[str] | None) -> bool:
    """Whether ``config`` has the task's head, sized for another number of labels."""
    return bool(labels) and has_head_for(config, task) and config.num_labels != len(labels)


def from_config(cls, config):
    """A random-init model whose weights depend on the seed only, not on the ZeRO stage.

    Under ZeRO-3 (``train.loop.partitioned_build``) transformers builds with the
    constructors' own inits off (torch's ``reset_parameters`` draws from the RNG) and then
    runs the model's ``_init_weights`` module by module; built the same way here, a seed
    gives bit-identical weights at every stage (tests/test_pretrain.py compares them)."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():
        return cls.from_config(config)
    from transformers.initialization import no_init_weights

    with no_init_weights():
        model = cls.from_config(config)
    model.init_weights()
    return model


def build_model(
    task: str,
    model: dict[str, Any],
    vocab_size: int,
    tokenizer=None,
    labels: list[str] | None = None,
):
    """Random-init from the preset, or load ``model.init_from`` (weights included; a
    classification head missing from the directory starts fresh).

    Called on every worker after the same seed, so ranks start from identical weights
    without a broadcast.
    """
    cls = auto_class(task)
    extra = label_kwargs(labels, tokenizer)
    if model["init_from"]:
        init_config = load_init_config(model["init_from"])
        if not model.get("head") or hasattr(init_config, "head"):
            # Its own head, if any; one for another number of labels starts fresh (the
            # driver said so: train.job.load_documents), as HF Trainer users do it.
            fresh = head_size_differs(init_config, task, labels)
            return cls.from_pretrained(
                model["init_from"], **extra, **({"ignore_mismatched_sizes": True} if fresh else {})
            )
        from transformers import AutoModel

        encoder = AutoModel.from_pretrained(model["init_from"])
    else:
        config = preset_config(model, vocab_size, tokenizer)
        if not model.get("head"):
            config.update(extra)
            return from_config(cls, config)
        from transformers import AutoModel

        encoder = from_config(AutoModel, config)
    from .heads import build_headed

    return build_headed(model["head"], encoder, extra, model["dropout"])


def flops_per_token(config, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the matmuls plus attention's 12·L·H·T (PaLM, App. B)."""
    config = base_config(config)
    n_layer = getattr(config, "n_layer", None) or config.num_hidden_layers
    hidden = getattr(config, "n_embd", None) or config.hidden_size
    inner = (
        getattr(config, "n_inner", None) or getattr(config, "intermediate_size", None) or 4 * hidden
    )
    # Non-embedding parameters per layer: attention 4h^2, MLP 2·h·inner.
    n_params = n_layer * (4 * hidden * hidden + 2 * hidden * inner) + config.vocab_size * hidden
    return 6 * n_params + 12 * n_layer * hidden * seq_len
