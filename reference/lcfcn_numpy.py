"""Straight, slow numpy port of the reference LCFCN loss (the test oracle and timing baseline).

This mirrors `compute_loss` / `get_tgt_list` / `watersplit` / `get_blobs` of the A-LCFCN
reference (`src/modules/lcfcn/lcfcn_loss.py`, see docs/reference_spec.md section 3) statement
by statement, including its per-blob full-image scans and its repeated black top-hat, so that it
can serve both as the oracle of the fast implementation and as the "reference cost" in
`benchmarks/lcfcn_targets.py`. The single deliberate deviation: watershed markers are int32
(relabelled 1..n in row-major order, exactly the reference's values) because scikit-image >= 0.20
rejects the float markers the reference passes.

Nothing here is optimised on purpose. Do not import it from library code.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.measure import label
from skimage.segmentation import find_boundaries, watershed

# Name of the loss term each target belongs to (the breakdown keys of `lcfcn_terms`).
IMAGE, POINT, SPLIT_GLOBAL, SPLIT_LOCAL, FALSE_POS = (
    "image",
    "point",
    "split_global",
    "split_local",
    "false_pos",
)


def watersplit(probs: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Reference `watersplit`: thick boundaries of the watershed of the black top-hat."""
    markers = points.copy()
    markers[markers != 0] = np.arange(1, markers.sum() + 1)
    markers = markers.astype(float).astype(np.int32)  # reference: float; skimage needs int
    img = ndimage.black_tophat(probs.copy(), 7)
    seg = watershed(img, markers)
    return find_boundaries(seg)


def get_blobs(probs: np.ndarray) -> np.ndarray:
    """Reference `get_blobs`: 8-connected components of `probs > 0.5`."""
    pred_mask = (probs > 0.5).astype("uint8")
    return label(pred_mask == 1)


def get_tgt_list(points: np.ndarray, probs: np.ndarray) -> list[dict]:
    """Reference `get_tgt_list` (roi_mask=None) with each target tagged by its term name.

    Args:
      points: (H, W) integer array in {0, 1}.
      probs: (H, W) float32 foreground probabilities.

    Returns:
      A list of dicts with keys `scale`, `ind_list` (flat indices), `label` and `term`, in the
      reference's order.
    """
    tgt_list = []
    pt_flat = points.reshape(-1)
    pr_flat = probs.reshape(-1)

    u_list = np.unique(points)
    if 0 in u_list:
        ind_bg = pr_flat.argmin()
        tgt_list += [{"scale": 1, "ind_list": np.array([ind_bg]), "label": 0, "term": IMAGE}]
    if 1 in u_list:
        ind_fg = pr_flat.argmax()
        tgt_list += [{"scale": 1, "ind_list": np.array([ind_fg]), "label": 1, "term": IMAGE}]
    if 1 in u_list:
        ind_fg = np.where(pt_flat == 1)[0]
        tgt_list += [{"scale": len(ind_fg), "ind_list": ind_fg, "label": 1, "term": POINT}]

    blobs = get_blobs(probs)
    fg_uniques = np.unique(blobs * points)
    bg_uniques = [x for x in np.unique(blobs) if x not in fg_uniques]

    n_total = points.sum()
    if n_total > 1:
        boundaries = watersplit(probs, points)
        ind_bg = np.where(boundaries.ravel())[0]
        tgt_list += [{"scale": n_total - 1, "ind_list": ind_bg, "label": 0, "term": SPLIT_GLOBAL}]

        for u in fg_uniques:
            if u == 0:
                continue
            ind = blobs == u
            b_points = points * ind
            n_points = b_points.sum()
            if n_points < 2:
                continue
            boundaries = watersplit(probs, b_points) * ind
            ind_bg = np.where(boundaries.ravel())[0]
            tgt_list += [
                {"scale": n_points - 1, "ind_list": ind_bg, "label": 0, "term": SPLIT_LOCAL}
            ]

    for u in bg_uniques:
        if u == 0:
            continue
        b_mask = blobs == u
        # The reference tests for an empty mask (possible only with its unused roi_mask).
        if b_mask.sum() == 0:
            continue
        ind_bg = np.where(b_mask.ravel())[0]
        tgt_list += [{"scale": 1, "ind_list": ind_bg, "label": 0, "term": FALSE_POS}]
    return tgt_list


def bce(p: np.ndarray, y: float) -> np.ndarray:
    """torch `binary_cross_entropy` per element (logs clamped at -100), in float64."""
    p = p.astype(np.float64)
    with np.errstate(divide="ignore"):
        log_p = np.maximum(np.log(p), -100.0)
        log_1mp = np.maximum(np.log(1.0 - p), -100.0)
    return -(y * log_p + (1.0 - y) * log_1mp)


def compute_terms(points: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Reference loss split by term: each target adds scale * mean BCE over its pixels."""
    terms = dict.fromkeys((IMAGE, POINT, SPLIT_GLOBAL, SPLIT_LOCAL, FALSE_POS), 0.0)
    pr_flat = probs.reshape(-1)
    for t in get_tgt_list(points, probs):
        terms[t["term"]] += float(t["scale"]) * float(
            np.mean(bce(pr_flat[t["ind_list"]], t["label"]))
        )
    return terms


def compute_loss(points: np.ndarray, probs: np.ndarray) -> float:
    """Reference `compute_loss` for one image (float64 accumulation)."""
    return float(sum(compute_terms(points, probs).values()))


def target_weight_maps(points: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reference targets as dense float64 weights on -log p (fg) and -log(1-p) (bg)."""
    w_fg = np.zeros(probs.size, np.float64)
    w_bg = np.zeros(probs.size, np.float64)
    for t in get_tgt_list(points, probs):
        w = w_fg if t["label"] == 1 else w_bg
        np.add.at(w, t["ind_list"], float(t["scale"]) / len(t["ind_list"]))
    return w_fg.reshape(probs.shape), w_bg.reshape(probs.shape)
