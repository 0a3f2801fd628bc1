"""Segmentation and counting metrics of A-LCFCN's ``SegMeter`` (docs/reference_spec.md section 6).

* Pooled confusion IoU: ``cf[pred, true]`` summed over the whole split, ``iou = diag / union``,
  mIoU = mean over classes whose union is non-empty (so (IoU_bg + IoU_fish) / 2 on real splits).
* Counts: a prediction's count is the number of pixels set by :func:`blobs_to_points` on its
  8-connected blobs (one point per blob at the int-truncated centroid; two blobs sharing a
  centroid pixel count once, as in the reference); the true count is the number of point pixels.
* GAME(L): see :func:`game`.

Everything here is host numpy; :class:`SegMeter` keeps raw sums so meters from several shards or
processes can be merged before the ratios are taken.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from alcfcn_jax.ops.components import label8


def confusion(
    pred: np.ndarray, gt: np.ndarray, n_classes: int = 2, ignore: int = 255
) -> np.ndarray:
    """Confusion matrix ``cf[pred_class, true_class]`` (int64, (C, C)).

    Pixels whose ground truth equals ``ignore`` are skipped.

    Args:
      pred: (H, W) predicted class ids in [0, n_classes).
      gt: (H, W) true class ids in [0, n_classes) or ``ignore``.
      n_classes: number of classes.
      ignore: ground-truth value to skip.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"confusion: pred shape {pred.shape} != gt shape {gt.shape}")
    keep = gt != ignore
    p = pred[keep].astype(np.int64)
    t = gt[keep].astype(np.int64)
    for what, a in (("pred", p), ("gt", t)):
        if a.size and (a.min() < 0 or a.max() >= n_classes):
            raise ValueError(
                f"confusion: {what} values must be in [0, {n_classes}) (or {ignore} in gt), "
                f"got range [{a.min()}, {a.max()}]"
            )
    return np.bincount(p * n_classes + t, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes
    )


def iou_from_confusion(cf: np.ndarray) -> dict[str, float]:
    """IoU per class and their mean over classes with a non-empty union.

    Returns:
      ``{"iou_bg", "iou_fish", "miou"}`` for 2 classes (plus ``iou_<c>`` for any further class);
      ``miou`` is NaN when no class has a non-empty union. A class with an empty union gets 0
      as in the reference (``inter / max(union, 1)``), except when the matrix holds no pixels at
      all (e.g. box datasets without masks): then every figure is NaN, never a misleading 0.
    """
    cf = np.asarray(cf, np.float64)
    inter = np.diag(cf)
    union = cf.sum(0) + cf.sum(1) - inter
    iou = inter / np.maximum(union, 1)
    names = ["iou_bg", "iou_fish"] + [f"iou_{c}" for c in range(2, cf.shape[0])]
    if not cf.any():
        iou = np.full(cf.shape[0], np.nan)
    out = {names[c]: float(iou[c]) for c in range(cf.shape[0])}
    valid = union > 0
    out["miou"] = float(iou[valid].mean()) if valid.any() else float("nan")
    return out


def count_blobs(mask: np.ndarray) -> int:
    """Number of 8-connected components of a 2-D mask."""
    return label8(np.asarray(mask))[1]


def blobs_to_points(mask: np.ndarray) -> np.ndarray:
    """One point per 8-connected blob at its int-truncated centroid (reference ``blobs2points``).

    Args:
      mask: (H, W) mask (non-zero = foreground) or an 8-connected label image.

    Returns:
      (H, W) int32 map with 1 at each blob's centroid pixel (which may lie outside a non-convex
      blob; coincident centroids set one pixel).
    """
    labels, n = label8(np.asarray(mask))
    points = np.zeros(labels.shape, np.int32)
    if n == 0:
        return points
    ys, xs = np.nonzero(labels)
    lab = labels[ys, xs]
    size = np.bincount(lab, minlength=n + 1)[1:].astype(np.float64)
    # Exact integer sums divided once, as regionprops' centroid (moment ratio) does.
    cy = np.bincount(lab, weights=ys, minlength=n + 1)[1:] / size
    cx = np.bincount(lab, weights=xs, minlength=n + 1)[1:] / size
    points[cy.astype(np.int64), cx.astype(np.int64)] = 1
    return points


