"""The inputs of one training run: sources, the training iterator, evaluation batches, and the
frozen trunk's cached taps.

:func:`build` reads the training and validation splits, checks every file they will read
(``data.source.validate_source``: a bad file fails before the first step), applies the annotation
budget (``config.budget``) and, for a run on a stage-1 run's pseudo masks, those masks (checked
against stage 1's current best checkpoint before any image is read); :func:`attach_feature_cache`
swaps the sources for the frozen trunk's cached taps when that cache applies.

``train.feature_cache``: ``"off"``, ``"auto"`` (on when it changes nothing but speed: the trunk is
frozen, ``optim.trunk_lr_mult=0``; the model runs its trunk once (``ALCFCN.cacheable``); and the
trunk has no dropout), ``"memory"`` or ``"disk"`` (forced; refused for a trunk that trains or runs
twice, warned about for a trunk with dropout, which cached taps leave off). The store itself is
``alcfcn_jax.data.tap_cache``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from alcfcn_jax import config_utils
from alcfcn_jax.checkpoint import (
    Checkpointer,
    CheckpointError,
    checkpoint_dir,
    run_selection_metric,
)
from alcfcn_jax.data import get_source, has_boxes, pipeline, tap_cache
from alcfcn_jax.data import pseudo_masks as pm
from alcfcn_jax.data.budget import budget_subset
from alcfcn_jax.data.source import example_ids, validate_source


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
    mode = cache_mode(config, model)
    if mode is None:
        return data
    kwargs = pipeline.batching(data.data_cfg)
    batching = {k: kwargs[k] for k in ("pad_or_resize", "bucket_multiple", "fixed_size")}
    cached = cached_sources(
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


# --- the frozen trunk's cached taps ------------------------------------------------------------

FEATURE_CACHE_MODES = ("off", "auto", "memory", "disk")


def _has_dropout(module: nnx.Module) -> bool:
    return any(
        isinstance(m, nnx.Dropout) and float(m.rate) > 0 for _, m in nnx.iter_modules(module)
    )


def cache_mode(config: Any, model: nnx.Module) -> str | None:
    """The store mode (``"auto"``, ``"memory"``, ``"disk"``) to train with, or None for images.

    Raises:
      ConfigError: a forced cache on a trunk that trains or runs twice, or an unknown mode.
    """
    mode = str(config.train.feature_cache)
    if mode not in FEATURE_CACHE_MODES:
        raise config_utils.ConfigError(
            f"config.train.feature_cache={mode!r} is not one of {FEATURE_CACHE_MODES}"
        )
    if mode == "off":
        return None
    frozen = float(config.optim.trunk_lr_mult) == 0.0
    cacheable = bool(getattr(model, "cacheable", False))
    dropout = cacheable and _has_dropout(model.trunk)
    if mode == "auto":
        return "auto" if frozen and cacheable and not dropout else None
    if not frozen:
        raise config_utils.ConfigError(
            f"config.train.feature_cache={mode!r} needs a frozen trunk "
            "(config.optim.trunk_lr_mult=0): a trained trunk's taps change every step"
        )
    if not cacheable:
        raise config_utils.ConfigError(
            f"config.train.feature_cache={mode!r} needs one trunk pass per image: use "
            "config.model.trunk_mode='single_pass' (or an activation-only model)"
        )
    if dropout:
        logging.warning("Feature cache: the trunk's dropout is off on cached taps (eval mode)")
    return mode


def _flat_arrays(module: nnx.Module) -> dict[str, np.ndarray]:
    flat = nnx.to_flat_state(nnx.state(module))
    return {"/".join(str(p) for p in path): np.asarray(v[...]) for path, v in flat}


def key_parts(model: nnx.Module) -> dict[str, Any]:
    """What besides the images decides the taps: the trunk's class, structure and weights."""
    trunk = model.trunk
    return {
        "trunk": type(trunk).__name__,
        "taps": list(getattr(trunk, "taps", ())),
        "tap_channels": list(getattr(trunk, "tap_channels", ())),
        "input_multiple": int(model.input_multiple),
        "compute_dtype": str(np.dtype(model.dtype)),
        "weights": tap_cache.trunk_digest(_flat_arrays(trunk)),
    }


def make_extract(model: nnx.Module) -> tap_cache.Extract:
    """``images -> {name: taps}`` of the model's frozen trunk (eval mode), jitted, as numpy."""
    graphdef, state = nnx.split(model.trunk)
    multiple = model.input_multiple
    dtype = model.dtype

    @jax.jit
    def run(state, images):
        from alcfcn_jax.ops.resize import pad_to_multiple

        trunk = nnx.merge(graphdef, state)
        return trunk(pad_to_multiple(images.astype(dtype), multiple), train=False)

    return lambda images: {k: np.asarray(v) for k, v in jax.device_get(run(state, images)).items()}


def cached_sources(
    config: Any,
    model: nnx.Module,
    sources: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    batching: Mapping[str, Any],
    mode: str,
) -> dict[str, tap_cache.TapSource]:
    """``TapSource`` views of ``sources`` (name -> source); "train" gets mirrors with flips on.

    Every source is stored separately (its own key); disk stores are reused across runs.
    """
    tc = config.train
    extract = make_extract(model)
    parts = key_parts(model)
    flips = bool(config.data.flip)
    out = {}
    for name, source in sources.items():
        store = tap_cache.build_tap_store(
            source,
            extract,
            key_parts=parts,
            flips=flips and name == "train",
            batching=batching,
            mode=mode,
            cache_dir=str(tc.feature_cache_dir) or None,
            dtype=str(tc.feature_cache_dtype),
            memory_mb=float(tc.feature_cache_memory_mb),
            name=name,
        )
        out[name] = tap_cache.TapSource(source, store, batching)
    return out
