"""One sweep trial: the base command composed and validated exactly as a plain run, fitted
inside a Ray Tune function trainable.

Ray Train V2 runs a ``TorchTrainer`` under Tune only as a function trainable that builds
and fits it (``Tuner(trainer)`` is gone). Tune must see every eval and every checkpoint:
a Ray Train callback forwards each report of the training run (rank 0's metrics and the
persisted checkpoint's path) through a queue to the trial's own thread, which hands them
to ``tune.report``. Tune then owns a copy of each checkpoint, so a retried, resumed or
PBT-exploited trial starts from one (``init_checkpoint``) with its own hyperparameters.
"""

from __future__ import annotations

import threading
from typing import Any

from ray.train.v2.api.callback import UserCallback
from ray.tune import Callback

from .._internal.storage import RunDir, join, override, uri_of
from .space import trial_overrides

_DONE = "__raylm_trial_done__"
PLACEMENT_GROUP_FILE = ".placement_group"


class ReportToTune(UserCallback):
    """Runs in the Ray Train controller: each report -> (metrics, checkpoint) on a
    queue the trial thread reads (the checkpoint's path and filesystem: in an object
    store it is not a local directory). The queue holds one item, so training waits while Tune
    takes a checkpoint (as Ray's own TuneReportCallback does)."""

    def __init__(self, queue):
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint) -> None:
        where = (checkpoint.path, checkpoint.filesystem) if checkpoint else None
        self.queue.put((dict(metrics[0]), where))


def scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    """What Tune gets: numbers only (a confusion matrix stays in the trial's metrics.jsonl)."""
    return {
        k: v
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "checkpoint_path"
    }


def trial_dir(spec: dict[str, Any], trial_id: str) -> str:
    return join(spec["trials_dir"], trial_id)


def compose_trial(spec: dict[str, Any], config: dict[str, Any], out: str):
    from ..api import compose

    overrides = [
        *spec["overrides"],
        *trial_overrides(config, spec["space"]),
        override("output_dir", out),
        "overwrite=true",
        "resume=false",
    ]
    return compose(spec["base"], overrides)


def run_trial(config: dict[str, Any], spec: dict[str, Any]) -> None:
    """The function trainable (``spec`` arrives through ``tune.with_parameters``)."""
    from ray import tune

    ctx = tune.get_context()
    out = trial_dir(spec, ctx.get_trial_id())
    cfg = compose_trial(spec, config, out)
    if spec["base"] == "compress":
        _compress_trial(cfg)
    else:
        _training_trial(cfg, tune.get_checkpoint(), spec["location"])


def _training_trial(cfg, checkpoint, location: str) -> None:
    from ray import tune
    from ray.util.queue import Queue

    from ..train.job import fit, prepare

    c = prepare(cfg)
    c["progress"] = False  # the sweep's table shows every trial's progress
    c["placement_group_file"] = PLACEMENT_GROUP_FILE  # in the trial's output_dir
    if checkpoint is not None:
        # In the store, every worker fetches it itself (they may be on other nodes).
        local = checkpoint.filesystem.type_name == "local"
        c["init_checkpoint"] = checkpoint.path if local else uri_of(location, checkpoint.path)
    queue = Queue(maxsize=1, actor_options={"num_cpus": 0})
    box: dict[str, Any] = {}

    def train() -> None:
        try:
            box["summary"] = fit(c, callbacks=[ReportToTune(queue)])
        except BaseException as exc:  # re-raised in the trial thread, where Tune sees it
            box["error"] = exc
        finally:
            queue.put(_DONE)

    # A daemon thread: when Tune stops the trial (ASHA, PBT's pause) the actor exits and
    # takes the Ray Train controller and workers it owns with it.
    thread = threading.Thread(target=train, name="raylm-trial-fit", daemon=True)
    thread.start()

    def forward(item) -> None:
        metrics, where = item
        tune.report(
            scalars(metrics),
            checkpoint=tune.Checkpoint(*where) if where else None,
        )

    final = None
    while (item := queue.get()) != _DONE:
        # The last step's report waits until the model is exported: a scheduler that
        # stops the trial on it (ASHA at max_t) must not cut the export short.
        if item[0].get("step", 0) >= c.get("max_steps", float("inf")):
            final = item
        else:
            forward(item)
    thread.join()
    if "error" in box:
        raise box["error"]
    if final is not None:
        forward(final)


def _compress_trial(cfg) -> None:
    """A compress chain is judged once, on its last model: the task metric and measured
    latency (batch 1), size and parameters, for single- or multi-objective search."""
    from ray import tune

    from ..compress.job import run

    summary = run(cfg)
    last = summary["rows"][-1]
    latency = last["latency_ms"]
    smallest = min(latency, key=int)
    tune.report(
        {
            **scalars(last["metrics"]),
            "latency_ms": latency[smallest],
            "size_mb": last["size_bytes"] / 1e6,
            "parameters": last["parameters"],
            "throughput_rows_per_s": last["throughput_rows_per_s"],
        }
    )


class ReleaseStoppedTrials(Callback):
    """Driver side: removes the Ray Train placement group of every trial that is not
    running.

    Tune stops a trial (ASHA, PBT's pause, the end of a sweep) by ending its actor; the
    Ray Train controller it owns dies with it before it removes its placement group,
    whose CPUs then stay reserved. Ray Train's own cleaner finds dead controllers only
    through the dashboard's state API, which a cluster without a dashboard lacks, so the
    sweep removes them itself, by the id the trial's rank 0 wrote.
    """

    def __init__(self, trials_dir: str):
        self.trials_dir = trials_dir
        self._t = 0.0

    def on_step_end(self, iteration, trials, **info):
        import time

        if time.monotonic() - self._t < 1.0:
            return
        self._t = time.monotonic()
        for trial in trials:
            if trial.status != "RUNNING":
                release(join(self.trials_dir, trial.trial_id))

    def on_trial_start(self, iteration, trials, trial, **info):
        # A restarted trial (PBT's exploit, a retry) may have been paused too briefly for
        # on_step_end to see it; its new run writes its own id only seconds from now.
        release(join(self.trials_dir, trial.trial_id))

    def on_experiment_end(self, trials, **info):
        for trial in trials:
            release(join(self.trials_dir, trial.trial_id))


def release(out: str) -> None:
    """Remove the placement group recorded in the trial dir ``out`` if it still holds
    resources."""
    import ray
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup

    trial = RunDir(out)
    pg_id = trial.read_text(PLACEMENT_GROUP_FILE)
    if not pg_id:
        return
    pg = PlacementGroup(PlacementGroupID(bytes.fromhex(pg_id.strip())))
    if ray.util.placement_group_table(pg).get("state") not in (None, "REMOVED"):
        ray.util.remove_placement_group(pg)
    trial.remove(PLACEMENT_GROUP_FILE)


__all__ = ["ReleaseStoppedTrials", "ReportToTune", "run_trial"]
