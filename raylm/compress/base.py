"""The one interface every compression method implements.

A method takes the previous step's artifact directory and the job's config, writes its
own artifact directory (whole or not at all), and returns the entry that
``raylm.json``'s ``compression.chain`` records for it. The job validates every step's
settings before anything runs, chains the steps, and measures every artifact the same
way for the report, so a new method is one class in one module of this package.
"""

from __future__ import annotations

import abc
import copy
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar

from ..config.errors import ConfigError
from ..tasks import Task


@dataclasses.dataclass
class StepContext:
    """What a step knows besides its input: the job's config, the task, where it writes."""

    c: dict[str, Any]  # the compress job's resolved config (plain dict)
    task: Task
    teacher_dir: Path  # model.init_from, the model the chain started from
    teacher_config: Any  # its transformers config
    output_dir: Path  # the job's output_dir; the step writes output_dir/<name>
    chain: list[dict[str, Any]]  # entries of the steps before this one

    def settings(self, method: str) -> dict[str, Any]:
        return dict(self.c["compress"].get(method) or {})

    def fingerprint(self) -> str:
        """A hash of what every step depends on besides its own settings (teacher, data,
        training keys); resume=true reuses a step only if it is unchanged."""
        keys = ("task", "model", "data", "tokenizer", "deepspeed", "scaling", "trainer")
        blob = json.dumps({k: self.c[k] for k in keys}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def resume_training(self, method: str) -> bool:
        """Whether the method's training run may continue from its checkpoints: only under
        resume=true and for an interrupted run with the same inputs (recorded here on its
        first start); otherwise it starts over."""
        run_dir = self.run_dir(method)
        record = run_dir / "inputs.json"
        inputs = {
            "chain": [(e["method"], e["settings"]) for e in self.chain],
            "settings": self.settings(method),
            "fingerprint": self.fingerprint(),
        }
        same = record.exists() and json.loads(record.read_text()) == json.loads(json.dumps(inputs))
        run_dir.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(inputs))
        return bool(self.c["resume"] and same and (run_dir / "checkpoints").exists())

    def load_hint(self) -> str:
        """How to load a torch artifact of this task, recorded in raylm.json."""
        return f"transformers.{self.task.auto_class}.from_pretrained(dir) after `import raylm`"

    def train(
        self,
        method: str,
        init_dir: Path,
        entry: dict[str, Any],
        name: str,
        resume: bool,
        objective: dict[str, Any] | None = None,
        trainer: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Fine-tune ``init_dir`` on the ordinary Ray Train + DeepSpeed loop with the job's
        data and training keys (``trainer`` overrides some), keeping the run in
        ``run_dir(method)`` and exporting, verified, to ``output_dir/method`` with the chain
        so far plus ``entry``. Returns the training summary."""
        from ..train import job as train_job

        c = copy.deepcopy(self.c)
        for key in ("labels", "tokenizer_path"):  # derived again by prepare()
            c.pop(key, None)
        c.update(
            output_dir=str(self.run_dir(method)),
            export_dir=str(self.output_dir / method),
            resume=resume,
            overwrite=True,
            compression={"chain": [*self.chain, entry], "load": self.load_hint()},
        )
        if objective:
            c["objective"] = objective
        c["trainer"].update(trainer or {})
        c["model"]["init_from"] = c["tokenizer"]["path"] = str(init_dir)
        prepared = train_job.prepare(c)
        prepared["model"]["name"] = name
        return train_job.fit(prepared)

    def entry(self, method: str, source: Path, **fields: Any) -> dict[str, Any]:
        """The start of a step's chain entry: method, settings, source, fingerprint."""
        return {
            "method": method,
            "settings": self.settings(method),
            "source": str(source),
            "fingerprint": self.fingerprint(),
            **fields,
        }

    def run_dir(self, method: str) -> Path:
        """Where a training step keeps its metrics, checkpoints and loss curve."""
        return self.output_dir / "runs" / method


class Method(abc.ABC):
    name: ClassVar[str]
    # Tasks whose models it can compress.
    tasks: ClassVar[tuple[str, ...]] = ("seq_cls", "token_cls")
    # Whether it runs a Ray Train job (and so uses trainer.* / scaling.* / deepspeed).
    trains: ClassVar[bool] = False
    # Whether a later step can still read (and train) what it writes.
    final: ClassVar[bool] = False

    def key(self, field: str | None = None) -> str:
        return f"compress.{self.name}" + (f".{field}" if field else "")

    def check_task(self, task: str) -> None:
        if task not in self.tasks:
            raise ConfigError(
                "compress.steps",
                f"{self.name} supports teachers of task {', '.join(self.tasks)}; "
                f"model.init_from is a {task} model",
            )

    @abc.abstractmethod
    def validate(self, ctx: StepContext) -> None:
        """Check this step's settings against the teacher; raise ConfigError naming the key."""

    @abc.abstractmethod
    def apply(self, source: Path, ctx: StepContext) -> dict[str, Any]:
        """Write ``ctx.output_dir / self.name`` from ``source``; return its chain entry
        (at least ``method`` and ``settings``)."""


METHODS: dict[str, Method] = {}


def register_method(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls()
    return cls
