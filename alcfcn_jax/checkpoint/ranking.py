"""The best-checkpoint rule: which validation figure ranks checkpoints, and which value wins.

``is_better`` is the one rule: the training loop's best step, the retention of
``checkpoint.manager.Checkpointer`` and the pseudo-mask rounds' early stop all use it.
"""

from __future__ import annotations

import math
from typing import Any

DEFAULT_BEST_METRIC = "val_miou"
# Metrics where lower is better; every other selection metric is maximised.
LOWER_IS_BETTER = ("mae", "rmse", "game", "loss")


def best_mode(metric: str) -> str:
    """``"min"`` for error-like metrics (MAE, GAME, loss...), else ``"max"``."""
    name = metric.split("_", 1)[-1] if metric.startswith(("val_", "test_")) else metric
    return "min" if name.startswith(LOWER_IS_BETTER) else "max"


def is_better(value: float, best: float | None, metric: str) -> bool:
    """The one best-checkpoint rule: ``value`` of ``metric`` replaces ``best``.

    A tie replaces the best (the reference's ``>=``: later checkpoints win); a non-finite value
    never does. Orbax's retention below keeps exactly the checkpoint this rule picks.
    """
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value >= best if best_mode(metric) == "max" else value <= best


def selection_metric(config: Any) -> str:
    """The checkpoint-ranking key of a config: ``val_<train.select_metric>`` (``val_miou``)."""
    return f"val_{config.train.select_metric}"
