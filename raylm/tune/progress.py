"""One table of trials for the whole sweep (status, step, metric, values), not one bar
per worker.

On a terminal the table is redrawn in place; into a file (CI, a job log) each trial's
start and end is one line, and the sweep's summary prints the final table once.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from ray.tune import Callback

STATUS = {
    "TERMINATED": "done",
    "ERROR": "error",
    "RUNNING": "running",
    "PENDING": "pending",
    "PAUSED": "paused",
}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def render(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip() for r in rows
    )


class TrialTable(Callback):
    """A Tune callback on the driver. Holds no handles, so it pickles with the experiment
    (a resumed sweep gets it back)."""

    def __init__(self, keys: list[str], metric: Any, max_steps: int | None):
        self.keys = keys
        self.metrics = metric if isinstance(metric, list) else [metric]
        self.max_steps = max_steps
        self.last: dict[str, dict] = {}
        self._drawn = 0
        self._t = 0.0

    def __getstate__(self):
        return {**self.__dict__, "_drawn": 0}

    @property
    def live(self) -> bool:
        return sys.stdout.isatty()

    def status(self, trial) -> str:
        s = STATUS.get(trial.status, trial.status.lower())
        step = self.last.get(trial.trial_id, {}).get("step")
        if s == "done" and self.max_steps and step is not None and step < self.max_steps:
            return "stopped"  # by the scheduler (or raylm's early stopping)
        return s

    def table(self, trials) -> str:
        rows = [["trial", "status", "step", *self.metrics, *self.keys]]
        for t in trials:
            r = self.last.get(t.trial_id, {})
            rows.append(
                [
                    t.trial_id,
                    self.status(t),
                    _fmt(r.get("step")),
                    *[_fmt(r.get(m)) for m in self.metrics],
                    *[_fmt(t.config.get(k)) for k in self.keys],
                ]
            )
        return render(rows)

    def _line(self, trial, what: str) -> None:
        if self.live:
            return
        values = " ".join(f"{k}={_fmt(trial.config.get(k))}" for k in self.keys)
        r = self.last.get(trial.trial_id, {})
        scores = " ".join(f"{m} {_fmt(r[m])}" for m in self.metrics if m in r)
        step = f" at step {r['step']}" if "step" in r else ""
        print(f"trial {trial.trial_id} {what}{step}: {values}  {scores}".rstrip(), flush=True)

    def _draw(self, trials, force: bool = False) -> None:
        if not self.live or (not force and time.monotonic() - self._t < 0.5):
            return
        text = self.table(trials)
        if self._drawn:
            sys.stdout.write(f"\x1b[{self._drawn}F\x1b[J")
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        self._drawn, self._t = text.count("\n") + 1, time.monotonic()

    def on_trial_start(self, iteration, trials, trial, **info):
        self._line(trial, "started")
        self._draw(trials, force=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.last[trial.trial_id] = {k: result[k] for k in ("step", *self.metrics) if k in result}
        self._draw(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        step = self.last.get(trial.trial_id, {}).get("step")
        early = self.max_steps and step is not None and step < self.max_steps
        self._line(trial, "stopped" if early else "finished")
        self._draw(trials, force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._line(trial, "failed")
        self._draw(trials, force=True)

    def on_experiment_end(self, trials, **info):
        self._draw(trials, force=True)  # into a file, the sweep's summary prints the table
