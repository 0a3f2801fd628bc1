"""Compatibility path: the metrics live in :mod:`alcfcn_jax.eval.metrics`."""

from alcfcn_jax.eval.metrics import (  # noqa: F401
    SegMeter,
    blobs_to_points,
    confusion,
    count_blobs,
    game,
    iou_from_confusion,
)
