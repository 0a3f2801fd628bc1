"""Checked import/export of named weight arrays into NNX model state.

An importer describes a checkpoint by a *mapping* ``{source_name: (target, transform)}``:
``source_name`` is the checkpoint's key (``"b2.conv_branch2a.weight"``), ``target`` the path of a
variable in ``nnx.state(model)`` (a tuple such as ``("trunk", "b2", "conv_branch2a", "kernel")`` or
the same as a dotted string) and ``transform`` a :class:`Transform` (checkpoint layout -> model layout
and back). :func:`apply_mapping` checks everything before writing anything and fails with ONE
:class:`WeightImportError` that lists every missing, unexpected and mis-shaped entry; nothing is
silently skipped: checkpoint keys the model does not use must be named in ``ignore`` and model
weights the checkpoint lacks in ``allow_missing``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np
from flax import nnx

from alcfcn_jax.io import save_npz_atomic
from alcfcn_jax.models.layers import Frozen

__all__ = [
    "CONV_OIHW_TO_HWIO",
    "IDENTITY",
    "LINEAR_OI_TO_IO",
    "Transform",
    "WeightImportError",
    "apply_mapping",
    "export_arrays",
    "load_arrays",
    "save_npz",
]

PathLike = str | os.PathLike
Target = tuple[str | int, ...] | str
# Variables an importer must cover; RNG keys/counters are not weights.
_WEIGHT_TYPES = (nnx.Param, Frozen, nnx.BatchStat)


class WeightImportError(ValueError):
    """A checkpoint does not fit the model (names, shapes) or cannot be read."""


@dataclass(frozen=True)
class Transform:
    """A layout change between checkpoint and model, with its inverse for export."""

    name: str
    to_model: Callable[[np.ndarray], np.ndarray]
    to_source: Callable[[np.ndarray], np.ndarray]


IDENTITY = Transform("identity", lambda a: a, lambda a: a)
# torch Conv2d weight (out, in, kh, kw) <-> flax Conv kernel (kh, kw, in, out).
CONV_OIHW_TO_HWIO = Transform(
    "conv_oihw_to_hwio",
    lambda a: np.transpose(a, (2, 3, 1, 0)),
    lambda a: np.transpose(a, (3, 2, 0, 1)),
)
# torch Linear weight (out, in) <-> flax Linear kernel (in, out).
LINEAR_OI_TO_IO = Transform("linear_oi_to_io", lambda a: a.T, lambda a: a.T)


def load_arrays(path: PathLike) -> dict[str, np.ndarray]:
    """Reads named arrays from a PyTorch checkpoint (``.pth``/``.pt``) or a numpy ``.npz``.

    Args:
      path: the weight file. ``.pth``/``.pt`` are parsed by
        :func:`alcfcn_jax.weights.torch_pickle.load_state_dict` (no torch needed, no code run);
        ``.npz`` is read with ``allow_pickle=False``.

    Returns:
      ``{name: array}``.

    Raises:
      FileNotFoundError: the file does not exist.
      WeightImportError: unknown suffix or unreadable content.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weight file not found: {path}")
    suffix = os.path.splitext(path)[1].lower()
    if suffix in (".pth", ".pt"):
        from alcfcn_jax.weights import torch_pickle

        try:
            return torch_pickle.load_state_dict(path)
        except torch_pickle.TorchCheckpointError as e:
            raise WeightImportError(str(e)) from e
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: np.asarray(data[k]) for k in data.files}
        except (ValueError, OSError) as e:
            raise WeightImportError(f"{path}: cannot read as .npz ({e})") from e
    raise WeightImportError(
        f"{path}: unsupported weight file suffix {suffix!r}; expected .pth, .pt or .npz"
    )


