"""``search.name`` -> Ray Tune's searcher and scheduler, and what each one refuses.

One entry per algorithm, so adding one (HyperBand, BOHB, ...) is one function here and
one ``conf/search/<name>.yaml``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..config import ConfigError
from .space import Param

# What PBT may perturb mid-run: values a checkpoint of another trial still loads under
# and that take effect when training resumes from it (the model, data, batch shape and
# ZeRO layout must not change under a copied checkpoint).
PBT_MUTABLE = (
    "trainer.lr",
    "trainer.weight_decay",
    "trainer.beta1",
    "trainer.beta2",
    "trainer.grad_clip",
    "trainer.min_lr_ratio",
    "trainer.mlm_probability",
)


def _asha(s: dict[str, Any], space: list[Param], ctx: dict[str, Any]):
    from ray.tune.schedulers import ASHAScheduler

    grace = s["grace_period"] or ctx["eval_every"]
    if grace < 1:
        raise ConfigError("search.grace_period", f"must be >= 1 step, got {grace}")
    if s["reduction_factor"] <= 1:
        raise ConfigError("search.reduction_factor", f"must be > 1, got {s['reduction_factor']}")
    max_t = ctx["max_steps"] or 10**9  # epochs-based: the length is known only to the trial
    if grace >= max_t:
        raise ConfigError(
            "search.grace_period",
            f"{grace} steps is not below trainer.max_steps={max_t}: no trial could be stopped",
        )
    scheduler = ASHAScheduler(
        time_attr="step", grace_period=grace, reduction_factor=s["reduction_factor"], max_t=max_t
    )
    return _draws(s, ctx), scheduler


def _pbt(s: dict[str, Any], space: list[Param], ctx: dict[str, Any]):
    from ray.tune.schedulers import PopulationBasedTraining

    for p in space:
        if p.key not in PBT_MUTABLE:
            raise ConfigError(
                f"search.params.{p.key}",
                "pbt copies checkpoints between trials, so it can only perturb values a "
                f"copied checkpoint still loads under: {', '.join(PBT_MUTABLE)}",
            )
    if not 0 < s["quantile_fraction"] <= 0.5:
        raise ConfigError(
            "search.quantile_fraction", f"must be in (0, 0.5], got {s['quantile_fraction']}"
        )
    if not 0 <= s["resample_probability"] <= 1:
        raise ConfigError(
            "search.resample_probability", f"must be in [0, 1], got {s['resample_probability']}"
        )
    interval = s["perturbation_interval"] or ctx["eval_every"]
    if interval < 1:
        raise ConfigError("search.perturbation_interval", f"must be >= 1 step, got {interval}")
    scheduler = PopulationBasedTraining(
        time_attr="step",
        perturbation_interval=interval,
        hyperparam_mutations={p.key: p.tune_domain(grid=False) for p in space},
        quantile_fraction=s["quantile_fraction"],
        resample_probability=s["resample_probability"],
    )
    return _draws(s, ctx), scheduler


def _optuna(s: dict[str, Any], space: list[Param], ctx: dict[str, Any]):
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # TPE proposes from the trials so far; with several metrics it is Optuna's
    # multi-objective TPE (MOTPE), whose trials Optuna ranks by Pareto dominance.
    sampler = optuna.samplers.TPESampler(seed=s["seed"])
    searcher = OptunaSearch(metric=ctx["metric"], mode=ctx["mode"], sampler=sampler)
    if ctx.get("max_concurrent"):
        from ray.tune.search import ConcurrencyLimiter

        searcher = ConcurrencyLimiter(searcher, max_concurrent=ctx["max_concurrent"])
    return searcher, None


def _draws(s: dict[str, Any], ctx: dict[str, Any]):
    """Independent draws from the space, seeded by ``search.seed`` (Tune's default
    searcher is unseeded, so the same command would sample other values each time).

    It takes the concurrency limit itself (as every algorithm here does): Tune applies
    ``max_concurrent_trials`` only to a ``Searcher`` and ignores it for a generator.
    """
    from ray.tune.search.basic_variant import BasicVariantGenerator

    return BasicVariantGenerator(
        random_state=s["seed"], max_concurrent=ctx.get("max_concurrent") or 0
    )


def _random(s: dict[str, Any], space: list[Param], ctx: dict[str, Any]):
    return _draws(s, ctx), None


def _grid(s: dict[str, Any], space: list[Param], ctx: dict[str, Any]):

    for p in space:
        if p.kind != "choice":
            raise ConfigError(
                f"search.params.{p.key}",
                f"grid needs finite values: write choice(...) or range(...), not {p.describe()}",
            )
    return _draws(s, ctx), None


ALGORITHMS: dict[str, Callable] = {
    "asha": _asha,
    "pbt": _pbt,
    "optuna": _optuna,
    "random": _random,
    "grid": _grid,
}


def build(s: dict[str, Any], space: list[Param], ctx: dict[str, Any]):
    """(searcher or None, scheduler or None) for ``search.name``; ConfigError if the space
    or the settings do not suit it. The searcher limits trials at once to
    ``ctx["max_concurrent"]`` (absent or 0: no limit)."""
    if s["name"] not in ALGORITHMS:
        raise ConfigError(
            "search.name", f"unknown {s['name']!r}; choose one of {', '.join(ALGORITHMS)}"
        )
    if isinstance(ctx["metric"], list) and s["name"] != "optuna":
        raise ConfigError(
            "search.metric",
            f"several metrics need search=optuna (its multi-objective sampler); {s['name']} "
            "ranks trials by one",
        )
    return ALGORITHMS[s["name"]](s, space, ctx)
