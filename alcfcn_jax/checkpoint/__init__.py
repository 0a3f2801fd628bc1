"""Checkpoints of a training run: the Orbax manager (``manager``) and the ranking rule
(``ranking``). Restoring a model for inference: ``alcfcn_jax.eval.inference``."""

from alcfcn_jax.checkpoint.manager import (
    CHECKPOINT_DIR,
    FORMAT_VERSION,
    ITEMS,
    STRUCTURAL_KEYS,
    Checkpointer,
    CheckpointError,
    checkpoint_dir,
    compare_structures,
    decode_iterator_state,
    run_selection_metric,
)
from alcfcn_jax.checkpoint.ranking import (
    DEFAULT_BEST_METRIC,
    LOWER_IS_BETTER,
    best_mode,
    is_better,
    selection_metric,
)

__all__ = [
    "CHECKPOINT_DIR",
    "DEFAULT_BEST_METRIC",
    "FORMAT_VERSION",
    "ITEMS",
    "LOWER_IS_BETTER",
    "STRUCTURAL_KEYS",
    "CheckpointError",
    "Checkpointer",
    "best_mode",
    "checkpoint_dir",
    "compare_structures",
    "decode_iterator_state",
    "is_better",
    "run_selection_metric",
    "selection_metric",
]
