"""The train state: build it, count it, save it into and restore it from a checkpoint.

The state is a plain dict pytree ``{"model", "opt", "step", "rng"}``: the model's and the
optimizer's NNX states (``nnx.split`` once), the number of completed steps and the base PRNG key,
replicated over the mesh. :class:`Graphs` holds the static halves that ``nnx.merge`` needs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alcfcn_jax import config_utils
from alcfcn_jax import sharding as shd
from alcfcn_jax.checkpoint import Checkpointer, CheckpointError
from alcfcn_jax.data.preprocess import Preprocessing
from alcfcn_jax.train.optim import make_optimizer, trainable_filter
from alcfcn_jax.weights import build_pretrained

TrainState = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Graphs:
    """The static halves of the split model and optimizer (``nnx.merge`` needs them), and the
    filter of the trained parameters."""

    model: Any
    opt: Any
    wrt: Any = nnx.Param


def build_model_from_config(config: Any) -> nnx.Module:
    """The network of ``config.model`` with its pretrained weights (``model.weights``), seeded
    with ``config.seed`` for parameters and dropout."""
    seed = int(config.seed)
    return build_pretrained(config.model, rngs=nnx.Rngs(params=seed, dropout=seed + 1))


def create_train_state(
    config: Any,
    mesh: jax.sharding.Mesh,
    *,
    model: nnx.Module | None = None,
) -> tuple[Graphs, TrainState]:
    """Builds the model (unless given) and optimizer; returns their graphs and the replicated state.

    Args:
      config: the experiment config (``model``, ``optim``, ``seed``).
      mesh: the ``("data",)`` device mesh; the state is replicated over it.
      model: an already built model (tests pass stand-ins); built from ``config.model`` if None.
    """
    if model is None:
        model = build_model_from_config(config)
    wrt = trainable_filter(config.optim)
    tx = make_optimizer(config.optim, int(config.train.num_steps))
    opt = nnx.Optimizer(model, tx, wrt=wrt)
    graph_model, model_state = nnx.split(model)
    graph_opt, opt_state = nnx.split(opt)
    state = {
        "model": model_state,
        "opt": opt_state,
        "step": jnp.zeros((), jnp.int32),
        "rng": jax.random.key(int(config.seed)),
    }
    state = shd.put_replicated(state, mesh)
    return Graphs(graph_model, graph_opt, wrt), state


def param_counts(state: TrainState, wrt: Any = nnx.Param) -> dict[str, int]:
    """Numbers of trained (``wrt``: every ``nnx.Param``, less a frozen trunk's) and other
    (frozen, statistics) model values."""
    total = sum(
        int(np.prod(x.shape)) for x in jax.tree.leaves(state["model"]) if hasattr(x, "shape")
    )
    trainable = sum(
        int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.filter_state(state["model"], wrt))
    )
    return {"trainable": trainable, "other": total - trainable}


def checkpoint_meta(
    config: Any, state: TrainState, best: Mapping[str, Any], **extra
) -> dict[str, Any]:
    """The JSON saved beside a state: config, preprocessing, rng key, best score so far."""
    rng = np.asarray(jax.device_get(jax.random.key_data(state["rng"]))).tolist()
    return {
        "config": config_utils.to_plain(config),
        # How images became inputs: evaluate and predict see them exactly so.
        "preprocessing": Preprocessing.from_data_config(config.data).to_dict(),
        "rng": rng,
        "best": dict(best),
        **extra,
    }


def save_state(
    ckpt: Checkpointer,
    step: int,
    state: TrainState,
    *,
    config: Any,
    best: Mapping[str, Any],
    data_state: Any,
    val: Mapping[str, float] | None,
) -> None:
    """Saves ``state`` at ``step`` with its metadata and the data-iterator state; the validation
    score ``val[ckpt.best_metric]`` (when finite) ranks it for best-checkpoint retention."""
    key = ckpt.best_metric
    metrics = None
    if val is not None and math.isfinite(val.get(key, math.nan)):
        metrics = {key: val[key]}
    ckpt.save(
        step,
        model_state=state["model"],
        opt_state=state["opt"],
        meta=checkpoint_meta(config, state, best, val=dict(val) if val else None),
        data_state=data_state,
        metrics=metrics,
    )


def restore_state(
    ckpt: Checkpointer, step: int, config: Any, state: TrainState, mesh: jax.sharding.Mesh
) -> tuple[TrainState, dict[str, Any], Any]:
    """The state saved at ``step`` (checked against ``config``), its meta and data state.

    Every array lands on the sharding the run uses it with: model and optimizer state restored
    by Orbax into the shardings of ``state`` (replicated over ``mesh``), the step and the rng key
    built from the metadata on every process (``sharding.put_replicated``; a mesh may span
    processes); the data state is this process's own iterator state.
    """
    saved_meta = ckpt.check_config(step, config)
    try:
        model_state, opt_state, meta, data_state = ckpt.restore(
            step, model_state=state["model"], opt_state=state["opt"]
        )
    except CheckpointError as err:
        # An optimizer-state mismatch comes from an optimizer setting that changes the state's
        # shape (e.g. adding optim.clip_grad_norm): name the setting, not the state paths.
        saved = (saved_meta.get("config") or {}).get("optim") or {}
        current = config_utils.to_plain(config.optim)
        changed = config_utils.diff_configs(saved, current, prefix="optim.")
        if "optimizer state" not in str(err) or not changed:
            raise
        details = "; ".join(
            f"config.{k}: checkpoint {saved.get(k.split('.', 1)[1], '<missing>')!r}, "
            f"now {current.get(k.split('.', 1)[1], '<missing>')!r}"
            for k in changed
        )
        raise CheckpointError(
            f"cannot resume from step {step} in {ckpt.directory}: its optimizer state was saved "
            f"with other optimizer settings ({details}). Resume with the checkpoint's values or "
            "use a new --workdir."
        ) from err
    rng = jax.random.wrap_key_data(
        np.asarray(meta["rng"], np.uint32), impl=jax.random.key_impl(state["rng"])
    )
    restored = {
        "model": model_state,
        "opt": opt_state,
        **shd.put_replicated({"step": np.asarray(int(meta["step"]), np.int32), "rng": rng}, mesh),
    }
    return restored, meta, data_state