def save_npz(path: PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    """Writes named arrays to ``path`` (``.npz``) atomically (``alcfcn_jax.io``)."""
    save_npz_atomic(path, arrays)


def _norm_target(target: Target) -> tuple[str | int, ...]:
    if isinstance(target, str):
        return tuple(int(p) if p.isdigit() else p for p in target.split("."))
    return tuple(target)


def _fmt(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def _weight_vars(model: nnx.Module) -> tuple[nnx.State, dict[tuple, nnx.Variable]]:
    state = nnx.state(model)
    flat = {tuple(p): v for p, v in nnx.to_flat_state(state) if isinstance(v, _WEIGHT_TYPES)}
    return state, flat


def apply_mapping(
    model: nnx.Module,
    arrays: Mapping[str, np.ndarray],
    mapping: Mapping[str, tuple[Target, Transform]],
    *,
    allow_missing: Iterable[str] = (),
    ignore: Iterable[str] | Callable[[str], bool] = (),
    require_complete: bool = True,
    source: str = "<arrays>",
) -> list[str]:
    """Writes checkpoint arrays into ``model`` after checking names and shapes of every entry.

    Args:
      model: the NNX module to fill (modified in place, only if every check passes).
      arrays: checkpoint arrays by source name.
      mapping: ``{source_name: (target path in nnx.state(model), Transform)}``.
      allow_missing: source names that may be absent from ``arrays`` (their model weights keep
        their fresh initialisation, e.g. ``fc8``); each must be a key of ``mapping``.
      ignore: checkpoint keys that are deliberately not used (names, or a predicate such as
        ``lambda k: k.endswith("num_batches_tracked")``).
      require_complete: also fail when a weight of the model (Param, Frozen or BatchStat variable)
        is not the target of any mapping entry.
      source: file name for messages.

    Returns:
      The source names that were allowed missing and actually absent (kept at initialisation).

    Raises:
      WeightImportError: one message listing every problem found.
    """
    allow_missing = set(allow_missing)
    is_ignored = ignore if callable(ignore) else set(ignore).__contains__
    state, flat = _weight_vars(model)
    problems: list[str] = []

    bad_allow = sorted(allow_missing - set(mapping))
    if bad_allow:
        problems.append(f"allow_missing names not in the mapping: {bad_allow}")
    targets = {name: _norm_target(t) for name, (t, _) in mapping.items()}
    no_target = sorted(f"{n} -> {_fmt(t)}" for n, t in targets.items() if t not in flat)
    if no_target:
        problems.append(f"mapping targets that are not weights of the model: {no_target}")
    if require_complete:
        covered = set(targets.values())
        uncovered = sorted(_fmt(p) for p in flat if p not in covered)
        if uncovered:
            problems.append(f"model weights no checkpoint entry maps to: {uncovered}")

    missing = sorted(n for n in mapping if n not in arrays and n not in allow_missing)
    unexpected = sorted(k for k in arrays if k not in mapping and not is_ignored(k))
    if missing:
        problems.append(f"missing from the checkpoint ({len(missing)}): {missing}")
    if unexpected:
        problems.append(f"unexpected in the checkpoint ({len(unexpected)}): {unexpected}")

    updates: dict[tuple, np.ndarray] = {}
    misshaped: list[str] = []
    for name, (_, transform) in mapping.items():
        path = targets[name]
        if name not in arrays or path not in flat:
            continue
        raw = np.asarray(arrays[name])
        try:
            value = np.asarray(transform.to_model(raw))
        except Exception as e:  # noqa: BLE001 - report, don't crash, on a malformed array
            misshaped.append(f"{name}: {transform.name} failed on shape {raw.shape} ({e})")
            continue
        var = flat[path]
        if value.shape != tuple(var.shape):
            misshaped.append(
                f"{name}: checkpoint {raw.shape} -> {transform.name} {value.shape}, "
                f"model {_fmt(path)} expects {tuple(var.shape)}"
            )
            continue
        if not np.all(np.isfinite(value.astype(np.float64, copy=False))):
            misshaped.append(f"{name}: contains NaN or Inf")
            continue
        updates[path] = value
    if misshaped:
        problems.append(f"mis-shaped or invalid ({len(misshaped)}): {misshaped}")

    if problems:
        raise WeightImportError(
            f"cannot import {source} into {type(model).__name__}:\n  " + "\n  ".join(problems)
        )
    for path, value in updates.items():
        var = flat[path]
        var[...] = jnp.asarray(value, dtype=var.dtype)
    nnx.update(model, state)
    return sorted(n for n in allow_missing if n not in arrays)


def export_arrays(
    model: nnx.Module, mapping: Mapping[str, tuple[Target, Transform]]
) -> dict[str, np.ndarray]:
    """Reads the model's weights back into the checkpoint naming and layout (for round trips).

    Args:
      model: the NNX module.
      mapping: the importer's mapping.

    Returns:
      ``{source_name: array}`` in the checkpoint layout (float32 as stored in the model).

    Raises:
      WeightImportError: a mapping target is not a weight of the model.
    """
    _, flat = _weight_vars(model)
    out: dict[str, np.ndarray] = {}
    bad = []
    for name, (target, transform) in mapping.items():
        path = _norm_target(target)
        if path not in flat:
            bad.append(f"{name} -> {_fmt(path)}")
            continue
        out[name] = np.ascontiguousarray(transform.to_source(np.asarray(flat[path][...])))
    if bad:
        raise WeightImportError(f"mapping targets that are not weights of the model: {bad}")
    return out
