"""The count baseline every count figure is read against: always predict the median."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from alcfcn_jax import sharding as shd
from alcfcn_jax.data.source import example_count


def count_baseline(train_source: Any, val_rows: list[Mapping[str, Any]]) -> dict[str, float]:
    """MAE on validation of always predicting the median training count.

    Args:
      train_source: the training source (its counts are read without decoding images where the
        source can, ``data.source.example_count``).
      val_rows: per-image validation rows with ``true_count`` (from ``evaluate(per_image=True)``;
        every process holds them all).

    Collective on a multi-process job: every process calls it.
    """
    # Each process reads its own slice of the training counts; the median is of them all.
    n, p = len(train_source), jax.process_count()
    mine = np.asarray(
        [example_count(train_source, i) for i in range(jax.process_index(), n, p)], np.int64
    )
    counts = shd.gather_arrays({"count": mine})["count"]
    median = float(np.median(counts))
    true = np.asarray([r["true_count"] for r in val_rows], np.float64)
    return {
        "median_train_count": median,
        "median_baseline_mae": float(np.abs(true - median).mean()),
    }
