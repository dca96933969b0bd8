"""``raylm sweep``: Ray Tune over whole raylm training runs (see :mod:`raylm.tune.job`)."""

from .job import run

__all__ = ["run"]
