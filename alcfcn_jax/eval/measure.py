"""Per-fish instances and measurements from a fish-probability map.

Instances. The refined map is thresholded (``prob > threshold``, 0.5 = the argmax of a two-class
softmax) and split into 8-connected blobs, as evaluation counts them. A blob can hold several
touching fish; it is split with a marker-based watershed:

  1. ``d`` = Euclidean distance of every fish pixel to the nearest background pixel (the
     "thickness" map: high along each fish's midline, low at the neck where two fish touch);
  2. markers = the h-maxima of ``d`` (regional maxima standing at least ``split_h`` pixels above
     the saddle that joins them to a higher maximum). A single elongated fish has a ridge whose
     small ripples are below ``split_h`` and stays one marker; two touching bodies are separated
     by a neck at least ``split_h`` thinner than the thinner body and get one marker each;
  3. watershed on ``-d`` from those markers, restricted to the blob. Blobs with at most one
     marker stay whole. Instances smaller than ``min_area`` pixels are dropped.

Instances from an embedding (WISE, ``embedding_instance_labels``): the fish mask is the same; each
predicted object location is the highest-probability pixel of one blob of a localisation map (the
activation map before the random walk, whose blobs the LCFCN loss trains to hold one fish each, or
the refined map itself); the background gets ``k`` representatives, the k-means centres of the
embeddings of the pixels outside the fish mask (k = the number of objects, as WISE); every fish
pixel joins the location or representative of highest similarity ``exp(-||E_i - E_j||^2)`` (the
nearest embedding), and pixels joining a background representative are dropped. Two touching
fish with two locations are separated wherever their embeddings differ, whatever the shape of the
blob.

Measurements (per instance, in the map's pixels and, through ``scale``, in the original image's
pixels): area; length = extent of the instance along its principal (major) axis, width = extent
along the perpendicular (minor) axis, both measured between the outer edges of the extreme pixels;
Feret length = the largest distance between two points of the instance's outline (better for bent
fish); orientation = angle of the major axis in degrees, counter-clockwise from the image's x axis
as seen on screen, in (-90, 90]; centroid; bounding box; mean fish probability. Pixel (row r,
column c) of the map covers original pixels [c*sx, (c+1)*sx) x [r*sy, (r+1)*sy).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import scipy.ndimage as ndi
import skimage.morphology
import skimage.segmentation

_EIGHT = np.ones((3, 3), bool)


def instance_labels(
    prob: np.ndarray,
    *,
    threshold: float = 0.5,
    split: bool = True,
    split_h: float = 2.0,
    min_area: int = 1,
) -> np.ndarray:
    """Labels fish instances in a (H,W) fish-probability map (see the module docstring).

    Args:
      prob: (H,W) fish probability in [0, 1].
      threshold: fish where ``prob > threshold``.
      split: split touching fish with the distance-transform watershed.
      split_h: least depth (pixels of thickness) of the neck between two fish for a split.
      min_area: drop instances with fewer pixels.

    Returns:
      (H,W) int32 labels, 0 = background, instances 1..n numbered in raster order of their first
      pixel.
    """
    prob = np.asarray(prob, np.float64)
    if prob.ndim != 2:
        raise ValueError(f"prob must be a (H,W) map, got shape {prob.shape}")
    fish = prob > threshold
    blobs, n_blobs = ndi.label(fish, structure=_EIGHT)
    labels = blobs
    if split and n_blobs:
        dist = ndi.distance_transform_edt(fish)
        labels = np.zeros_like(blobs)
        next_id = 1
        # Blob by blob on its bounding box: the reconstruction and watershed then cost in
        # proportion to the fish, not to the image.
        for k, sl in enumerate(ndi.find_objects(blobs), start=1):
            local = blobs[sl] == k
            d = np.where(local, dist[sl], 0.0)
            markers, n_markers = _h_dome_markers(d, split_h)
            if n_markers > 1:
                ws = skimage.segmentation.watershed(-d, markers, mask=local, connectivity=2)
                labels[sl][local] = ws[local] + (next_id - 1)
                next_id += n_markers
            else:
                labels[sl][local] = next_id
                next_id += 1
    return relabel_raster(_drop_small(labels, min_area))


def kmeans(x: np.ndarray, k: int, *, seed: int = 0, iters: int = 20) -> np.ndarray:
    """(k', d) centres of ``x`` (n, d) by Lloyd's k-means from a k-means++ start (k' = min(k,
    distinct points)); seeded, deterministic."""
    x = np.asarray(x, np.float64)
    if len(x) == 0 or k < 1:
        return np.zeros((0, x.shape[-1] if x.ndim == 2 else 0))
    rng = np.random.default_rng(seed)
    centres = [x[rng.integers(len(x))]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    while len(centres) < k and d2.sum() > 0:
        centres.append(x[rng.choice(len(x), p=d2 / d2.sum())])
        d2 = np.minimum(d2, ((x - centres[-1]) ** 2).sum(1))
    c = np.stack(centres)
    for _ in range(iters):
        assign = _nearest(x, c)
        new = np.stack(
            [x[assign == j].mean(0) if (assign == j).any() else c[j] for j in range(len(c))]
        )
        if np.allclose(new, c):
            break
        c = new
    return c


def _nearest(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Index of the nearest centre (squared Euclidean = highest ``exp(-d^2)``) of each row."""
    d2 = (x**2).sum(1)[:, None] + (c**2).sum(1)[None, :] - 2.0 * x @ c.T
    return np.argmin(d2, axis=1)


