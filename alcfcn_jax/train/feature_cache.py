"""Training on cached trunk taps: when the cache applies, and its extractor for a model.

``train.feature_cache``: ``"off"``, ``"auto"`` (on when it changes nothing but speed: the trunk is
frozen, ``optim.trunk_lr_mult=0``; the model runs its trunk once (``ALCFCN.cacheable``); and the
trunk has no dropout), ``"memory"`` or ``"disk"`` (forced; refused for a trunk that trains or runs
twice, warned about for a trunk with dropout, which cached taps leave off). The store itself is
``alcfcn_jax.data.tap_cache``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from flax import nnx

from alcfcn_jax import config_utils
from alcfcn_jax.data import tap_cache

MODES = ("off", "auto", "memory", "disk")


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
    if mode not in MODES:
        raise config_utils.ConfigError(f"config.train.feature_cache={mode!r} is not one of {MODES}")
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
