"""Pseudo instances from clicks by point blots and expanding distance fields
(``instances.pseudo_masks="point_blots"``).

After Akiva & Dana ("Towards single stage weakly supervised semantic segmentation"), made an
offline pseudo-mask writer over a trained stage-1 map ``p`` (the paper builds its masks during
training; here the map is already trained, so the expansion is a fixed setting). Measured against
the training frames' boxes beside the outlined click instances and not kept (docs/results.md,
``python -m benchmarks.pseudo_mask_quality``); here so that measurement can be reproduced.

1. **Expanding distance field**: ``F(x) = clip(1 - d(x) / radius + expansion, 0, 1)`` with ``d``
   the distance to the nearest click. The fish have no background clicks, so background points
   are drawn (seeded by ``seed``) among the pixels farther than ``2 radius`` from every click
   where ``p < threshold`` (four per click, at least eight); their field, with half the expansion,
   is inverted and multiplied in. Fish where ``p * F > threshold``.
2. **Point blots**: from each click, a random walk with restart over the image's colour
   affinities (8 neighbours, weight ``exp(-|I_p - I_q|^2 / (0.2 var))`` with ``var`` the window's
   colour variance, restart ``1 - alpha``, ``walk_iters`` steps) in the window of ``2 radius``
   around it; the blot is the connected part holding the click of the pixels visited more than
   ``tau`` times the most visited one. The click is then moved by ``jitter`` pixels in the 8
   directions and the walk repeated; a moved blot joins when it overlaps the blot (IoU >
   ``iou_min``) and its colours agree (KL divergence of the 8x8x8 RGB histograms < ``kl_max``).
3. Fish pixels (1 or 2) go to their nearest click; each click keeps the connected part holding it.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi

from alcfcn_jax.eval import measure

_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
_EIGHT = np.ones((3, 3), bool)


def _shift(a: np.ndarray, dy: int, dx: int, fill: float = 0.0) -> np.ndarray:
    """``out[y, x] = a[y + dy, x + dx]`` (``fill`` outside)."""
    out = np.full_like(a, fill)
    h, w = a.shape[:2]
    out[max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)] = a[
        max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)
    ]
    return out


def walk_transitions(rgb: np.ndarray) -> np.ndarray:
    """(8,h,w) probabilities of stepping from each pixel to each neighbour (``_OFFSETS``)."""
    var = float(rgb.reshape(-1, 3).var(0).sum()) + 1e-6
    weights = []
    for dy, dx in _OFFSETS:
        nb = _shift(rgb, dy, dx, fill=np.nan)
        w = np.exp(-np.nansum((nb - rgb) ** 2, -1) / (0.2 * var))
        w[np.isnan(nb[..., 0])] = 0.0
        weights.append(w)
    weights = np.stack(weights)
    return weights / (weights.sum(0, keepdims=True) + 1e-12)


def blot(
    trans: np.ndarray, y: int, x: int, *, alpha: float = 0.97, iters: int = 60, tau: float = 0.1
) -> np.ndarray:
    """(h,w) bool: the random walk with restart at (y, x) over ``trans`` (module docstring)."""
    start = np.zeros(trans.shape[1:])
    start[y, x] = 1.0
    visits = start.copy()
    for _ in range(iters):
        moved = np.zeros_like(visits)
        for k, (dy, dx) in enumerate(_OFFSETS):
            moved += _shift(trans[k] * visits, -dy, -dx)
        visits = alpha * moved + (1.0 - alpha) * start
    parts, _ = ndi.label(visits > tau * visits.max(), structure=_EIGHT)
    return parts == parts[y, x]


def _histogram(rgb: np.ndarray, mask: np.ndarray, bins: int = 8) -> np.ndarray:
    q = np.clip((rgb[mask] * bins).astype(int), 0, bins - 1)
    h = np.bincount((q[:, 0] * bins + q[:, 1]) * bins + q[:, 2], minlength=bins**3) + 1e-3
    return h / h.sum()


def point_blots(
    image: np.ndarray,
    prob: np.ndarray,
    points: np.ndarray,
    *,
    radius: int = 24,
    expansion: float = 0.5,
    threshold: float = 0.5,
    jitter: tuple[int, ...] = (2, 4, 6),
    kl_max: float = 0.5,
    iou_min: float = 0.3,
    seed: int = 0,
) -> np.ndarray:
    """(H,W) int32 labels, at most one instance per click (module docstring).

    Args:
      image: (H,W,3) uint8 RGB; prob: (H,W) p(fish) of the stage-1 map; points: (H,W) click map.
    """
    prob = np.asarray(prob, np.float64)
    points = np.asarray(points)
    height, width = prob.shape
    ys, xs = np.nonzero(points == 1)
    if ys.size == 0:
        return np.zeros((height, width), np.int32)
    rgb = np.asarray(image, np.float64) / 255.0
    clicks = points == 1
    dist, (iy, ix) = ndi.distance_transform_edt(~clicks, return_indices=True)
    field = np.clip(1.0 - dist / radius + expansion, 0.0, 1.0)
    far = np.argwhere((dist > 2 * radius) & (prob < threshold))
    if len(far):
        rng = np.random.default_rng(seed)
        pick = far[rng.choice(len(far), size=min(len(far), max(4 * ys.size, 8)), replace=False)]
        background = np.zeros(prob.shape, bool)
        background[pick[:, 0], pick[:, 1]] = True
        bg_field = 1.0 - ndi.distance_transform_edt(~background) / radius + 0.5 * expansion
        field = field * (1.0 - np.clip(bg_field, 0.0, 1.0))
    fish = prob * field > threshold
    for y, x in zip(ys, xs, strict=True):
        win = (
            slice(max(0, y - 2 * radius), min(height, y + 2 * radius + 1)),
            slice(max(0, x - 2 * radius), min(width, x + 2 * radius + 1)),
        )
        local = rgb[win]
        trans = walk_transitions(local)
        cy, cx = y - win[0].start, x - win[1].start
        grown = blot(trans, cy, cx)
        colours = _histogram(local, grown)
        for step in jitter:
            for dy, dx in _OFFSETS:
                jy, jx = cy + dy * step, cx + dx * step
                if not (0 <= jy < local.shape[0] and 0 <= jx < local.shape[1]):
                    continue
                moved = blot(trans, jy, jx)
                iou = (moved & grown).sum() / max((moved | grown).sum(), 1)
                other = _histogram(local, moved)
                if iou > iou_min and float(np.sum(other * np.log(other / colours))) < kl_max:
                    grown |= moved
        fish[win] |= grown
    owner = np.zeros((height, width), np.int32)
    owner[ys, xs] = np.arange(1, ys.size + 1)
    owner = np.where(fish, owner[iy, ix], 0)
    out = np.zeros_like(owner)
    for k, (y, x) in enumerate(zip(ys, xs, strict=True), start=1):
        parts, _ = ndi.label(owner == k, structure=_EIGHT)
        if parts[y, x]:
            out[parts == parts[y, x]] = k
    return measure.relabel_raster(out)
