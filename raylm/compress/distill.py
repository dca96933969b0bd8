"""Distill: train a shallower (or narrower) student to match the teacher's outputs.

The student starts from the teacher's own layers, evenly spaced (every other one at half
depth, as DistilBERT did), plus its embeddings and head; a narrower student starts from
random weights. Training is the ordinary Ray Train + DeepSpeed loop (any ZeRO stage,
checkpoints, restarts, resume) with :class:`Distillation` as its objective:

    loss = alpha * T^2 * KL(teacher || student, both at temperature T)
           + (1 - alpha) * task loss  [+ cosine_weight * (1 - cos(last hidden states))]

(Hinton et al. 2015; the cosine term is DistilBERT's). The teacher is loaded frozen, in
eval mode, on every worker.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .._internal.fs import atomic_dir
from ..config.errors import ConfigError
from ..models.build import base_config
from ..tasks import Task
from ..train.objective import Objective
from .base import Method, StepContext, register_method

# Config keys per meaning, BERT's name first, GPT-2's second.
LAYERS, HIDDEN, INNER, HEADS = (
    ("num_hidden_layers", "n_layer"),
    ("hidden_size", "n_embd"),
    ("intermediate_size", "n_inner"),
    ("num_attention_heads", "n_head"),
)
_LAYER_INDEX = re.compile(r"\.(layer|h)\.(\d+)\.")


class Distillation(Objective):
    """The distillation loss around the task's own (which it still reports for eval)."""

    def __init__(
        self,
        task: Task,
        device,
        teacher_dir: str,
        alpha: float,
        temperature: float,
        cosine_weight: float = 0.0,
        precision: str = "fp32",
    ):
        super().__init__(task, device)
        import tempfile

        from .._internal.storage import fetch, is_uri
        from ..models.runtime import load_for_inference

        if is_uri(teacher_dir):  # in a store: this worker reads its own copy
            with tempfile.TemporaryDirectory(prefix="raylm-teacher-") as d:
                local = fetch(teacher_dir, Path(d) / "teacher", "model.init_from")
                self.teacher = load_for_inference(str(local), task.name, str(device))
        else:
            self.teacher = load_for_inference(teacher_dir, task.name, str(device))
        if precision == "bf16":
            self.teacher.to(torch.bfloat16)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.alpha, self.temperature, self.cosine_weight = alpha, temperature, cosine_weight

    def __call__(self, model, inputs):
        hidden = self.cosine_weight > 0
        output = model(**inputs, output_hidden_states=True) if hidden else model(**inputs)
        task_loss = self.task.loss(output, inputs)
        with torch.no_grad():
            teacher = self.teacher(**inputs, output_hidden_states=hidden)
        student_logits, teacher_logits = output.logits.float(), teacher.logits.float()
        positions = self.task.distill_positions(inputs)
        if positions is not None:  # per-token logits: only the positions the task scores
            student_logits, teacher_logits = student_logits[positions], teacher_logits[positions]
        t = self.temperature
        kd = F.kl_div(
            F.log_softmax(student_logits / t, -1),
            F.log_softmax(teacher_logits / t, -1),
            log_target=True,
            reduction="batchmean",
        ) * (t * t)
        loss = self.alpha * kd + (1 - self.alpha) * task_loss
        if hidden:
            s, h = output.hidden_states[-1].float(), teacher.hidden_states[-1].float()
            cos = F.cosine_similarity(s, h, dim=-1)
            mask = inputs.get("attention_mask")
            mask = torch.ones_like(cos) if mask is None else mask.to(cos.dtype)
            loss = loss + self.cosine_weight * ((1 - cos) * mask).sum() / mask.sum().clamp(min=1)
        return loss, output


def _key(d: dict[str, Any], names: tuple[str, str]) -> str:
    return names[0] if names[0] in d else names[1]


def _shape(config) -> dict[str, int]:
    d = base_config(config).to_dict()
    hidden = d[_key(d, HIDDEN)]
    return {
        "num_layers": d[_key(d, LAYERS)],
        "hidden_size": hidden,
        "num_heads": d[_key(d, HEADS)],
        "intermediate_size": d.get(_key(d, INNER)) or 4 * hidden,
    }


def student_shape(teacher_config, settings: dict[str, Any]) -> dict[str, int]:
    t = _shape(teacher_config)
    layers = settings["num_layers"] or math.ceil(t["num_layers"] / 2)
    hidden = settings["hidden_size"] or t["hidden_size"]
    return {
        "num_layers": layers,
        "hidden_size": hidden,
        "num_heads": t["num_heads"],
        "intermediate_size": t["intermediate_size"] * hidden // t["hidden_size"],
    }


def student_config(teacher_config, shape: dict[str, int]):
    """The teacher's config at the student's depth and width (labels, vocabulary and
    positions unchanged); a custom-head config keeps its head."""
    config = copy.deepcopy(teacher_config)
    d = config.encoder if hasattr(config, "encoder_config") else None
    for names, value in (
        (LAYERS, shape["num_layers"]),
        (HIDDEN, shape["hidden_size"]),
        (INNER, shape["intermediate_size"]),
    ):
        if d is not None:
            d[_key(d, names)] = value
        else:
            setattr(config, names[0], value)  # GPT2Config maps the BERT names to its own
    return config


def layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher layer for each student layer, evenly spaced from the first."""
    return [j * teacher_layers // student_layers for j in range(student_layers)]


def build_student(teacher_dir: Path, task: Task, shape: dict[str, int], out: Path) -> dict:
    """Write the initial student to ``out``; returns how it was initialised."""
    from transformers import AutoTokenizer

    from ..models.build import auto_class

    cls = auto_class(task.name)
    teacher = cls.from_pretrained(str(teacher_dir))
    t = _shape(teacher.config)
    config = student_config(teacher.config, shape)
    torch.manual_seed(0)
    student = type(teacher)(config)
    init: dict[str, Any] = {"from": "random"}
    if shape["hidden_size"] == t["hidden_size"]:
        mapping = layer_map(t["num_layers"], shape["num_layers"])
        source = teacher.state_dict()

        def teacher_key(key: str) -> str:
            return _LAYER_INDEX.sub(lambda m: f".{m[1]}.{mapping[int(m[2])]}.", key)

        student.load_state_dict({k: source[teacher_key(k)] for k in student.state_dict()})
        init = {"from": "teacher layers", "teacher_layers": mapping}
    with atomic_dir(out) as tmp:
        student.save_pretrained(str(tmp), safe_serialization=True)
        AutoTokenizer.from_pretrained(str(teacher_dir)).save_pretrained(str(tmp))
    return init


@register_method
class Distill(Method):
    name = "distill"
    tasks = ("seq_cls", "token_cls", "mlm", "clm")
    trains = True

    def validate(self, ctx: StepContext) -> None:
        s = ctx.settings(self.name)
        t = _shape(ctx.teacher_config)
        for field in ("num_layers", "hidden_size"):
            if s[field] is not None and s[field] < 1:
                raise ConfigError(self.key(field), f"must be >= 1, got {s[field]}")
        if s["num_layers"] is not None and s["num_layers"] > t["num_layers"]:
            raise ConfigError(
                self.key("num_layers"),
                f"{s['num_layers']} is deeper than the teacher ({t['num_layers']} layers); "
                f"use 1..{t['num_layers']}",
            )
        if s["hidden_size"] is not None:
            if s["hidden_size"] > t["hidden_size"]:
                raise ConfigError(
                    self.key("hidden_size"),
                    f"{s['hidden_size']} is wider than the teacher ({t['hidden_size']})",
                )
            if s["hidden_size"] % t["num_heads"]:
                raise ConfigError(
                    self.key("hidden_size"),
                    f"must be a multiple of the teacher's {t['num_heads']} attention heads, "
                    f"got {s['hidden_size']}",
                )
        shape = student_shape(ctx.teacher_config, s)
        if (shape["num_layers"], shape["hidden_size"]) == (t["num_layers"], t["hidden_size"]):
            raise ConfigError(
                self.key("num_layers"),
                f"the student would equal the teacher ({t['num_layers']} layers x "
                f"{t['hidden_size']}); make it shallower or narrower",
            )
        if not 0 <= s["alpha"] <= 1:
            raise ConfigError(self.key("alpha"), f"must be in [0, 1], got {s['alpha']}")
        if s["temperature"] <= 0:
            raise ConfigError(self.key("temperature"), f"must be > 0, got {s['temperature']}")
        if s["cosine_weight"] < 0:
            raise ConfigError(self.key("cosine_weight"), f"must be >= 0, got {s['cosine_weight']}")
        if s["cosine_weight"] and (
            shape["hidden_size"] != t["hidden_size"] or hasattr(ctx.teacher_config, "head")
        ):
            raise ConfigError(
                self.key("cosine_weight"),
                "the hidden-state term needs a student as wide as the teacher and a model "
                "that returns hidden states (not a custom-head one)",
            )

    def apply(self, source: Path, ctx: StepContext) -> dict[str, Any]:
        s = ctx.settings(self.name)
        shape = student_shape(ctx.teacher_config, s)
        student_init = ctx.run_dir(self.name) / "student_init"
        resume = ctx.resume_training(self.name)
        if resume and ctx.fetch_staged(self.name, student_init):
            init = {"from": "an earlier run's student_init"}
        else:
            init = build_student(source, ctx.task, shape, student_init)
        entry = ctx.entry(
            self.name, source, teacher=ctx.where(ctx.teacher_dir), student={**shape, "init": init}
        )
        objective = {
            "target": f"{Distillation.__module__}:{Distillation.__name__}",
            "teacher_dir": ctx.teacher_location or str(ctx.teacher_dir),  # what workers read
            "alpha": s["alpha"],
            "temperature": s["temperature"],
            "cosine_weight": s["cosine_weight"],
            "precision": ctx.c["trainer"]["precision"],
        }
        ctx.train(
            self.name,
            student_init,
            entry,
            f"student of {ctx.where(ctx.teacher_dir)}",
            resume,
            objective=objective,
        )
        return entry
