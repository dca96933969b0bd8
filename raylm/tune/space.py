"""The search space: ``search.params`` in Hydra's sweeper grammar, parsed by Hydra's own
override parser, checked against the base command, and turned into Ray Tune domains.

The grammar is the one Hydra's sweeper plugins read (``choice(8, 16)``, ``range(1, 5)``,
``interval(1e-5, 1e-3)``, ``tag(log, interval(...))``), so a space written for
``--multirun`` or the Optuna sweeper plugin reads the same here.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from ..config import ConfigError, conf_dir

# Keys a sweep sets per trial itself: sweeping them would break the sweep.
SWEEP_OWNED = ("output_dir", "resume", "overwrite", "ray")


@dataclass(frozen=True)
class Param:
    """One swept key. ``values`` for choice/range; ``low``/``high`` for an interval."""

    key: str
    kind: str  # "choice" | "interval"
    values: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    integer: bool = False
    group: bool = False  # a config group (model, deepspeed, ...): values are option names

    def candidates(self) -> list[Any]:
        """The values a check composes: every choice, or an interval's two ends."""
        return list(self.values) if self.kind == "choice" else [self.low, self.high]

    @property
    def encoded(self) -> bool:
        """Choices that are not plain scalars (``choice([distill, prune], [distill])``)
        reach Tune as their override text: Optuna's categorical takes scalars only."""
        return self.kind == "choice" and any(
            isinstance(v, (list, tuple, dict)) for v in self.values
        )

    def tune_values(self) -> list[Any]:
        return [hydra_value(v) for v in self.values] if self.encoded else list(self.values)

    def tune_domain(self, grid: bool):
        from ray import tune

        if self.kind == "choice":
            values = self.tune_values()
            return tune.grid_search(values) if grid else tune.choice(values)
        if self.integer:
            return (tune.lograndint if self.log else tune.randint)(
                int(self.low), int(self.high) + 1
            )
        return (tune.loguniform if self.log else tune.uniform)(self.low, self.high)

    def describe(self) -> str:
        if self.kind == "choice":
            return f"choice({', '.join(map(str, self.values))})"
        return f"{'log-' if self.log else ''}interval({self.low}, {self.high})"


def _parse_one(key: str, expr: Any) -> Any:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    text = expr if isinstance(expr, str) else json.dumps(expr)
    try:
        return OverridesParser.create().parse_overrides([f"{key}={text}"])[0]
    except HydraException as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(
            f"search.params.{key}",
            f"cannot parse {text!r} ({first}); write choice(a, b), range(1, 5), "
            "interval(1e-5, 1e-3) or tag(log, interval(1e-5, 1e-3))",
        ) from None


def parse_param(key: str, expr: Any) -> Param:
    """One ``search.params`` entry -> :class:`Param`; a ConfigError names what is wrong."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    where = f"search.params.{key}"
    if not re.fullmatch(r"[A-Za-z_][\w\-]*(\.[\w\-]+)*", key):
        raise ConfigError(where, "must be a dotted config key such as trainer.lr")
    if key.split(".")[0] in SWEEP_OWNED:
        raise ConfigError(where, f"{key} is set per trial by the sweep and cannot be swept")
    value = _parse_one(key, expr).value()
    tags = getattr(value, "tags", set()) or set()
    unknown = tags - {"log"}
    if unknown:
        raise ConfigError(where, f"unknown tag {sorted(unknown)[0]!r}; the one tag read is log")
    log = "log" in tags
    if isinstance(value, ChoiceSweep):
        values = tuple(value.list)
    elif isinstance(value, RangeSweep):
        step = value.step or 1
        values = tuple(_range(value.start, value.stop, step))
    elif isinstance(value, IntervalSweep):
        low, high = value.start, value.end
        if not low < high:
            raise ConfigError(
                where, f"interval({low}, {high}) is empty: the start must be below the end"
            )
        if log and low <= 0:
            raise ConfigError(where, f"a log interval needs a start above 0, got {low}")
        integer = all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high))
        return Param(key, "interval", low=low, high=high, log=log, integer=integer)
    else:
        raise ConfigError(
            where,
            f"{expr!r} is one value, not a space; write choice(...), range(...) or interval(...) "
            "(a fixed value belongs with the base command's overrides)",
        )
    if not values:
        raise ConfigError(where, f"{expr!r} has no values to choose from")
    if len(set(map(repr, values))) != len(values):
        raise ConfigError(where, f"{expr!r} lists a value twice")
    return Param(key, "choice", values=values, log=log)


def _range(start: float, stop: float, step: float) -> list[Any]:
    out, v = [], start
    while (step > 0 and v < stop) or (step < 0 and v > stop):
        out.append(v)
        v = v + step
    return out


def group_options(key: str) -> list[str] | None:
    """Option names of a config group (``model`` -> bert-tiny, ...), or None if ``key`` is
    not a group."""
    d = conf_dir() / key.replace(".", "/")
    if not d.is_dir():
        return None
    return sorted(p.stem for p in d.glob("*.yaml"))


def parse_space(params: dict[str, Any], base_cfg) -> list[Param]:
    """Every entry parsed and checked against the base command's composed config: the key
    exists there, a group's values are its options."""
    from omegaconf import OmegaConf

    if not params:
        raise ConfigError(
            "search.params",
            "is empty; give the space, e.g. search.params='{trainer.lr: \"interval(1e-5, 1e-3)\"}'",
        )
    out = []
    for key, expr in params.items():
        p = parse_param(key, expr)
        options = group_options(key)
        if options is not None:
            bad = [v for v in p.candidates() if str(v) not in options]
            if p.kind != "choice" or bad:
                raise ConfigError(
                    f"search.params.{key}",
                    f"{key} is a config group: choose among its options {', '.join(options)}"
                    + (f"; {bad[0]!r} is not one" if bad else ""),
                )
            p = Param(key, "choice", values=tuple(map(str, p.values)), group=True)
        elif OmegaConf.select(base_cfg, key, default=_ABSENT) is _ABSENT:
            raise ConfigError(f"search.params.{key}", f"the base command has no key {key} to sweep")
        out.append(p)
    return out


