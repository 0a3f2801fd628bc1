"""The optimizer of ``config.optim``: torch-style Adam/AdamW/SGD, schedules, a frozen or slower trunk."""

from __future__ import annotations

from typing import Any

import jax
import optax
from flax import nnx

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine")


def _trunk_scale(mult: float) -> optax.GradientTransformation:
    """Multiplies the updates of every parameter under a ``trunk`` attribute by ``mult``.

    For Adam this equals a ``mult`` times smaller learning rate for the trunk (the update is
    ``lr * m / sqrt(v)``), without a second optimizer state.
    """

    def scale(path, update):
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        return update * mult if "trunk" in names else update

    def update_fn(updates, state, params=None):
        del params
        return jax.tree_util.tree_map_with_path(scale, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def learning_rate_schedule(optim_cfg: Any, num_steps: int) -> optax.Schedule:
    """``optim.schedule``: "constant" (the reference) or "cosine" (from ``lr`` to 0 over
    ``num_steps``)."""
    lr = float(optim_cfg.lr)
    schedule = str(optim_cfg.schedule)
    if schedule == "constant":
        return optax.constant_schedule(lr)
    if schedule == "cosine":
        return optax.cosine_decay_schedule(lr, max(int(num_steps), 1))
    raise ValueError(f"config.optim.schedule={schedule!r} is not one of {SCHEDULES}")


def make_optimizer(optim_cfg: Any, num_steps: int = 1) -> optax.GradientTransformation:
    """The optax transformation of ``config.optim`` (``num_steps``: the cosine schedule's length).

    ``adam`` is torch's Adam: ``weight_decay`` is added to the gradient (L2), not decoupled;
    ``adamw`` is decoupled weight decay; ``sgd`` uses ``b1`` as momentum. Optional global-norm
    clipping comes first and the trunk learning-rate multiplier last.
    """
    name = optim_cfg.name
    lr = learning_rate_schedule(optim_cfg, num_steps)
    wd = float(optim_cfg.weight_decay)
    parts: list[optax.GradientTransformation] = []
    if float(optim_cfg.clip_grad_norm) > 0:
        parts.append(optax.clip_by_global_norm(float(optim_cfg.clip_grad_norm)))
    if name == "adam":
        if wd:
            parts.append(optax.add_decayed_weights(wd))
        parts.append(optax.adam(lr, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps))
    elif name == "adamw":
        parts.append(
            optax.adamw(lr, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps, weight_decay=wd)
        )
    elif name == "sgd":
        if wd:
            parts.append(optax.add_decayed_weights(wd))
        parts.append(optax.sgd(lr, momentum=float(optim_cfg.b1) or None))
    else:
        raise ValueError(f"config.optim.name={name!r} is not one of {OPTIMIZERS}")
    mult = float(optim_cfg.trunk_lr_mult)
    if mult not in (0.0, 1.0):  # 0: the trunk is not trained at all (trainable_filter)
        parts.append(_trunk_scale(mult))
    return optax.chain(*parts)


def trainable_filter(optim_cfg: Any) -> Any:
    """The NNX filter of the parameters that get gradients and optimizer state.

    Every ``nnx.Param``, except the trunk's when ``optim.trunk_lr_mult`` is 0: a frozen trunk is
    left out of differentiation altogether, so no backward pass runs through it (the cheap way to
    train heads on a pretrained trunk, e.g. the CPU demo).
    """
    if float(optim_cfg.trunk_lr_mult) == 0.0:
        return nnx.All(nnx.Param, nnx.Not(nnx.PathContains("trunk")))
    return nnx.Param
