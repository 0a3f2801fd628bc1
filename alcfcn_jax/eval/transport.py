"""Instance outlines by optimal transport with area budgets (``instances.outline="transport"``).

After Point2Mask (Li et al., ICCV 2023): the pixels around the cut instances are shared out
between the instances and the water by entropic optimal transport (Sinkhorn), each instance
holding a budget of pixels, so a fish cannot take its neighbour's pixels and the water takes what
no budget covers. Measured on the real frames' validation split and not kept (docs/results.md:
AP50 about that of the blobs, well under GrabCut's); here so the figures can be reproduced
(``evaluate.py --config.instances.outline=transport``, ``benchmarks.outline_variants``).

For each instance ``k`` (its window: the instance's box grown by ``margin`` times its size, plus 4
pixels, on each side, as GrabCut's) and each pixel ``x`` of the union of the windows:

* ``d_k(x)``: the geodesic distance from the instance's pixels, each step costing
  ``1 + edge_weight * e(x)`` where ``e`` is the image's colour gradient (Sobel of the RGB smoothed
  by a Gaussian of sigma 1) divided by its 95th percentile in the frame and clipped to [0, 1], so
  crossing a colour edge costs up to ``1 + edge_weight`` pixels;
* cost ``C_k(x) = (1 - p(x)) + dist_weight * d_k(x) / sqrt(area_k)``; the water's cost is
  ``C_0(x) = p(x)``; pixels outside instance ``k``'s window cannot go to it;
* budgets: instance ``k`` gets ``budget`` times the fish probability summed over the pixels
  geodesically nearest to it (at least 1 pixel); the water gets the rest; every pixel supplies 1;
* the transport plan minimising ``<P, C> - eps * H(P)`` (Sinkhorn, ``iters`` rounds);
  each pixel goes to the row that receives most of it, and each instance keeps its part that
  touches its cut (the cut itself when none does).
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi

from alcfcn_jax.eval import measure
from alcfcn_jax.eval.outlines import instance_window


def edge_strength(image: np.ndarray) -> np.ndarray:
    """(H,W) colour gradient of uint8 RGB ``image`` in [0, 1] (module docstring)."""
    rgb = ndi.gaussian_filter(np.asarray(image, np.float32) / 255.0, (1, 1, 0))
    grad = np.zeros(rgb.shape[:2], np.float32)
    for c in range(3):
        grad += ndi.sobel(rgb[..., c], 0) ** 2 + ndi.sobel(rgb[..., c], 1) ** 2
    grad = np.sqrt(grad)
    return np.clip(grad / (np.percentile(grad, 95) + 1e-6), 0.0, 1.0)


def sinkhorn_assign(cost: np.ndarray, supply: np.ndarray, *, eps: float, iters: int) -> np.ndarray:
    """Row of the largest transport mass per column for costs ``cost`` (R,N) (``inf`` = not
    allowed), row masses ``supply`` (R,) summing to N and unit column masses.

    Sinkhorn's scaling iterations on ``exp(-(C - min_r C) / eps)``: subtracting each column's
    least cost rescales the column only (the plan is unchanged) and keeps a 1 in every column.
    """
    shifted = cost - cost.min(axis=0, keepdims=True)
    kernel = np.where(np.isfinite(shifted), np.exp(-shifted / eps), 0.0)
    v = np.ones(cost.shape[1])
    u = np.ones(cost.shape[0])
    for _ in range(iters):
        u = supply / np.maximum(kernel @ v, 1e-300)
        v = 1.0 / np.maximum(kernel.T @ u, 1e-300)
    return np.argmax(u[:, None] * kernel * v[None, :], axis=0)


def transport_outlines(
    image: np.ndarray,
    labels: np.ndarray,
    prob: np.ndarray,
    *,
    margin: float = 1.0,
    edge_weight: float = 5.0,
    dist_weight: float = 1.0,
    budget: float = 0.7,
    eps: float = 0.05,
    iters: int = 100,
) -> np.ndarray:
    """The cut ``labels`` (H,W) re-drawn by optimal transport (module docstring).

    Args:
      image: (H,W,3) uint8 RGB; labels: (H,W) int instances (0 = water); prob: (H,W) p(fish).

    Returns:
      (H,W) int32 labels, instances 1..n in raster order of their first pixel.
    """
    import skimage.graph

    labels = np.asarray(labels).astype(np.int32)
    prob = np.clip(np.asarray(prob, np.float64), 0.0, 1.0)
    if labels.shape != prob.shape or np.asarray(image).shape[:2] != labels.shape:
        raise ValueError(
            f"image, labels and prob must share (H,W), got {np.asarray(image).shape}, "
            f"{labels.shape}, {prob.shape}"
        )
    slices = ndi.find_objects(labels)
    if not slices:
        return labels
    step = 1.0 + edge_weight * edge_strength(image)
    windows = [None if sl is None else instance_window(sl, labels.shape, margin) for sl in slices]
    region = np.zeros(labels.shape, bool)
    for win in windows:
        if win is not None:
            region[win] = True
    ys, xs = np.nonzero(region)
    index = np.full(labels.shape, -1, np.int64)
    index[ys, xs] = np.arange(ys.size)
    n_pix, n_inst = ys.size, len(slices)
    p = prob[ys, xs]
    cost = np.full((n_inst + 1, n_pix), np.inf)
    cost[0] = p
    dist = np.full((n_inst, n_pix), np.inf)
    for k, win in enumerate(windows, start=1):
        if win is None:
            continue
        mine = labels[win] == k
        d, _ = skimage.graph.MCP_Geometric(step[win]).find_costs(
            [tuple(s) for s in np.argwhere(mine)]
        )
        idx = index[win].ravel()
        dist[k - 1, idx] = d.ravel()
        cost[k, idx] = (1.0 - p[idx]) + dist_weight * d.ravel() / np.sqrt(mine.sum())
    nearest = np.argmin(dist, axis=0)
    reachable = np.isfinite(dist.min(axis=0))
    mass = np.bincount(nearest[reachable], weights=p[reachable], minlength=n_inst)
    supply = np.minimum(np.maximum(budget * mass, 1.0), n_pix / (n_inst + 1))
    rows = np.concatenate([[n_pix - supply.sum()], supply])
    owner = np.zeros(labels.shape, np.int32)
    owner[ys, xs] = sinkhorn_assign(cost, rows, eps=eps, iters=iters)
    out = np.zeros_like(labels)
    eight = np.ones((3, 3), bool)
    for k in range(1, n_inst + 1):
        parts, _ = ndi.label(owner == k, structure=eight)
        touching = np.unique(parts[(labels == k) & (parts > 0)])
        keep = np.isin(parts, touching[touching > 0]) if touching.size else labels == k
        if not keep.any():
            keep = labels == k
        out[keep & (out == 0)] = k
    return measure.relabel_raster(out)