def game(
    pred_points: np.ndarray, gt_points: np.ndarray, L: int, *, divide_by_4: bool = False
) -> float:
    """Grid Average Mean absolute Error of one image.

    Standard GAME(L) (``divide_by_4=False``): the image is split into a 2^L x 2^L grid, the cell
    edges of an axis of length n being ``floor(i * n / 2^L)``, so every pixel belongs to exactly
    one cell even when n is not divisible by 2^L; returns sum over cells of |gt - pred| counts.

    Reference convention (``divide_by_4=True``, A-LCFCN's ``compute_game``): cells of size
    (h // 2^L, w // 2^L) from the top-left corner, the remainder rows/columns are not counted, and
    the sum is divided by (L + 1) (= 4 for the L = 3 that ``SegMeter`` uses).

    Args:
      pred_points, gt_points: (H, W) point maps (values are summed per cell).
      L: grid level (>= 0).
      divide_by_4: use the reference convention described above.
    """
    pred = np.asarray(pred_points, np.float64)
    gt = np.asarray(gt_points, np.float64)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(
            f"game: expected two (H, W) maps of the same shape, got {pred.shape} and {gt.shape}"
        )
    if L < 0:
        raise ValueError(f"game: L must be >= 0, got {L}")
    n = 2**L
    h, w = pred.shape
    diff = gt - pred
    if divide_by_4:
        hs, ws = h // n, w // n
        cells = diff[: hs * n, : ws * n].reshape(n, hs, n, ws).sum(axis=(1, 3))
        return float(np.abs(cells).sum() / (L + 1))
    ye = (np.arange(n + 1) * h) // n
    xe = (np.arange(n + 1) * w) // n
    # Cumulative sums give every cell total in one pass (cells may be empty when n > side).
    c = np.zeros((h + 1, w + 1))
    c[1:, 1:] = diff.cumsum(0).cumsum(1)
    cells = c[ye[1:]][:, xe[1:]] - c[ye[:-1]][:, xe[1:]] - c[ye[1:]][:, xe[:-1]]
    cells = cells + c[ye[:-1]][:, xe[:-1]]
    return float(np.abs(cells).sum())


@dataclasses.dataclass
class SegMeter:
    """Accumulates the reference's validation metrics over images; mergeable across shards.

    Raw sums: ``cf`` (pooled confusion), ``abs_err_sum`` (sum |true - pred| counts),
    ``game_sum`` (sum of GAME per image, reference convention L=3 divided by 4 unless configured),
    ``n_images``.
    """

    n_classes: int = 2
    game_level: int = 3
    game_divide_by_4: bool = True
    cf: np.ndarray = dataclasses.field(default=None)  # type: ignore[assignment]
    abs_err_sum: float = 0.0
    game_sum: float = 0.0
    n_images: int = 0

    def __post_init__(self):
        if self.cf is None:
            self.cf = np.zeros((self.n_classes, self.n_classes), np.int64)

    def update(
        self,
        pred: np.ndarray,
        mask: np.ndarray,
        points: np.ndarray | None = None,
        valid: np.ndarray | None = None,
    ) -> None:
        """Adds one image.

        Args:
          pred: (H, W) predicted classes (argmax of the logits).
          mask: (H, W) true classes (255 = ignored).
          points: (H, W) true point map (1 = fish); default: one point per 8-connected blob of
            ``mask == 1`` (how the reference derives FishSeg points).
          valid: optional (H, W) bool of real (unpadded) pixels; other pixels are ignored.
        """
        pred = np.asarray(pred)
        mask = np.asarray(mask)
        if valid is not None:
            ys, xs = np.nonzero(valid)
            if ys.size == 0:
                raise ValueError("SegMeter.update: `valid` selects no pixel")
            box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
            pred, mask = pred[box], mask[box]
            points = None if points is None else np.asarray(points)[box]
        gt_points = blobs_to_points(mask == 1) if points is None else (np.asarray(points) == 1)
        pred_points = blobs_to_points(pred == 1)
        self.cf += confusion(pred, mask, self.n_classes)
        self.abs_err_sum += abs(float(gt_points.sum()) - float(pred_points.sum()))
        self.game_sum += game(
            pred_points, gt_points, self.game_level, divide_by_4=self.game_divide_by_4
        )
        self.n_images += 1

    def merge(self, other: SegMeter) -> SegMeter:
        """Adds another meter's sums into this one (same settings required) and returns self."""
        if (other.n_classes, other.game_level, other.game_divide_by_4) != (
            self.n_classes,
            self.game_level,
            self.game_divide_by_4,
        ):
            raise ValueError("SegMeter.merge: meters were configured differently")
        self.cf += other.cf
        self.abs_err_sum += other.abs_err_sum
        self.game_sum += other.game_sum
        self.n_images += other.n_images
        return self

    def raw(self) -> np.ndarray:
        """All sums as one float64 vector (for an all-reduce); inverse of :meth:`from_raw`."""
        return np.concatenate(
            [self.cf.ravel().astype(np.float64), [self.abs_err_sum, self.game_sum, self.n_images]]
        )

    @classmethod
    def from_raw(cls, raw: np.ndarray, **settings) -> SegMeter:
        """Rebuilds a meter from :meth:`raw` output (possibly summed over shards)."""
        m = cls(**settings)
        k = m.n_classes * m.n_classes
        raw = np.asarray(raw, np.float64)
        m.cf = np.rint(raw[:k]).astype(np.int64).reshape(m.n_classes, m.n_classes)
        m.abs_err_sum, m.game_sum = float(raw[k]), float(raw[k + 1])
        m.n_images = int(round(raw[k + 2]))
        return m

    def summary(self) -> dict[str, float]:
        """``miou, iou_bg, iou_fish, mae, game, n_images`` (NaN for empty averages)."""
        out = iou_from_confusion(self.cf)
        n = self.n_images
        out["mae"] = self.abs_err_sum / n if n else float("nan")
        out["game"] = self.game_sum / n if n else float("nan")
        out["n_images"] = float(n)
        return out
