"""The loss registry: ``config.loss.name`` -> per-image losses of a batch of logits.

Every loss takes the model's (B,H,W,C) logits and the batch's label maps and returns one value
per image; the train step averages them over the batch (the reference trains at batch 1).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from alcfcn_jax.losses.lcfcn import lcfcn_terms
from alcfcn_jax.losses.lcfcn_targets import TERM_NAMES as LCFCN_TERMS
from alcfcn_jax.losses.point import point_level_loss
from alcfcn_jax.losses.supervised import cross_entropy, joint_loss
from alcfcn_jax.models.outputs import IGNORE, fish_probability

__all__ = ["LCFCN_TERMS", "LOSSES", "per_image_loss"]

# lcfcn: A-LCFCN / LCFCN (clicks); point_level: PL-FCN (clicks); cross_entropy and joint:
# FS-FCN (masks: true ones, or stage 1's pseudo masks).
LOSSES = ("lcfcn", "point_level", "cross_entropy", "joint")


def per_image_loss(
    loss_name: str, logits: jax.Array, batch: Mapping[str, jax.Array]
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Per-image losses (B,) and per-term values (name -> (B,)) for ``config.loss.name``.

    ``lcfcn`` uses the clicked fish pixels (``points == 1``) and the softmax fish probability,
    as the reference's call site; ``point_level`` uses the full point map (1 fish, 0 background
    points, 255 unlabelled); ``cross_entropy`` and ``joint`` use the mask (255 ignored).
    """
    if loss_name == "lcfcn":
        fg_points = (batch["points"] == 1).astype(jnp.int32)
        terms = lcfcn_terms(fish_probability(logits), fg_points)
        total = sum(terms[k] for k in terms)
        return total, dict(terms)
    logits = logits.astype(jnp.float32)
    if loss_name == "point_level":
        return point_level_loss(logits, batch["points"]), {}
    if loss_name == "cross_entropy":
        return cross_entropy(logits, batch["mask"], ignore_index=IGNORE), {}
    if loss_name == "joint":
        return joint_loss(logits, batch["mask"]), {}
    raise ValueError(f"config.loss.name={loss_name!r} is not one of {LOSSES}")
