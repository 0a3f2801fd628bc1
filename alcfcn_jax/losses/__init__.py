"""Losses: LCFCN (host targets + weighted BCE), supervised baselines, PL-FCN point loss."""

from alcfcn_jax.losses.lcfcn import lcfcn_loss, lcfcn_terms
from alcfcn_jax.losses.point import point_level_loss
from alcfcn_jax.losses.supervised import cross_entropy, joint_loss

__all__ = ["cross_entropy", "joint_loss", "lcfcn_loss", "lcfcn_terms", "point_level_loss"]
