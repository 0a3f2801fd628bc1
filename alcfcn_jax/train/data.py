"""The data of one training run: sources, the training iterator, evaluation batches.

:func:`build` reads the training and validation splits, checks every file they will read
(``data.source.validate_source``: a bad file fails before the first step), applies the annotation budget
(``config.budget``) and, for stage 2 of the pseudo-mask pipeline, stage 1's pseudo masks (checked
against stage 1's current best checkpoint before any image is read); :func:`attach_feature_cache`
swaps the sources for the frozen trunk's cached taps when that cache applies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from alcfcn_jax.checkpoint import (
    Checkpointer,
    CheckpointError,
    checkpoint_dir,
    run_selection_metric,
)
from alcfcn_jax.data import get_source, has_boxes, pipeline
from alcfcn_jax.data import pseudo_masks as pm
from alcfcn_jax.data.budget import budget_subset
from alcfcn_jax.data.source import example_ids, validate_source
from alcfcn_jax.train import feature_cache


@dataclasses.dataclass
class TrainData:
    """Sources, the training iterator and evaluation batching of one run.

    ``train`` is the training source (images); ``train_input`` what the iterator reads (the same,
    or its frozen-trunk feature cache); ``val`` the validation source (images or cached taps).
    """

    data_cfg: Any
    train: Any
    val: Any
    eval_batch_local: int
    train_input: Any = None
    iterator: Any = None

    @property
    def boxes(self) -> bool:
        """Whether the ground truth is boxes (box hit rate and precision apply)."""
        return has_boxes(self.data_cfg)

    def eval_batches(self, source) -> Iterator[dict[str, np.ndarray]]:
        """This process's evaluation batches of ``source``."""
        return pipeline.eval_batches_from_config(
            self.data_cfg,
            source,
            batch_size=self.eval_batch_local,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )

    def test_source(self):
        """The test split's source."""
        return get_source(self.data_cfg, self.data_cfg.test_split)


def build(config: Any, *, local_batch: int, eval_batch_local: int) -> TrainData:
    """The run's sources and training iterator (``local_batch`` images per process and step)."""
    data_cfg, manifest = resolve_pseudo_masks(config)
    train = get_source(data_cfg, data_cfg.train_split)
    if "budget" in config:
        train = budget_subset(
            train,
            n_background=int(config.budget.n_background),
            n_fish=int(config.budget.n_fish),
            seed=int(config.budget.seed),
        )
    pm.check_coverage(len(train), manifest, data_cfg.pseudo_mask_dir, example_ids(train))
    val = get_source(data_cfg, data_cfg.val_split)
    # Every file the run will read is checked now, not when first drawn hours later.
    validate_source(train, f"training split {data_cfg.train_split!r}")
    validate_source(val, f"validation split {data_cfg.val_split!r}")
    logging.info("Data: %d training and %d validation images", len(train), len(val))
    data = TrainData(data_cfg, train, val, eval_batch_local, train_input=train)
    return _with_iterator(data, config, local_batch)


def _with_iterator(data: TrainData, config: Any, local_batch: int) -> TrainData:
    data.iterator = pipeline.train_iterator_from_config(
        data.data_cfg,
        data.train_input,
        batch_size=local_batch,
        seed=int(config.seed),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    return data


def attach_feature_cache(
    config: Any, model: nnx.Module, data: TrainData, local_batch: int
) -> TrainData:
    """Swaps the training and validation sources for their cached taps when the cache applies
    (``alcfcn_jax.train.feature_cache``)."""
    mode = feature_cache.cache_mode(config, model)
    if mode is None:
        return data
    kwargs = pipeline.batching(data.data_cfg)
    batching = {k: kwargs[k] for k in ("pad_or_resize", "bucket_multiple", "fixed_size")}
    cached = feature_cache.cached_sources(
        config, model, {"train": data.train, "val": data.val}, batching=batching, mode=mode
    )
    data.train_input, data.val = cached["train"], cached["val"]
    return _with_iterator(data, config, local_batch)


# --------------------------------------------------------------------------------------------
# Stage 2: training on stage 1's pseudo masks


def _expected_step(config: Any) -> int | None:
    """Stage 1's checkpoint step the masks must come from (None: not checked)."""
    stage1 = pm.stage1_workdir(config)
    if stage1 is None or bool(config.stage1.allow_stale):
        return None
    if not checkpoint_dir(stage1).is_dir():
        logging.warning(
            "stage1.workdir %s has no checkpoints/: the pseudo masks' step cannot be checked",
            stage1,
        )
        return None
    # Stage 1's best step by stage 1's own metric (a run selected by MAE has no val_miou).
    ckpt = Checkpointer(stage1, read_only=True, best_metric=run_selection_metric(stage1))
    try:
        return ckpt.resolve(str(config.stage1.which))
    except CheckpointError:
        return None
    finally:
        ckpt.close()


def resolve_pseudo_masks(config: Any) -> tuple[Any, dict[str, Any] | None]:
    """The data config to read the training data with, and the pseudo masks' manifest.

    Returns ``(config.data, None)`` when the config does not train on pseudo masks, else a copy
    of ``config.data`` with ``pseudo_mask_dir`` set and the checked manifest.

    Raises:
      StalePseudoMasksError: missing folder or manifest, masks from another stage-1 step (set
        ``stage1.allow_stale=True`` to accept them anyway), or missing mask files.
    """
    mask_dir = pm.pseudo_mask_dir(config)
    if mask_dir is None:
        return config.data, None
    try:
        manifest = pm.load_manifest(mask_dir, expected_step=_expected_step(config))
    except pm.PseudoMaskError as err:
        raise pm.StalePseudoMasksError(str(err)) from err
    data_cfg = ml_collections.ConfigDict(config.data.to_dict())
    data_cfg.pseudo_mask_dir = str(mask_dir)
    logging.info(
        "Training on pseudo masks from %s (checkpoint step %s, %d masks)",
        mask_dir,
        manifest.get("checkpoint_step"),
        len(manifest.get("ids", ())),
    )
    return data_cfg, manifest
