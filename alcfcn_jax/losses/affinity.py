"""AffinityNet's affinity loss on labels mined from the activation map (not in the reference).

The reference starts the affinity branch from SEAM weights that already know object boundaries.
Without them the branch starts random, and ``T^16`` of a random affinity smears the activation
over the whole image. Following AffinityNet (Ahn & Kwak, CVPR 2018) and iterative affinity
learning (Wang et al.), the branch is taught by its own model: cells of the stride-8 grid where the
current activation map is confident become labels, and every pair of labelled cells within the
walk's radius is a training pair.

* ``affinity_labels``: the fish probability of the activation logits (softmax channel 1), averaged
  over each 8x8 cell of the padded image (the walk's own pooling); a cell is fish (1) when it is
  above ``fg``, background (0) below ``bg``, neutral (255) between. Cells holding a click are fish
  whatever the map says (the one label known to be right). The labels carry no gradient.
* ``affinity_loss``: over the walk's edge set (``ops.affinity.valid_mask``, forward offsets), with
  ``a = exp(-mean_c |f_i - f_j|)`` (the walk's affinity before the power beta),
  ``L = mean_{fish-fish}(-log a) + mean_{bg-bg}(-log a) + 2 mean_{fish-bg}(-log(1 - a))``: three
  separate means because background pairs outnumber fish pairs, and both outnumber boundary pairs,
  by orders of magnitude. An empty set contributes 0.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from alcfcn_jax.models.outputs import IGNORE, STRIDE, fish_probability
from alcfcn_jax.ops.affinity import (
    effective_radius,
    neighbor_offsets,
    neighbour_l1,
    shift_channels,
    valid_mask,
)
from alcfcn_jax.ops.resize import avg_pool, pad_to_multiple

# -log(1 - a) is unbounded as a -> 1 (two identical features on opposite sides of a boundary).
_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class AffinityLoss:
    """Settings of the affinity-learning term the train step adds to the per-image loss.

    ``weight`` times the balanced AffinityNet loss on cell labels mined from the activation map
    with thresholds ``fg``/``bg``, over the walk's ``radius``.
    """

    weight: float
    fg: float
    bg: float
    radius: int


def affinity_labels(cam_logits: jax.Array, points: jax.Array, *, fg: float, bg: float) -> jax.Array:
    """(B, ceil(H/8), ceil(W/8)) int32 cell labels: 1 fish, 0 background, 255 neutral.

    Args:
      cam_logits: (B, H, W, C) activation logits (C = 2: softmax; C = 1: sigmoid).
      points: (B, H, W) int; pixels equal to 1 are clicks (255 = unlabelled, 0 = background point).
      fg, bg: probability thresholds (``bg < fg``).
    """
    if not 0.0 <= bg < fg <= 1.0:
        raise ValueError(f"affinity_labels: need 0 <= bg < fg <= 1, got bg={bg}, fg={fg}")
    prob = fish_probability(jax.lax.stop_gradient(cam_logits))
    cell = avg_pool(pad_to_multiple(prob[..., None], STRIDE), STRIDE)[..., 0]
    clicks = avg_pool(pad_to_multiple((points == 1)[..., None].astype(jnp.float32), STRIDE), STRIDE)
    labels = jnp.where(cell > fg, 1, jnp.where(cell < bg, 0, IGNORE))
    return jnp.where(clicks[..., 0] > 0, 1, labels).astype(jnp.int32)


def affinity_loss(aff_feats: jax.Array, labels: jax.Array, *, radius: int) -> jax.Array:
    """Per-image balanced affinity loss (see the module docstring).

    Args:
      aff_feats: (B, h, w, C) affinity features (the walk's input).
      labels: (B, h, w) int cell labels from :func:`affinity_labels`.
      radius: the walk's radius (``effective_radius`` is applied, as the walk does).

    Returns:
      (B,) float32 losses.
    """
    b, h, w, _ = aff_feats.shape
    if labels.shape != (b, h, w):
        raise ValueError(
            f"affinity_loss: labels must be {(b, h, w)} for features {aff_feats.shape}, "
            f"got {labels.shape}"
        )
    r = effective_radius(h, w, radius)
    offs = neighbor_offsets(r)
    if len(offs) == 0:
        return jnp.zeros((b,), jnp.float32)
    dist = neighbour_l1(aff_feats.astype(jnp.float32), offs)  # (B, h, w, K) = -log a
    k = len(offs)
    edges = jnp.asarray(valid_mask(h, w, r)[..., :k])[None]
    here = jnp.broadcast_to(labels[..., None], (b, h, w, k))
    there = shift_channels(here, np.asarray(offs))
    known = edges & (here != IGNORE) & (there != IGNORE)
    fish_pos = known & (here == 1) & (there == 1)
    bg_pos = known & (here == 0) & (there == 0)
    neg = known & (here != there)
    neg_term = -jnp.log(jnp.maximum(1.0 - jnp.exp(-dist), _EPS))

    def mean(values, mask):
        total = jnp.sum(jnp.where(mask, values, 0.0), axis=(1, 2, 3))
        count = jnp.sum(mask, axis=(1, 2, 3))
        return total / jnp.maximum(count, 1)

    return mean(dist, fish_pos) + mean(dist, bg_pos) + 2.0 * mean(neg_term, neg)