def seed_locations(prob: np.ndarray, threshold: float = 0.5) -> list[tuple[int, int]]:
    """(row, column) of the highest-probability pixel of each 8-connected blob of
    ``prob > threshold``, in blob (raster) order."""
    prob = np.asarray(prob, np.float64)
    blobs, n = ndi.label(prob > threshold, structure=_EIGHT)
    if n == 0:
        return []
    pos = ndi.maximum_position(prob, blobs, np.arange(1, n + 1))
    return [(int(r), int(c)) for r, c in pos]


def embedding_instance_labels(
    prob: np.ndarray,
    embedding: np.ndarray,
    *,
    threshold: float = 0.5,
    seed_prob: np.ndarray | None = None,
    seed_threshold: float | None = None,
    n_background: int | None = None,
    min_area: int = 1,
    max_background_pixels: int = 4096,
    seed: int = 0,
) -> np.ndarray:
    """Fish instances by embedding similarity (WISE's test-time assignment; module docstring).

    Args:
      prob: (H,W) fish probability; fish = ``prob > threshold``.
      embedding: (H,W,d) per-pixel embedding.
      seed_prob: (H,W) localisation map whose blobs give the object locations (default ``prob``);
        a location outside the fish mask is dropped.
      seed_threshold: its threshold (default ``threshold``).
      n_background: background representatives (default: the number of locations, at least 1).
      min_area: drop instances with fewer pixels.
      max_background_pixels: k-means runs on at most this many background pixels (a seeded
        random subset).
      seed: the k-means and subset seed.

    Returns:
      (H,W) int32 labels, 0 = background, instances 1..n in raster order of their first pixel.
    """
    prob = np.asarray(prob, np.float64)
    emb = np.asarray(embedding, np.float64)
    if prob.ndim != 2 or emb.shape[:2] != prob.shape or emb.ndim != 3:
        raise ValueError(f"prob (H,W) and embedding (H,W,d) needed, got {prob.shape}, {emb.shape}")
    fish = prob > threshold
    locs = seed_locations(
        prob if seed_prob is None else seed_prob,
        threshold if seed_threshold is None else seed_threshold,
    )
    locs = [(r, c) for r, c in locs if fish[r, c]]
    labels = np.zeros(prob.shape, np.int32)
    if not locs or not fish.any():
        return labels
    objects = np.stack([emb[r, c] for r, c in locs])
    bg = emb[~fish]
    rng = np.random.default_rng(seed)
    if len(bg) > max_background_pixels:
        bg = bg[rng.choice(len(bg), max_background_pixels, replace=False)]
    k = max(1, len(locs)) if n_background is None else int(n_background)
    reps = kmeans(bg, k, seed=seed) if len(bg) else np.zeros((0, emb.shape[-1]))
    centres = np.concatenate([objects, reps])
    owner = _nearest(emb[fish], centres)
    labels[fish] = np.where(owner < len(objects), owner + 1, 0)
    return relabel_raster(_drop_small(labels, min_area))


def _h_dome_markers(dist: np.ndarray, h: float) -> tuple[np.ndarray, int]:
    """One marker per maximum of ``dist`` whose dynamic is at least ``h``.

    The h-dome transform ``dist - reconstruction(dist - h, dist)`` is positive on the top ``h``
    of every mountain; maxima closer than ``h`` to their saddle share one connected dome, so each
    dome that reaches height ``h`` is one marker. (``skimage.morphology.h_maxima`` marks only the
    exact top pixels, which on a digitised ridge can be several disconnected pixels of one peak.)
    """
    shifted = np.maximum(dist - h, 0.0)
    dome = dist - skimage.morphology.reconstruction(shifted, dist, method="dilation")
    eps = 1e-6 * max(1.0, h)
    comps, n = ndi.label(dome > eps, structure=_EIGHT)
    if n == 0:
        return comps.astype(np.int32), 0
    tall = np.asarray(ndi.maximum(dome, comps, np.arange(1, n + 1))) >= h - eps
    lut = np.zeros(n + 1, np.int32)
    lut[1:][tall] = np.arange(1, int(tall.sum()) + 1)
    return lut[comps], int(tall.sum())


