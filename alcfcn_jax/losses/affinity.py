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
* ``mask_affinity_labels`` (``source="pseudo_masks"``): the same cells from a mask instead of the
  map (the share of a cell's known pixels that are fish: a stage-1 run's outlined pseudo masks,
  ``eval.outlines``), and fish cells that know their fish: each takes the number of its
  nearest click (cell centres, Euclidean), so two fish cells nearer to different clicks are a
  pair across two fish. Clicks beyond the first ``MAX_CLICKS`` of an image (raster order) are
  not used for the split; in an image without clicks every fish cell is fish 1.
* ``affinity_loss``: over the walk's edge set (``ops.affinity.valid_mask``, forward offsets), with
  ``a = exp(-mean_c |f_i - f_j|)`` (the walk's affinity before the power beta),
  ``L = mean_{same fish}(-log a) + mean_{bg-bg}(-log a) + 2 mean_{different}(-log(1 - a))``,
  "different" being fish-background pairs and pairs of two fish: three separate means because
  background pairs outnumber fish pairs, and both outnumber boundary pairs, by orders of
  magnitude. An empty set contributes 0.
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


LABEL_SOURCES = ("cam", "pseudo_masks")
MAX_CLICKS = 64


@dataclasses.dataclass(frozen=True)
class AffinityLoss:
    """Settings of the affinity-learning term the train step adds to the per-image loss.

    ``weight`` times the balanced AffinityNet loss on cell labels with thresholds ``fg``/``bg``
    from the activation map (``source="cam"``) or the batch's (pseudo) mask with fish cells split
    between the clicks (``"pseudo_masks"``), over the walk's ``radius``.
    """

    weight: float
    fg: float
    bg: float
    radius: int
    source: str = "cam"

    def labels(self, cam_logits: jax.Array, batch: dict[str, jax.Array]) -> jax.Array:
        """The cell labels of a batch (``points``, and ``mask`` for ``pseudo_masks``)."""
        if self.source == "pseudo_masks":
            return mask_affinity_labels(batch["mask"], batch["points"], fg=self.fg, bg=self.bg)
        return affinity_labels(cam_logits, batch["points"], fg=self.fg, bg=self.bg)


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


def mask_affinity_labels(mask: jax.Array, points: jax.Array, *, fg: float, bg: float) -> jax.Array:
    """(B, ceil(H/8), ceil(W/8)) int32 cell labels from a mask: 0 water, k >= 1 the fish of click
    k (raster order, up to :data:`MAX_CLICKS`), 255 neutral (module docstring).

    Args:
      mask: (B, H, W) int, 1 fish, 0 water, 255 unknown (padding).
      points: (B, H, W) int clicks (1).
      fg, bg: a cell is fish when the share of its known pixels that are fish is above ``fg``,
        water below ``bg``.
    """
    if not 0.0 <= bg < fg <= 1.0:
        raise ValueError(f"mask_affinity_labels: need 0 <= bg < fg <= 1, got bg={bg}, fg={fg}")
    known = (mask != IGNORE).astype(jnp.float32)[..., None]
    fish = (mask == 1).astype(jnp.float32)[..., None]
    n_known = avg_pool(pad_to_multiple(known, STRIDE), STRIDE)[..., 0]
    share = avg_pool(pad_to_multiple(fish, STRIDE), STRIDE)[..., 0] / jnp.maximum(n_known, 1e-6)
    labels = jnp.where(share > fg, 1, jnp.where(share < bg, 0, IGNORE))
    labels = jnp.where(n_known > 0, labels, IGNORE)
    b, h, w = points.shape
    flat = (points == 1).reshape(b, h * w)
    k = min(MAX_CLICKS, h * w)
    # The first k clicks in raster order: top_k of a decreasing score over clicked pixels.
    score = jnp.where(flat, h * w - jnp.arange(h * w), -1)
    top, idx = jax.lax.top_k(score, k)
    cy = (idx // w).astype(jnp.float32) + 0.5
    cx = (idx % w).astype(jnp.float32) + 0.5
    h8, w8 = labels.shape[1:]
    gy = (jnp.arange(h8, dtype=jnp.float32) + 0.5) * STRIDE
    gx = (jnp.arange(w8, dtype=jnp.float32) + 0.5) * STRIDE
    d2 = (gy[None, :, None, None] - cy[:, None, None, :]) ** 2 + (
        gx[None, None, :, None] - cx[:, None, None, :]
    ) ** 2
    d2 = jnp.where((top >= 0)[:, None, None, :], d2, jnp.inf)
    nearest = jnp.argmin(d2, axis=-1) + 1
    return jnp.where(labels == 1, nearest, labels).astype(jnp.int32)


def affinity_loss(aff_feats: jax.Array, labels: jax.Array, *, radius: int) -> jax.Array:
    """Per-image balanced affinity loss (see the module docstring).

    Args:
      aff_feats: (B, h, w, C) affinity features (the walk's input).
      labels: (B, h, w) int cell labels (:func:`affinity_labels`, :func:`mask_affinity_labels`):
        0 water, k >= 1 fish (k: which fish), 255 neutral.
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
    fish_pos = known & (here >= 1) & (here == there)
    bg_pos = known & (here == 0) & (there == 0)
    neg = known & (here != there)
    neg_term = -jnp.log(jnp.maximum(1.0 - jnp.exp(-dist), _EPS))

    def mean(values, mask):
        total = jnp.sum(jnp.where(mask, values, 0.0), axis=(1, 2, 3))
        count = jnp.sum(mask, axis=(1, 2, 3))
        return total / jnp.maximum(count, 1)

    return mean(dist, fish_pos) + mean(dist, bg_pos) + 2.0 * mean(neg_term, neg)
