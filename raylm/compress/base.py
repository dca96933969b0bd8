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

RUNS_DIR = "runs"


@dataclasses.dataclass
class StepContext:
    """What a step knows besides its input: the job's config, the task, where it writes."""

    c: dict[str, Any]  # the compress job's resolved config (plain dict)
    task: Task
    teacher_dir: Path  # model.init_from, the model the chain started from (read here)
    teacher_config: Any  # its transformers config
    output_dir: Path  # where the step writes <name> here (a URI output_dir's mirror)
    chain: list[dict[str, Any]]  # entries of the steps before this one
    # output_dir as given: a path (then output_dir itself) or a URI (see _internal.storage)
    location: str = ""
    teacher_location: str = ""  # model.init_from as given (what training workers load)
    in_store: set[str] = dataclasses.field(default_factory=set)  # steps exported there

    @property
    def store(self):
        """The job's output location: the store for a URI, else ``output_dir`` itself."""
        from .._internal.storage import RunDir, is_uri

        return RunDir(self.location if is_uri(self.location) else str(self.output_dir))

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
        run_dir, store, name = self.run_dir(method), self.store, f"runs/{method}"
        record = run_dir / "inputs.json"
        inputs = {
            "chain": [(e["method"], e["settings"]) for e in self.chain],
            "settings": self.settings(method),
            "fingerprint": self.fingerprint(),
        }
        before = store.read_text(f"{name}/inputs.json")
        same = before is not None and json.loads(before) == json.loads(json.dumps(inputs))
        run_dir.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(inputs))
        store.push(f"{name}/inputs.json", record)
        return bool(self.c["resume"] and same and store.exists(f"{name}/checkpoints"))

    def stage(self, method: str, local: Path) -> str:
        """Where training workers read ``local`` (a dir under ``run_dir(method)``, such as
        a student's initial weights): itself, or its copy pushed to the store."""
        store = self.store
        if not store.remote:
            return str(local)
        name = f"runs/{method}/{local.name}"
        store.remove(name)
        store.push(name, local)
        return store.uri(name)

    def fetch_staged(self, method: str, local: Path) -> bool:
        """Whether ``local`` (see :meth:`stage`) exists, fetched from the store if need be."""
        if not local.exists() and self.store.remote:
            self.store.pull(f"runs/{method}/{local.name}", local)
        return local.exists()

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
        store = self.store
        c.update(
            output_dir=store.uri(RUNS_DIR, method),
            # In a store the workers export there; the later steps read a copy from here.
            export_dir=store.uri(method) if store.remote else str(self.output_dir / method),
            resume=resume,
            overwrite=True,
            compression={"chain": [*self.chain, entry], "load": self.load_hint()},
        )
        if objective:
            c["objective"] = objective
        c["trainer"].update(trainer or {})
        c["model"]["init_from"] = c["tokenizer"]["path"] = self.stage(method, init_dir)
        prepared = train_job.prepare(c)
        prepared["model"]["name"] = name
        summary = train_job.fit(prepared)
        if store.remote:
            store.pull(method, self.output_dir / method)
            self.in_store.add(method)
        return summary

    def entry(self, method: str, source: Path, **fields: Any) -> dict[str, Any]:
        """The start of a step's chain entry: method, settings, source, fingerprint."""
        return {
            "method": method,
            "settings": self.settings(method),
            "source": self.where(source),
            "fingerprint": self.fingerprint(),
            **fields,
        }

    def where(self, path: Path) -> str:
        """A directory of this job as the user finds it (what raylm.json records): the
        teacher as given, a step's output in the store for a URI output_dir."""
        if path == self.teacher_dir:
            return self.teacher_location or str(path)
        if self.store.remote and self.output_dir in path.parents:
            return self.store.uri(path.relative_to(self.output_dir).as_posix())
        return str(path)

    def run_dir(self, method: str) -> Path:
        """Where a training step keeps its metrics, checkpoints and loss curve."""
        return self.output_dir / RUNS_DIR / method


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