def _drop_small(labels: np.ndarray, min_area: int) -> np.ndarray:
    """``labels`` with instances smaller than ``min_area`` pixels set to background."""
    if min_area <= 1 or labels.max() == 0:
        return labels
    small = np.bincount(labels.ravel()) < min_area
    small[0] = False
    return np.where(small[labels], 0, labels)


def relabel_raster(labels: np.ndarray) -> np.ndarray:
    """Renumbers labels 1..n in the raster order of each label's first pixel."""
    flat = labels.ravel()
    uniq, first = np.unique(flat, return_index=True)
    keep = uniq > 0
    order = uniq[keep][np.argsort(first[keep], kind="stable")]
    lut = np.zeros(int(flat.max()) + 1 if flat.size else 1, np.int32)
    lut[order] = np.arange(1, len(order) + 1, dtype=np.int32)
    return lut[labels].astype(np.int32)


@dataclasses.dataclass
class FishMeasurement:
    """Measurements of one fish in one coordinate frame (units: that frame's pixels).

    Attributes:
      area: pixel area (scaled by sx*sy for the original frame).
      length: extent along the major axis, edge to edge.
      width: extent along the minor axis, edge to edge.
      feret: largest distance between two outline points (maximum caliper diameter).
      orientation_deg: major-axis angle, counter-clockwise from +x as seen on screen, (-90, 90].
      centroid_x, centroid_y: centre of mass in pixel-index coordinates.
      bbox: (x0, y0, x1, y1), x1/y1 exclusive, in pixel coordinates of the frame.
      length_line: (xa, ya, xb, yb) end points of the length segment (continuous coordinates,
        pixel i spans [i, i+1)), for drawing.
    """

    area: float
    length: float
    width: float
    feret: float
    orientation_deg: float
    centroid_x: float
    centroid_y: float
    bbox: tuple[float, float, float, float]
    length_line: tuple[float, float, float, float]


def _measure_one(ys: np.ndarray, xs: np.ndarray, sy: float, sx: float) -> FishMeasurement:
    """Measurements of one instance's pixels (row, column) in a frame scaled by (sy, sx)."""
    # Continuous coordinates of pixel centres in the target frame.
    cx = (xs + 0.5) * sx
    cy = (ys + 0.5) * sy
    mx, my = float(cx.mean()), float(cy.mean())
    if len(xs) > 1:
        cov = np.cov(np.stack([cx - mx, cy - my]), bias=True)
        evals, evecs = np.linalg.eigh(cov)
        u = evecs[:, int(np.argmax(evals))]
    else:
        u = np.array([1.0, 0.0]) if sx >= sy else np.array([0.0, 1.0])
    if u[0] < 0 or (u[0] == 0 and u[1] > 0):
        u = -u  # one canonical direction: pointing right (or up on screen)
    v = np.array([-u[1], u[0]])
    t = (cx - mx) * u[0] + (cy - my) * u[1]
    s = (cx - mx) * v[0] + (cy - my) * v[1]
    # A pixel of size sx x sy spans |u_x| sx + |u_y| sy along direction u.
    foot_u = abs(u[0]) * sx + abs(u[1]) * sy
    foot_v = abs(v[0]) * sx + abs(v[1]) * sy
    t0, t1 = float(t.min()) - foot_u / 2, float(t.max()) + foot_u / 2
    length = t1 - t0
    width = float(s.max() - s.min()) + foot_v
    # Screen y points down, so a counter-clockwise angle uses -u_y.
    angle = math.degrees(math.atan2(-u[1], u[0]))
    angle += 0.0  # no "-0.0" in the CSV
    if angle <= -90.0:
        angle += 180.0
    elif angle > 90.0:
        angle -= 180.0
    line = tuple(float(c) for c in (mx + u[0] * t0, my + u[1] * t0, mx + u[0] * t1, my + u[1] * t1))
    return FishMeasurement(
        area=float(len(xs)) * sx * sy,
        length=float(length),
        width=float(width),
        feret=_feret(ys, xs, sy, sx),
        orientation_deg=angle,
        centroid_x=mx - 0.5,
        centroid_y=my - 0.5,
        bbox=(
            float(xs.min()) * sx,
            float(ys.min()) * sy,
            float(xs.max() + 1) * sx,
            float(ys.max() + 1) * sy,
        ),
        length_line=line,
    )


