"""Every config key and its default, one table per section: the one source of both.

The preset builders (``configs/*.py``) build each section from its table (:func:`section`), and
``train.config.resolve`` fills the keys a config lacks from the same tables, once per entry point.
A table belongs to the layer that reads it and is gathered here:

  ``model``      ``models.MODEL_DEFAULTS`` (the reference's A-LCFCN)
  ``loss``       :data:`LOSS_DEFAULTS`
  ``optim``      :data:`OPTIM_DEFAULTS` (the reference's Adam)
  ``train``      :data:`TRAIN_DEFAULTS` (the reference's cadence: 1000 "epochs" of 124 draws)
  ``data``       ``data.config.defaults(dataset)`` (one table per dataset)
  ``budget``     :data:`BUDGET_DEFAULTS`
  ``instances``  ``eval.outlines.INSTANCE_DEFAULTS``
  ``stage1``, ``pm``  :data:`STAGE1_DEFAULTS`, :data:`PM_DEFAULTS` (runs on a stage-1 run's
                 pseudo masks only)

``REQUIRED`` names the keys a config must give itself (what it trains and how long); every other
key may be missing and takes its default.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from alcfcn_jax.eval.outlines import INSTANCE_DEFAULTS
from alcfcn_jax.models import MODEL_DEFAULTS

REFERENCE_VAL_SIZE = 124  # FishSeg val images = random draws per reference "epoch"

LOSS_DEFAULTS: dict[str, Any] = {
    "name": "lcfcn",
    # AffinityNet's balanced affinity loss (losses/affinity.py), added with this weight
    # (0 = the reference: off).
    "affinity_weight": 0.0,
    # Stride-8 cells with pooled fish probability (or mask share) above affinity_fg are fish,
    # below affinity_bg water; clicked cells are always fish.
    "affinity_fg": 0.7,
    "affinity_bg": 0.3,
    # The map the cells come from: "cam" (the activation map) or "pseudo_masks" (a stage-1 run's
    # masks, fish cells numbered by their nearest click; needs a stage1 section).
    "affinity_labels": "cam",
    # WISE's embedding term (losses/embedding.py; needs model.embedding_dim > 0), added with this
    # weight (0 = off; WISE: 0.1). Pixels sampled per image: per_object from each of at most
    # max_objects clicked fish, and background ones.
    "embedding_weight": 0.0,
    "embedding_per_object": 8,
    "embedding_background": 32,
    "embedding_max_objects": 16,
}

OPTIM_DEFAULTS: dict[str, Any] = {
    # Torch-style Adam (weight decay as L2 in the gradient), the reference's settings.
    "name": "adam",
    "lr": 1e-6,
    "b1": 0.99,
    "b2": 0.999,
    "eps": 1e-8,
    "weight_decay": 0.0,
    # Learning-rate multiplier for parameters under the model's ``trunk`` (1 = one lr).
    "trunk_lr_mult": 1.0,
    # Global gradient-norm clipping; 0 disables it (the reference does not clip).
    "clip_grad_norm": 0.0,
    # "constant" (the reference) or "cosine" (lr decays to 0 over train.num_steps).
    "schedule": "constant",
}

TRAIN_DEFAULTS: dict[str, Any] = {
    "num_steps": 1000 * REFERENCE_VAL_SIZE,
    # Global batch; 0 = one image per device (the reference trains at batch 1).
    "batch_size": 0,
    "log_every": 50,
    "eval_every": REFERENCE_VAL_SIZE,
    "checkpoint_every": REFERENCE_VAL_SIZE,
    "keep_checkpoints": 2,
    # Validation metric that picks the best checkpoint ("miou"; "mae"/"game" minimised).
    "select_metric": "miou",
    # Global evaluation batch; 0 = one image per device.
    "eval_batch_size": 0,
    # After training, evaluate the test split with the best checkpoint (the reference reports
    # test numbers at the best validation epoch).
    "eval_test": True,
    # Report the MAE of always predicting the median training count next to val MAE.
    "count_baseline": False,
    # Skip the optimizer update when the loss is exactly 0 (the reference does).
    "skip_zero_loss": True,
    "tensorboard": "auto",
    "progress": True,
    # Frozen-trunk feature cache (train/inputs.py): "auto" trains the heads on taps computed once
    # when the trunk is frozen (optim.trunk_lr_mult=0) and deterministic (it changes nothing but
    # speed); "memory" / "disk" force a store; "off" always runs the trunk.
    "feature_cache": "auto",
    # Disk stores ("" = ~/.cache/alcfcn_jax/tap_cache), storage dtype, and the size up to which
    # "auto" keeps a store in memory.
    "feature_cache_dir": "",
    "feature_cache_dtype": "float16",
    "feature_cache_memory_mb": 256,
    # Compute the forward and the LCFCN loss in this many parts of every device's batch, so the
    # host callback of one part overlaps the device work of another (train/step.py); 0 = auto
    # (4 on the CPU backend without dropout or embedding term, else 1).
    "loss_splits": 0,
    # A-LCFCN: train the activation logits without the random walk for this many steps first
    # (0 = the reference: the walk from the first step).
    "walk_warmup_steps": 0,
}

# Annotation budget on the training split: 0/0 = every training image.
BUDGET_DEFAULTS: dict[str, Any] = {"n_background": 0, "n_fish": 0, "seed": 0}

STAGE1_DEFAULTS: dict[str, Any] = {
    # The stage-1 workdir: pseudo masks are read from <workdir>/pseudo_masks.
    "workdir": "",
    # Which stage-1 checkpoint the masks must come from ("best", "latest" or a step).
    "which": "best",
    # Accept masks written from another checkpoint (not recommended).
    "allow_stale": False,
}

# Iterative rounds (train/rounds.py): R > 1 trains R stage-2 models in <workdir>/round_<r>/,
# each on the pseudo masks of the one before (round 1 on stage 1's); 1 = a single stage 2.
PM_DEFAULTS: dict[str, Any] = {"rounds": 1}

SECTIONS: dict[str, dict[str, Any]] = {
    "model": MODEL_DEFAULTS,
    "loss": LOSS_DEFAULTS,
    "optim": OPTIM_DEFAULTS,
    "train": TRAIN_DEFAULTS,
    "budget": BUDGET_DEFAULTS,
    "instances": INSTANCE_DEFAULTS,
    "stage1": STAGE1_DEFAULTS,
    "pm": PM_DEFAULTS,
}

# Keys a config must give (sections: data's ``dataset`` too, checked by the data layer).
REQUIRED: dict[str, tuple[str, ...]] = {
    "model": ("name", "n_classes", "trunk_mode", "beta", "logt", "radius", "rw_method", "dtype"),
    "loss": ("name",),
    "optim": ("name", "lr", "b1", "b2", "eps", "weight_decay"),
    "train": (
        "num_steps",
        "batch_size",
        "log_every",
        "eval_every",
        "checkpoint_every",
        "keep_checkpoints",
        "select_metric",
        "eval_batch_size",
    ),
}


def section(section_name: str, /, **overrides: Any) -> ml_collections.ConfigDict:
    """The ``config.<section_name>`` block with every key at its default, then ``overrides``.

    Raises:
      KeyError: an override that is not a key of the section (a typo would otherwise add a key
        nothing reads).
    """
    table = SECTIONS[section_name]
    unknown = sorted(set(overrides) - set(table))
    if unknown:
        raise KeyError(f"config.{section_name} has no key(s) {unknown}; its keys: {sorted(table)}")
    return ml_collections.ConfigDict({**table, **overrides})
