"""Fish instances against true boxes: detection and extent figures, defined once.

Pure numpy. ``alcfcn_jax.apps.instances`` and ``evaluate.py`` (``eval.evaluation`` on box data) make
the instances, reduce each image to an :func:`image_record` and pool the records of a split with
:func:`extent_metrics`; :func:`box_detection_metrics` is the same from boxes and scores alone.
Definitions (one split, every image pooled):

  * every predicted instance is a box (the bounding box of its pixels, ``x0, y0, x1, y1`` with
    pixel ``i`` spanning ``[i, i + 1)``) with a confidence (:func:`instance_confidence`: the mean
    fish probability of its confident pixels, ``p > 0.5``, so that an outline grown into the
    water around a fish does not lower it; of all its pixels when none is confident);
  * matching, image by image: instances in order of decreasing confidence each take the unmatched
    true box of highest IoU if that IoU is >= ``iou_threshold`` (0.5): a true positive; otherwise
    a false positive (greedy, as the PASCAL VOC / COCO detection evaluations do);
  * ``precision`` = TP / instances, ``recall`` = TP / true boxes, with every instance kept (no
    confidence cut-off);
  * ``ap50`` = area under the precision-recall curve of all instances of the split ranked by
    confidence, all-point interpolated: precision at recall r is the best precision at any recall
    >= r, summed over the recall steps (VOC 2010+ / the usual ``mAP50`` of one class);
  * ``one_instance_share`` = share of true boxes that get exactly one instance, an instance
    belonging to the true box that contains its box centre (of those, the one of highest IoU).
    0 instances = a missed or merged-away fish, 2 or more = a fish cut into pieces;
  * ``ap30``, ``ap50``, ``ap70``: the AP above with matches at IoU >= 0.3 / 0.5 / 0.7;
    ``ap50_95`` = the mean of the APs at 0.50, 0.55, ..., 0.95 (COCO's box AP of one class);
  * ``best_iou_median`` / ``best_iou_share50``: per true box the highest IoU of any instance box
    of its image (0 without one), their median and the share >= 0.5;
  * ``box_coverage_median``: per true box, the share of its pixels (pixels whose centre lies in
    the box, as the box hit rate counts them) that are predicted fish (any instance), median
    over the boxes; ``pixel_precision``: the share of predicted fish pixels that lie in some true
    box, pooled over the split;
  * length, for each instance matched at IoU >= 0.5: its length as ``predict`` measures it
    (``eval.measure.measure_fish``: extent along the major axis) against its true box of long
    side ``l`` and diagonal ``d``: ``length_in_range`` = share with ``0.9 l <= length <= 1.1 d``,
    ``length_error_median`` = median of ``|length - l| / l`` (``length_matched`` instances);
  * ``ap50_true_size`` (a diagnostic, never a method): the AP50 when every instance box is
    replaced by the size of the true box nearest to its centre, centred where the instance is:
    the AP that today's localisation reaches with perfect sizes;
  * by fish size (:data:`SIZE_CLASSES`: the true box's long side over the map's short side, so
    that maps of any resolution are comparable: ``small`` under 1/16 (19 pixels at short side
    304), ``medium`` 1/16 to 1/4, ``large`` 1/4 or more; about a quarter, three fifths and a
    sixth of the validation boxes of the real frames), per true box of the class:
    ``{size}_boxes`` (how many), ``{size}_best_iou_share50`` (share whose best instance box has
    IoU >= 0.5), ``{size}_missed`` (share whose best IoU is under 0.1: no instance on the fish)
    and ``{size}_size_ratio_median`` (median of the best instance box's long side over the true
    long side, for the boxes not missed: > 1 too large, < 1 too small). Where AP50 is lost:
    a true box is only matched at IoU >= 0.5 if its best IoU is, so ``instance_recall`` <=
    ``best_iou_share50`` and AP50 <= ``best_iou_share50``; misses and wrong sizes are the two
    ways a box falls short.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) IoU of boxes ``a`` (N,4) and ``b`` (M,4), each ``x0, y0, x1, y1``."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    ix = np.clip(
        np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None
    )
    iy = np.clip(
        np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None
    )
    inter = ix * iy
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def match_image(
    pred_boxes: np.ndarray, scores: np.ndarray, true_boxes: np.ndarray, iou_threshold: float = 0.5
) -> np.ndarray:
    """Greedy matching of one image: a bool per prediction (True = true positive).

    Predictions are visited by decreasing score (ties: in the given order); each takes the
    unmatched true box of highest IoU when that IoU is >= ``iou_threshold``.
    """
    return assign_image(pred_boxes, scores, true_boxes, iou_threshold) >= 0


def assign_image(
    pred_boxes: np.ndarray, scores: np.ndarray, true_boxes: np.ndarray, iou_threshold: float = 0.5
) -> np.ndarray:
    """Greedy matching of one image (as :func:`match_image`): per prediction the index of its
    true box, or -1 for a false positive."""
    pred_boxes = np.asarray(pred_boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if len(scores) != len(pred_boxes):
        raise ValueError(f"{len(pred_boxes)} boxes but {len(scores)} scores")
    owner = np.full(len(pred_boxes), -1, np.int64)
    true_boxes = np.asarray(true_boxes, np.float64).reshape(-1, 4)
    if len(pred_boxes) == 0 or len(true_boxes) == 0:
        return owner
    iou = box_iou(pred_boxes, true_boxes)
    taken = np.zeros(len(true_boxes), bool)
    for i in np.argsort(-scores, kind="stable"):
        cand = np.where(taken, -1.0, iou[i])
        j = int(np.argmax(cand))
        if cand[j] >= iou_threshold:
            taken[j] = True
            owner[i] = j
    return owner


def instances_per_box(pred_boxes: np.ndarray, true_boxes: np.ndarray) -> np.ndarray:
    """(M,) number of instances belonging to each true box (see the module docstring)."""
    pred_boxes = np.asarray(pred_boxes, np.float64).reshape(-1, 4)
    true_boxes = np.asarray(true_boxes, np.float64).reshape(-1, 4)
    counts = np.zeros(len(true_boxes), np.int64)
    if len(pred_boxes) == 0 or len(true_boxes) == 0:
        return counts
    cx = (pred_boxes[:, 0] + pred_boxes[:, 2]) / 2
    cy = (pred_boxes[:, 1] + pred_boxes[:, 3]) / 2
    inside = (
        (cx[:, None] >= true_boxes[None, :, 0])
        & (cx[:, None] <= true_boxes[None, :, 2])
        & (cy[:, None] >= true_boxes[None, :, 1])
        & (cy[:, None] <= true_boxes[None, :, 3])
    )
    iou = np.where(inside, box_iou(pred_boxes, true_boxes), -1.0)
    owner = np.argmax(iou, axis=1)
    has = inside.any(axis=1)
    np.add.at(counts, owner[has], 1)
    return counts


def average_precision(scores: np.ndarray, tp: np.ndarray, num_true: int) -> float:
    """All-point interpolated AP of pooled predictions (``tp`` per prediction); NaN without
    true boxes."""
    if num_true <= 0:
        return math.nan
    scores = np.asarray(scores, np.float64).reshape(-1)
    if scores.size == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    hits = np.asarray(tp, bool)[order]
    ctp = np.cumsum(hits)
    cfp = np.cumsum(~hits)
    recall = ctp / num_true
    precision = ctp / (ctp + cfp)
    # Envelope: the best precision at any recall >= r.
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mrec = np.concatenate([[0.0], recall, [recall[-1]]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def box_detection_metrics(
    images: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]],
    *,
    iou_threshold: float = 0.5,
) -> dict[str, float]:
    """Pooled instance-box figures of a split.

    Args:
      images: per image ``(pred_boxes (N,4), scores (N,), true_boxes (M,4))``.
      iou_threshold: least IoU of a match (0.5: AP50).

    Returns:
      ``num_images``, ``num_true_boxes``, ``num_instances``, ``true_positives``,
      ``instance_precision``, ``instance_recall``, ``ap50`` (named ``ap50`` whatever the
      threshold), ``one_instance_share`` and ``instances_per_box`` histogram shares
      ``boxes_with_0`` / ``boxes_with_1`` / ``boxes_with_2plus`` (floats; NaN where undefined).
    """
    all_scores: list[np.ndarray] = []
    all_tp: list[np.ndarray] = []
    per_box: list[np.ndarray] = []
    n_images = 0
    n_true = 0
    for pred_boxes, scores, true_boxes in images:
        n_images += 1
        true_boxes = np.asarray(true_boxes, np.float64).reshape(-1, 4)
        n_true += len(true_boxes)
        all_scores.append(np.asarray(scores, np.float64).reshape(-1))
        all_tp.append(match_image(pred_boxes, scores, true_boxes, iou_threshold))
        per_box.append(instances_per_box(pred_boxes, true_boxes))
    scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
    tp = np.concatenate(all_tp) if all_tp else np.zeros(0, bool)
    counts = np.concatenate(per_box) if per_box else np.zeros(0, np.int64)
    n_pred = len(scores)
    n_tp = int(tp.sum())

    def share(sel: np.ndarray) -> float:
        return float(sel.mean()) if n_true else math.nan

    return {
        "num_images": float(n_images),
        "num_true_boxes": float(n_true),
        "num_instances": float(n_pred),
        "true_positives": float(n_tp),
        "instance_precision": float(n_tp / n_pred) if n_pred else math.nan,
        "instance_recall": float(n_tp / n_true) if n_true else math.nan,
        "ap50": average_precision(scores, tp, n_true),
        "one_instance_share": share(counts == 1),
        "boxes_with_0": share(counts == 0),
        "boxes_with_1": share(counts == 1),
        "boxes_with_2plus": share(counts >= 2),
    }


IOU_THRESHOLDS_50_95 = tuple(round(0.5 + 0.05 * k, 2) for k in range(10))

# Fish size classes of the by-size figures: (name, label, least, below), in true box long side
# over the map's short side.
SIZE_CLASSES: tuple[tuple[str, str, float, float], ...] = (
    ("small", "< 1/16", 0.0, 1 / 16),
    ("medium", "1/16 - 1/4", 1 / 16, 1 / 4),
    ("large", ">= 1/4", 1 / 4, math.inf),
)
MISSED_IOU = 0.1
# The by-size keys of ``extent_metrics`` (module docstring), class by class.
SIZE_KEYS: tuple[str, ...] = tuple(
    f"{name}_{figure}"
    for name, *_ in SIZE_CLASSES
    for figure in ("boxes", "best_iou_share50", "missed", "size_ratio_median")
)


def box_pixels(box: Sequence[float], shape: tuple[int, int]) -> tuple[slice, slice]:
    """Rows and columns of the pixels of a (H,W) map whose centre lies in ``box`` (x0,y0,x1,y1;
    the box hit rate's rule: pixel (r, c) when x0 <= c + 0.5 <= x1 and y0 <= r + 0.5 <= y1)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    r0, r1 = max(0, math.ceil(y0 - 0.5)), min(shape[0], math.floor(y1 - 0.5) + 1)
    c0, c1 = max(0, math.ceil(x0 - 0.5)), min(shape[1], math.floor(x1 - 0.5) + 1)
    return slice(r0, max(r0, r1)), slice(c0, max(c0, c1))


def image_record(labels: np.ndarray, prob: np.ndarray, true_boxes: np.ndarray) -> dict[str, Any]:
    """What the extent figures need of one image, JSON-able (lists and ints).

    Args:
      labels: (H,W) instance labels (0 = background, 1..n).
      prob: (H,W) fish probability (the instances' confidences: :func:`instance_confidence`).
      true_boxes: (M,4) true boxes ``x0, y0, x1, y1`` in the map's pixels.

    Returns:
      ``pred_boxes`` (n,4), ``scores`` (n,), ``lengths`` (n,: ``eval.measure.instance_lengths``),
      ``true_boxes`` (M,4), ``shape`` ([H, W]), ``coverage`` (M,: share of the box's pixels that
      are fish, None for a box holding no pixel centre), ``fish_pixels`` and ``fish_in_boxes`` (fish pixels, and those
      inside some true box).
    """
    from alcfcn_jax.eval.measure import instance_lengths

    labels = np.asarray(labels)
    true_boxes = np.asarray(true_boxes, np.float64).reshape(-1, 4)
    fish = labels > 0
    in_boxes = np.zeros(fish.shape, bool)
    coverage: list[float | None] = []
    for box in true_boxes:
        rows, cols = box_pixels(box, fish.shape)
        in_boxes[rows, cols] = True
        cell = fish[rows, cols]
        coverage.append(float(cell.mean()) if cell.size else None)
    return {
        "pred_boxes": labels_to_boxes(labels).tolist(),
        "scores": instance_confidence(labels, prob).tolist(),
        "lengths": instance_lengths(labels).tolist(),
        "true_boxes": true_boxes.tolist(),
        "shape": [int(v) for v in fish.shape],
        "coverage": coverage,
        "fish_pixels": int(fish.sum()),
        "fish_in_boxes": int((fish & in_boxes).sum()),
    }


def _arrays(record: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        np.asarray(record["pred_boxes"], np.float64).reshape(-1, 4),
        np.asarray(record["scores"], np.float64).reshape(-1),
        np.asarray(record["true_boxes"], np.float64).reshape(-1, 4),
    )


def pooled_ap(records: Sequence[Mapping[str, Any]], iou_threshold: float) -> float:
    """AP of the pooled instances of ``records`` at one IoU threshold (all-point)."""
    scores, tp, n_true = [], [], 0
    for rec in records:
        pred, sc, true = _arrays(rec)
        scores.append(sc)
        tp.append(assign_image(pred, sc, true, iou_threshold) >= 0)
        n_true += len(true)
    return average_precision(
        np.concatenate(scores) if scores else np.zeros(0),
        np.concatenate(tp) if tp else np.zeros(0, bool),
        n_true,
    )


def true_size_boxes(pred_boxes: np.ndarray, true_boxes: np.ndarray) -> np.ndarray:
    """Each predicted box resized to the width and height of the true box whose centre is
    nearest its centre, keeping its own centre (the ``ap50_true_size`` diagnostic)."""
    pred_boxes = np.asarray(pred_boxes, np.float64).reshape(-1, 4)
    true_boxes = np.asarray(true_boxes, np.float64).reshape(-1, 4)
    if len(pred_boxes) == 0 or len(true_boxes) == 0:
        return pred_boxes
    pc = (pred_boxes[:, :2] + pred_boxes[:, 2:]) / 2
    tc = (true_boxes[:, :2] + true_boxes[:, 2:]) / 2
    near = np.argmin(((pc[:, None] - tc[None]) ** 2).sum(-1), axis=1)
    half = (true_boxes[near, 2:] - true_boxes[near, :2]) / 2
    return np.concatenate([pc - half, pc + half], axis=1)


def _median(values: Sequence[float]) -> float:
    return float(np.median(values)) if len(values) else math.nan


def extent_metrics(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Every figure of the module docstring from the :func:`image_record` of each image.

    Returns the keys of :func:`box_detection_metrics` plus ``ap30``, ``ap70``, ``ap50_95``,
    ``best_iou_median``, ``best_iou_share50``, ``box_coverage_median``, ``pixel_precision``,
    ``length_matched``, ``length_in_range``, ``length_error_median`` and ``ap50_true_size``
    (floats; NaN where undefined).
    """
    out = box_detection_metrics(_arrays(r) for r in records)
    for t in (0.3, 0.7):
        out[f"ap{round(t * 100)}"] = pooled_ap(records, t)
    out["ap50_95"] = float(np.mean([pooled_ap(records, t) for t in IOU_THRESHOLDS_50_95]))
    best_iou: list[float] = []
    long_sides: list[float] = []
    size_ratio: list[float] = []
    coverage: list[float] = []
    in_range: list[bool] = []
    length_err: list[float] = []
    fish = inside = 0
    for rec in records:
        pred, scores, true = _arrays(rec)
        iou = box_iou(pred, true)
        best_iou.extend(iou.max(axis=0).tolist() if len(pred) else [0.0] * len(true))
        true_long = _long_sides(true)
        long_sides.extend((true_long / min(rec["shape"])).tolist())
        if len(pred):
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio = _long_sides(pred[iou.argmax(axis=0)]) / true_long
            size_ratio.extend(ratio.tolist())
        else:
            size_ratio.extend([math.nan] * len(true))
        coverage.extend(c for c in rec["coverage"] if c is not None)
        fish += int(rec["fish_pixels"])
        inside += int(rec["fish_in_boxes"])
        lengths = np.asarray(rec["lengths"], np.float64).reshape(-1)
        for i, j in enumerate(assign_image(pred, scores, true, 0.5)):
            if j < 0:
                continue
            w, h = true[j, 2] - true[j, 0], true[j, 3] - true[j, 1]
            long_side, diagonal = max(w, h), math.hypot(w, h)
            in_range.append(0.9 * long_side <= lengths[i] <= 1.1 * diagonal)
            length_err.append(abs(lengths[i] - long_side) / long_side)
    n_true = len(best_iou)
    out["best_iou_median"] = _median(best_iou)
    out["best_iou_share50"] = float(np.mean(np.asarray(best_iou) >= 0.5)) if n_true else math.nan
    out["box_coverage_median"] = _median(coverage)
    out["pixel_precision"] = float(inside / fish) if fish else math.nan
    out["length_matched"] = float(len(in_range))
    out["length_in_range"] = float(np.mean(in_range)) if in_range else math.nan
    out["length_error_median"] = _median(length_err)
    out.update(_by_size(np.asarray(best_iou), np.asarray(long_sides), np.asarray(size_ratio)))
    resized = [
        {**rec, "pred_boxes": true_size_boxes(*_arrays(rec)[::2]).tolist()} for rec in records
    ]
    out["ap50_true_size"] = pooled_ap(resized, 0.5)
    return out


def _long_sides(boxes: np.ndarray) -> np.ndarray:
    """(n,) long side (the larger of width and height) of (n,4) boxes ``x0, y0, x1, y1``."""
    return np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])


def _fmt(value: Any, digits: int = 3) -> str:
    """A figure in a report table: ``-`` when undefined (None or NaN)."""
    return "-" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _by_size(best_iou: np.ndarray, long_side: np.ndarray, ratio: np.ndarray) -> dict[str, float]:
    """The by-size figures of the module docstring from per-true-box arrays."""
    out: dict[str, float] = {}
    for name, _, lo, hi in SIZE_CLASSES:
        m = (long_side >= lo) & (long_side < hi)
        n = int(m.sum())
        found = m & (best_iou >= MISSED_IOU)
        out[f"{name}_boxes"] = float(n)
        out[f"{name}_best_iou_share50"] = float(np.mean(best_iou[m] >= 0.5)) if n else math.nan
        out[f"{name}_missed"] = float(np.mean(best_iou[m] < MISSED_IOU)) if n else math.nan
        out[f"{name}_size_ratio_median"] = _median(ratio[found].tolist())
    return out


def size_table(result: Mapping[str, Any]) -> list[str]:
    """Markdown lines of the by-size figures (module docstring) of ``result``: a caption and a
    table with a row per :data:`SIZE_CLASSES` class."""
    lines = [
        "By fish size (where AP50 is lost: AP50 <= the share of true boxes with best IoU >= 0.5):",
        "",
        "| fish (true box long side / image short side) | boxes | best IoU >= 0.5 | missed (best IoU < 0.1) "
        "| instance long side / true long side (median, not missed) |",
        "|---|---|---|---|---|",
    ]
    for name, span, _, _ in SIZE_CLASSES:
        lines.append(
            f"| {name} ({span}) | {_fmt(result.get(f'{name}_boxes'), 0)} "
            f"| {_fmt(result.get(f'{name}_best_iou_share50'))} "
            f"| {_fmt(result.get(f'{name}_missed'))} "
            f"| {_fmt(result.get(f'{name}_size_ratio_median'), 2)} |"
        )
    return lines


# The figures of a report, in order, with what each one is (``evaluate.py`` and
# ``python -m alcfcn_jax.apps.instances`` write the same table).
EXTENT_FIGURES: tuple[tuple[str, str], ...] = (
    ("instance_precision", "instances matched at IoU >= 0.5 / instances"),
    ("instance_recall", "true boxes matched at IoU >= 0.5 / true boxes"),
    ("ap30", "AP of instance boxes, matches at IoU >= 0.3"),
    ("ap50", "AP at IoU >= 0.5"),
    ("ap70", "AP at IoU >= 0.7"),
    ("ap50_95", "mean AP over IoU 0.50:0.05:0.95 (COCO)"),
    ("best_iou_median", "per true box, the best IoU of an instance box: median"),
    ("best_iou_share50", "... share >= 0.5"),
    ("box_coverage_median", "per true box, share of its pixels predicted fish: median"),
    ("pixel_precision", "share of predicted fish pixels inside some true box"),
    ("length_in_range", "matched instances with 0.9 x long side <= length <= 1.1 x diagonal"),
    ("length_error_median", "matched instances: median |length - long side| / long side"),
    ("one_instance_share", "true boxes holding exactly one instance's box centre"),
    ("boxes_with_0", "... none (missed or merged into a neighbour)"),
    ("boxes_with_2plus", "... two or more (cut into pieces)"),
    ("ap50_true_size", "diagnostic: AP50 with each instance box given its nearest true box's size"),
)

# Per-image columns of ``image_row`` (CSV order).
IMAGE_COLUMNS = (
    "num_boxes",
    "num_instances",
    "true_positives",
    "best_iou_median",
    "box_coverage_median",
)


def image_row(record: Mapping[str, Any]) -> dict[str, float | int]:
    """Per-image figures of an :func:`image_record` (``IMAGE_COLUMNS``)."""
    pred, scores, true = _arrays(record)
    iou = box_iou(pred, true)
    best = iou.max(axis=0) if len(pred) else np.zeros(len(true))
    cover = [c for c in record["coverage"] if c is not None]
    return {
        "num_boxes": len(true),
        "num_instances": len(pred),
        "true_positives": int((assign_image(pred, scores, true, 0.5) >= 0).sum()),
        "best_iou_median": _median(best.tolist()),
        "box_coverage_median": _median(cover),
    }


def figure_table(result: Mapping[str, Any]) -> list[str]:
    """Markdown table lines (``| figure | value | meaning |``) of :data:`EXTENT_FIGURES`."""
    lines = ["| figure | value | meaning |", "|---|---|---|"]
    lines += [f"| {k} | {_fmt(result.get(k))} | {text} |" for k, text in EXTENT_FIGURES]
    return lines


def labels_to_boxes(labels: np.ndarray) -> np.ndarray:
    """(n, 4) bounding boxes ``x0, y0, x1, y1`` (exclusive ends) of instances 1..n of a label map
    (an all-zero row for a missing number)."""
    import scipy.ndimage as ndi

    labels = np.asarray(labels)
    n = int(labels.max()) if labels.size else 0
    out = np.zeros((n, 4), np.float64)
    for k, sl in enumerate(ndi.find_objects(labels.astype(np.int32)), start=1):
        if sl is not None:
            out[k - 1] = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
    return out


def mean_per_instance(labels: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(n,) mean of ``values`` over each instance 1..n of ``labels`` (NaN for a missing one)."""
    labels = np.asarray(labels).ravel()
    values = np.asarray(values, np.float64).ravel()
    n = int(labels.max()) if labels.size else 0
    sums = np.bincount(labels, weights=values, minlength=n + 1)[1:]
    cnt = np.bincount(labels, minlength=n + 1)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / cnt


def instance_confidence(labels: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """(n,) confidence of each instance 1..n: the mean fish probability of its pixels above
    ``threshold`` (the blob the cut made it from), or of all its pixels when none is above.

    For instances cut from ``p > threshold`` (``outline=blobs``) this is their mean probability;
    a GrabCut outline adds pixels of the fish's edges and of the water, whose low probabilities
    would otherwise rank a large, well outlined fish below a small blob (measured on the real
    validation frames: AP50 0.393 against 0.377 with the mean over all pixels; docs/results.md).
    """
    labels = np.asarray(labels)
    prob = np.asarray(prob, np.float64)
    confident = np.where(prob > threshold, labels, 0)
    core = mean_per_instance(confident, prob)
    n = int(labels.max()) if labels.size else 0
    if core.size < n:
        core = np.concatenate([core, np.full(n - core.size, np.nan)])
    everywhere = mean_per_instance(labels, prob)
    return np.where(np.isnan(core), everywhere, core)


__all__: Sequence[str] = (
    "EXTENT_FIGURES",
    "IMAGE_COLUMNS",
    "IOU_THRESHOLDS_50_95",
    "SIZE_CLASSES",
    "SIZE_KEYS",
    "assign_image",
    "average_precision",
    "box_detection_metrics",
    "box_iou",
    "box_pixels",
    "extent_metrics",
    "figure_table",
    "image_record",
    "image_row",
    "instances_per_box",
    "labels_to_boxes",
    "match_image",
    "instance_confidence",
    "mean_per_instance",
    "pooled_ap",
    "size_table",
    "true_size_boxes",
)
