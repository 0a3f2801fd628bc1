"""Fish instances against true boxes: precision, recall, AP50 and the one-instance share.

Pure numpy; ``alcfcn_jax.apps.instances`` makes the instances (watershed or embedding) and calls
:func:`box_detection_metrics` on them. Definitions (one split, every image pooled):

  * every predicted instance is a box (the bounding box of its pixels, ``x0, y0, x1, y1`` with
    pixel ``i`` spanning ``[i, i + 1)``) with a confidence (``apps.instances`` uses the instance's
    mean fish probability);
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
    0 instances = a missed or merged-away fish, 2 or more = a fish cut into pieces.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

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
    pred_boxes = np.asarray(pred_boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if len(scores) != len(pred_boxes):
        raise ValueError(f"{len(pred_boxes)} boxes but {len(scores)} scores")
    tp = np.zeros(len(pred_boxes), bool)
    true_boxes = np.asarray(true_boxes, np.float64).reshape(-1, 4)
    if len(pred_boxes) == 0 or len(true_boxes) == 0:
        return tp
    iou = box_iou(pred_boxes, true_boxes)
    taken = np.zeros(len(true_boxes), bool)
    for i in np.argsort(-scores, kind="stable"):
        cand = np.where(taken, -1.0, iou[i])
        j = int(np.argmax(cand))
        if cand[j] >= iou_threshold:
            taken[j] = True
            tp[i] = True
    return tp


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


__all__: Sequence[str] = (
    "average_precision",
    "box_detection_metrics",
    "box_iou",
    "instances_per_box",
    "labels_to_boxes",
    "match_image",
    "mean_per_instance",
)