def _feret(ys: np.ndarray, xs: np.ndarray, sy: float, sx: float) -> float:
    """Maximum caliper diameter of the union of the pixels' squares (corner points' hull)."""
    corners = np.concatenate(
        [
            np.stack([(xs + dx) * sx, (ys + dy) * sy], axis=1)
            for dy in (0.0, 1.0)
            for dx in (0.0, 1.0)
        ]
    )
    if len(corners) > 64:
        from scipy.spatial import ConvexHull

        # Pixel squares never make a flat point set, so the hull is always defined.
        corners = corners[ConvexHull(corners).vertices]
    diff = corners[:, None, :] - corners[None, :, :]
    return float(np.sqrt((diff**2).sum(-1)).max())


def instance_lengths(labels: np.ndarray) -> np.ndarray:
    """(n,) length of instances 1..n of ``labels`` in its pixels, as :func:`measure_fish`
    reports ``length_px`` (extent along the major axis, edge to edge); NaN for a missing number."""
    labels = np.asarray(labels)
    n = int(labels.max()) if labels.size else 0
    out = np.full(n, np.nan)
    for k, sl in enumerate(ndi.find_objects(labels.astype(np.int32)), start=1):
        if sl is None:
            continue
        ys, xs = np.nonzero(labels[sl] == k)
        out[k - 1] = _measure_one(ys + sl[0].start, xs + sl[1].start, 1.0, 1.0).length
    return out


FRAMES = ("px", "orig")


def _shifted(m: FishMeasurement, top: float, left: float) -> FishMeasurement:
    """``m`` with every position moved by (top, left); sizes and angles unchanged."""
    x0, y0, x1, y1 = m.bbox
    xa, ya, xb, yb = m.length_line
    return dataclasses.replace(
        m,
        centroid_x=m.centroid_x + left,
        centroid_y=m.centroid_y + top,
        bbox=(x0 + left, y0 + top, x1 + left, y1 + top),
        length_line=(xa + left, ya + top, xb + left, yb + top),
    )


def measure_fish(
    labels: np.ndarray,
    prob: np.ndarray,
    *,
    original_size: tuple[int, int] | None = None,
    origin: tuple[float, float] = (0.0, 0.0),
) -> list[dict[str, float | int]]:
    """One row of measurements per instance, in the map's and the original image's pixels.

    Args:
      labels: (H,W) instance labels from :func:`instance_labels`.
      prob: (H,W) fish probability (for the mean probability of each fish).
      original_size: (height, width) of the original image region the map was resized from;
        ``None`` means the map is at the original size.
      origin: (top, left) of that region in the original image (letterbox bars cropped off
        before resizing); added to every ``_orig`` position.

    Returns:
      A list ordered by instance number with keys ``fish`` (1-based index), ``mean_prob``, and
      for each frame suffix ``_px`` (map pixels) and ``_orig`` (original pixels): ``area``,
      ``length``, ``width``, ``feret``, ``orientation_deg``, ``centroid_x``, ``centroid_y``,
      ``bbox_x0``, ``bbox_y0``, ``bbox_x1``, ``bbox_y1``, ``line_xa``, ``line_ya``, ``line_xb``,
      ``line_yb``.
    """
    labels = np.asarray(labels)
    prob = np.asarray(prob, np.float64)
    if labels.shape != prob.shape:
        raise ValueError(f"labels {labels.shape} and prob {prob.shape} must have one shape")
    h, w = labels.shape
    oh, ow = (h, w) if original_size is None else original_size
    scales = {"px": (1.0, 1.0), "orig": (oh / h, ow / w)}
    n = int(labels.max()) if labels.size else 0
    rows: list[dict[str, float | int]] = []
    if n == 0:
        return rows
    objects = ndi.find_objects(labels)
    for k, sl in enumerate(objects, start=1):
        if sl is None:
            continue
        local = labels[sl] == k
        ys, xs = np.nonzero(local)
        ys = ys + sl[0].start
        xs = xs + sl[1].start
        row: dict[str, float | int] = {"fish": k, "mean_prob": float(prob[ys, xs].mean())}
        for frame, (sy, sx) in scales.items():
            m = _measure_one(ys, xs, sy, sx)
            if frame == "orig" and origin != (0.0, 0.0):
                m = _shifted(m, *origin)
            row[f"area_{frame}"] = m.area
            row[f"length_{frame}"] = m.length
            row[f"width_{frame}"] = m.width
            row[f"feret_{frame}"] = m.feret
            row[f"orientation_deg_{frame}"] = m.orientation_deg
            row[f"centroid_x_{frame}"] = m.centroid_x
            row[f"centroid_y_{frame}"] = m.centroid_y
            for name, val in zip(("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"), m.bbox):
                row[f"{name}_{frame}"] = val
            for name, val in zip(("line_xa", "line_ya", "line_xb", "line_yb"), m.length_line):
                row[f"{name}_{frame}"] = val
        rows.append(row)
    return rows