_ABSENT = object()


def hydra_value(v: Any) -> str:
    """A Python value written back in Hydra's override grammar."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(hydra_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{hydra_value(x)}" for k, x in v.items()) + "}"
    s = str(v)
    if re.fullmatch(r"[\w./\-+@:]+", s) and s.lower() not in ("null", "true", "false"):
        return s
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def trial_overrides(config: dict[str, Any], space: list[Param]) -> list[str]:
    """A trial's sampled values as base-command overrides, in the space's order."""
    return [
        f"{p.key}={config[p.key] if p.encoded else hydra_value(config[p.key])}"
        for p in space
        if p.key in config
    ]


def last_wins(overrides: list[str]) -> list[str]:
    """Overrides with each plain ``key=value`` kept once, at its last place (where Hydra
    would take it from), so a rerun command reads as what it runs."""

    def key(item: str) -> str | None:
        k = item.split("=", 1)[0] if "=" in item else None
        return k if k and not k.startswith(("+", "~")) else None

    last = {key(o): i for i, o in enumerate(overrides) if key(o)}
    return [o for i, o in enumerate(overrides) if key(o) is None or last[key(o)] == i]


_SWEEP_CALL = re.compile(r"\s*(choice|range|interval|tag|glob|shuffle|sort)\s*\(")


def is_sweep_expression(item: str) -> bool:
    """``key=choice(...)``-style overrides on the sweep's command line join the space (a
    malformed one too, so its error names the space, not the base command)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    if _SWEEP_CALL.match(item.split("=", 1)[1]):
        return True
    try:
        return OverridesParser.create().parse_overrides([item])[0].is_sweep_override()
    except HydraException:
        return False


# Top-level keys of conf/sweep.yaml: everything else on the sweep's command line is the
# base command's.
SWEEP_KEYS = ("base", "base_overrides", "extra_overrides", "search", *SWEEP_OWNED, "hydra")


def split_command_line(overrides: list[str]) -> list[str]:
    """The sweep's command line -> overrides of conf/sweep.yaml.

    Keys the sweep owns stay; ``key=<sweep expression>`` joins ``search.params``; every
    other ``key=value`` is the base command's and travels in ``extra_overrides``.
    """
    own, extra = [], []
    for item in overrides:
        if item.startswith("-") or "=" not in item:
            own.append(item)
            continue
        key, value = item.split("=", 1)
        root = key.lstrip("+~").split(".")[0]
        if root in SWEEP_KEYS:
            own.append(item)
        elif is_sweep_expression(item):
            own.append(f"+search.params.{hydra_value(key.lstrip('+'))}={hydra_value(value)}")
        else:
            extra.append(item)
    if extra:
        own.append(f"extra_overrides=[{','.join(hydra_value(x) for x in extra)}]")
    return own


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{trainer: {lr: ...}}`` (how ``search.params.trainer.lr=...`` composes) and
    ``{trainer.lr: ...}`` (how YAML writes it) are the same space."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
