"""Sharded evaluation core: segmentation IoU, counting MAE, GAME and box hit rates over a split.

``evaluate`` is used by ``evaluate.py`` and by training for validation. The model runs in eval
mode inside one jitted function whose batch is sharded over the ``"data"`` mesh axis (parameters
replicated); the per-image confusion matrices are computed on device, the argmax maps come back to
the host for 8-connected blob labelling (counts, points, GAME), and on multi-host runs the
per-image rows are gathered from every process before they are pooled, so each process returns the
same split-wide numbers.

Definitions (reference spec section 6):
  * ``miou`` = mean of background and fish IoU of the confusion matrix pooled over the whole split
    (not a mean of per-image IoUs); classes whose union is empty are left out of the mean.
  * ``mae`` = mean |true count - predicted count|, predicted count = number of 8-connected blobs of
    the argmax map (one point per blob at its int-truncated centroid).
  * ``game_l{L}`` = standard GAME(L): sum over a 2^L x 2^L grid covering every pixel of
    |gt - pred| per cell; ``game_l{L}_ref`` = A-LCFCN's ``compute_game`` convention (cells of
    (h // 2^L, w // 2^L), remainder rows / columns dropped, sum divided by L + 1);
    ``game`` = ``game_l3_ref``, the number A-LCFCN's ``SegMeter`` reports.
  * Box datasets (``boxes=True``): ground-truth points are the box centres and the true count the
    number of boxes; ``box_hit_rate`` = fraction of boxes holding at least one predicted blob point,
    ``box_precision`` = fraction of predicted blob points lying inside some box.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alcfcn_jax import sharding as shd
from alcfcn_jax.data.pipeline import split_taps
from alcfcn_jax.data.preprocess import denormalize
from alcfcn_jax.eval import instances, metrics, outlines
from alcfcn_jax.models.outputs import IGNORE, fish_probability, prediction, upsample_logits

GAME_LEVELS = (0, 1, 2, 3)
# Per-image numeric row layout used for pooling and the multi-host gather.
_N_GAME = 2 * len(GAME_LEVELS)


def _put_state(model: nnx.Module, mesh: jax.sharding.Mesh | None):
    graphdef, state = nnx.split(model)
    if mesh is not None:
        state = jax.device_put(state, shd.replicated(mesh))
    return graphdef, state


# Compiled functions per model structure: repeated validation passes during training reuse the
# compiled step instead of tracing it again. (GraphDefs compare by value but are not always
# hashable, e.g. when a layer keeps a list attribute, so this is a short list, not a dict.)
_JIT_CACHE: list[tuple[str, Any, Callable[..., Any]]] = []
_JIT_CACHE_SIZE = 8


def cached_jit(kind: str, graphdef: Any, build: Callable[[Any], Callable[..., Any]]):
    """``build(graphdef)`` (a jitted function of a model's state), built once per ``kind`` and
    model structure: a second model of the same structure reuses the compiled function."""
    for k, g, fn in _JIT_CACHE:
        if k == kind and g == graphdef:
            return fn
    fn = build(graphdef)
    _JIT_CACHE.append((kind, graphdef, fn))
    del _JIT_CACHE[:-_JIT_CACHE_SIZE]
    return fn


def _build_forward(graphdef, return_aux: bool):
    @jax.jit
    def forward(state, images):
        return nnx.merge(graphdef, state)(images, train=False, return_aux=return_aux)

    return forward


def _build_eval_step(graphdef, with_prob: bool = False):
    @jax.jit
    def eval_step(state, inputs, valid_px, labels):
        # ``inputs``: the images, or a {name: taps} dict from the frozen-trunk feature cache.
        model = nnx.merge(graphdef, state)
        size = valid_px.shape[1:3]
        if isinstance(inputs, dict):
            logits = model.from_taps(inputs, size, train=False)
        else:
            logits = model(inputs, train=False)
        logits = upsample_logits(logits, size)
        pred = prediction(logits)
        known = valid_px & (labels != IGNORE)
        # Clamp labels into {0,1} so the flat index stays in range; unknown pixels weigh zero.
        idx = pred * 2 + jnp.clip(labels, 0, 1)
        cf = jnp.sum(
            jax.nn.one_hot(idx, 4, dtype=jnp.int32) * known[..., None].astype(jnp.int32),
            axis=(1, 2),
        ).reshape(-1, 2, 2)
        if with_prob:
            return pred.astype(jnp.uint8), cf, fish_probability(logits)
        return pred.astype(jnp.uint8), cf

    return eval_step


def make_forward(
    model: nnx.Module, *, mesh: jax.sharding.Mesh | None = None, return_aux: bool = False
) -> Callable[..., Any]:
    """A jitted eval-mode forward pass ``fwd(images) -> logits`` (or ``(logits, aux)``).

    The model is split once; its state is replicated over ``mesh`` when one is given, and the
    returned function accepts numpy or (sharded) jax images of shape (B,H,W,3).
    """
    graphdef, state = _put_state(model, mesh)
    kind = f"forward/aux={bool(return_aux)}"
    fwd = cached_jit(kind, graphdef, lambda g: _build_forward(g, bool(return_aux)))
    return lambda images: fwd(state, images)


def _make_eval_step(model: nnx.Module, mesh: jax.sharding.Mesh | None, with_prob: bool = False):
    """Step: (images, valid-pixel mask, labels) -> (pred uint8 (B,H,W), cf (B,2,2)) and, with
    ``with_prob``, the fish probability (B,H,W) float32."""
    graphdef, state = _put_state(model, mesh)
    step = cached_jit(
        f"eval_step/prob={with_prob}", graphdef, lambda g: _build_eval_step(g, with_prob)
    )
    return lambda *args: step(state, *args)


def local_batch_multiple(mesh: jax.sharding.Mesh | None) -> int:
    """Rows a process's batch must be a multiple of so it splits evenly over its devices."""
    if mesh is None:
        return 1
    return max(1, mesh.devices.size // jax.process_count())


def pad_rows(arr: np.ndarray, n: int, fill) -> np.ndarray:
    """Appends ``n`` rows filled with ``fill`` along axis 0."""
    if n == 0:
        return arr
    extra = np.full((n,) + arr.shape[1:], fill, dtype=arr.dtype)
    return np.concatenate([arr, extra], axis=0)


def _prepare_batch(batch: Mapping[str, Any], multiple: int) -> dict[str, Any]:
    """Numeric arrays for the jitted step, padded to a multiple of the local device count.

    ``inputs`` is the (B,H,W,3) images, or ``{name: taps}`` for a batch of the feature cache
    (``taps/<name>`` entries, no image).
    """
    taps = {k: np.asarray(v, np.float32) for k, v in (split_taps(batch) or {}).items()}
    if taps:
        b = len(next(iter(taps.values())))
        h, w = np.asarray(batch["points"]).shape[1:3]
    else:
        images = np.asarray(batch["image"], np.float32)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"batch['image'] must be (B,H,W,3), got shape {images.shape}")
        b, h, w, _ = images.shape
    valid = np.asarray(batch.get("valid", np.ones((b,), bool)), bool).reshape(b)
    pad = batch.get("pad")
    valid_px = np.ones((b, h, w), bool) if pad is None else np.asarray(pad, bool)
    valid_px = valid_px & valid[:, None, None]
    labels = batch.get("mask")
    labels = (
        np.full((b, h, w), IGNORE, np.int32) if labels is None else np.asarray(labels, np.int32)
    )
    if labels.shape != (b, h, w):
        raise ValueError(f"batch['mask'] has shape {labels.shape}, expected {(b, h, w)}")
    n_extra = (-b) % multiple
    if taps:
        inputs: Any = {k: pad_rows(v, n_extra, 0.0) for k, v in taps.items()}
    else:
        inputs = pad_rows(images, n_extra, 0.0)
    return {
        "inputs": inputs,
        "valid_px": pad_rows(valid_px, n_extra, False),
        "labels": pad_rows(labels, n_extra, IGNORE),
        "n_real": b,
    }


def valid_extent(pad: np.ndarray | None, h: int, w: int) -> tuple[int, int]:
    """(height, width) of an image padded bottom/right, from its valid-pixel mask."""
    if pad is None:
        return h, w
    rows = np.nonzero(pad.any(axis=1))[0]
    cols = np.nonzero(pad.any(axis=0))[0]
    if rows.size == 0:
        return 0, 0
    return int(rows[-1]) + 1, int(cols[-1]) + 1


def box_centre_points(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H,W) int32 point map with a 1 at every box centre (x0,y0,x1,y1 pixel boxes)."""
    pts = np.zeros(shape, np.int32)
    for x0, y0, x1, y1 in np.asarray(boxes, np.float64).reshape(-1, 4):
        cy = min(max(int((y0 + y1) / 2.0), 0), shape[0] - 1)
        cx = min(max(int((x0 + x1) / 2.0), 0), shape[1] - 1)
        pts[cy, cx] += 1
    return pts


def _image_boxes(batch: Mapping[str, Any], i: int) -> np.ndarray:
    """The (K,4) boxes of image ``i`` of a batch, dropping padding rows (NaN or all < 0).

    Accepts a per-image list / object array or a padded (B,K,4) array, optionally with a
    ``num_boxes`` (B,) entry.
    """
    if "boxes" not in batch:
        raise KeyError(
            "boxes=True but the batch has no 'boxes' entry; box evaluation needs a box dataset"
        )
    raw = batch["boxes"][i]
    boxes = np.asarray(raw, np.float64).reshape(-1, 4)
    if "num_boxes" in batch:
        boxes = boxes[: int(np.asarray(batch["num_boxes"])[i])]
    keep = np.isfinite(boxes).all(axis=1) & ~(boxes < 0).all(axis=1)
    return boxes[keep]


def _box_stats(boxes: np.ndarray, pred_points: np.ndarray) -> tuple[int, int, int]:
    """(boxes hit by >= 1 predicted point, predicted points inside some box, predicted points)."""
    ys, xs = np.nonzero(pred_points)
    if len(boxes) == 0 or ys.size == 0:
        return 0, 0, int(ys.size)
    # A pixel (y, x) lies in a box when its centre (x+.5, y+.5) is inside [x0,x1] x [y0,y1].
    px, py = xs[None, :] + 0.5, ys[None, :] + 0.5
    x0, y0, x1, y1 = (boxes[:, k : k + 1] for k in range(4))
    inside = (px >= x0) & (px <= x1) & (py >= y0) & (py <= y1)
    return int(inside.any(axis=1).sum()), int(inside.any(axis=0).sum()), int(ys.size)


def _image_row(
    pred: np.ndarray, gt_points: np.ndarray, true_count: int
) -> tuple[int, np.ndarray, np.ndarray]:
    """Host metrics of one image: (predicted count, GAME values, predicted point map)."""
    pred_points = np.asarray(metrics.blobs_to_points(pred == 1))
    # The reference counts the pixels set by blobs2points (one per blob).
    pred_count = int(np.count_nonzero(pred_points))
    pp = (pred_points > 0).astype(np.int32)
    games = []
    for level in GAME_LEVELS:
        games.append(float(metrics.game(pp, gt_points, level, divide_by_4=False)))
    for level in GAME_LEVELS:
        games.append(float(metrics.game(pp, gt_points, level, divide_by_4=True)))
    del true_count
    return pred_count, np.asarray(games, np.float64), pp


def _summary(
    cf: np.ndarray,
    true_counts: np.ndarray,
    pred_counts: np.ndarray,
    games: np.ndarray,
    box: np.ndarray | None,
) -> dict[str, float]:
    """Pooled figures of a set of images (the whole split, or one habitat)."""
    n = len(true_counts)
    out: dict[str, float] = {"num_images": float(n)}
    out.update(metrics.iou_from_confusion(cf.sum(axis=0) if cf.ndim == 3 else cf))
    out = {k: float(v) for k, v in out.items()}
    err = np.abs(true_counts.astype(np.float64) - pred_counts)
    out["mae"] = float(err.mean()) if n else math.nan
    out["rmse"] = float(np.sqrt((err**2).mean())) if n else math.nan
    out["true_count_mean"] = float(true_counts.mean()) if n else math.nan
    out["pred_count_mean"] = float(pred_counts.mean()) if n else math.nan
    for j, level in enumerate(GAME_LEVELS):
        out[f"game_l{level}"] = float(games[:, j].mean()) if n else math.nan
        out[f"game_l{level}_ref"] = float(games[:, len(GAME_LEVELS) + j].mean()) if n else math.nan
    out["game"] = out["game_l3_ref"]
    if box is not None:
        n_boxes, hits, inside, n_pred = box.sum(axis=0)
        out["num_boxes"] = float(n_boxes)
        out["box_hit_rate"] = float(hits / n_boxes) if n_boxes else math.nan
        out["box_precision"] = float(inside / n_pred) if n_pred else math.nan
    return out


def per_image_iou(cf: np.ndarray) -> tuple[float, float]:
    """(mIoU over classes present, fish IoU) of one image's 2x2 confusion; NaN when undefined."""
    inter = np.diag(cf).astype(np.float64)
    union = cf.sum(0) + cf.sum(1) - inter
    present = union > 0
    miou = float((inter[present] / union[present]).mean()) if present.any() else math.nan
    fish = float(inter[1] / union[1]) if union[1] > 0 else math.nan
    return miou, fish


def evaluate(
    model: nnx.Module,
    batches: Iterable[Mapping[str, Any]],
    *,
    mesh: jax.sharding.Mesh | None = None,
    per_image: bool = False,
    boxes: bool = False,
    extents: bool = False,
    instance_fn: Callable[[np.ndarray, np.ndarray | None], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Evaluates ``model`` (eval mode) over an iterable of numpy batches.

    Args:
      model: an NNX segmentation model, ``model(images, train=False) -> (B,H,W,C)`` logits.
      batches: this process's batches (``alcfcn_jax.data.pipeline.eval_batches``): ``image``
        (B,H,W,3), ``mask`` (B,H,W) 0/1/255 (optional), ``points`` (B,H,W) (1 = fish),
        ``count`` (B,), ``habitat``, ``id``, optional ``valid`` (B,) and ``pad`` (B,H,W), and
        ``boxes`` for box datasets.
      mesh: a ``("data",)`` mesh; the batch is sharded over it and the model state replicated.
        ``None`` runs on the default device.
      per_image: also return ``per_image`` rows (id, habitat, counts, IoU, GAME).
      boxes: ground truth points / counts from box centres, plus box hit rate and precision.
      extents: with ``boxes``, also the instance-box and extent figures of
        ``eval.instances.extent_metrics`` (AP50, box coverage, lengths...), the instances made
        by ``instance_fn(prob (H,W), image (H,W,3) uint8 RGB or None) -> labels`` (default: the
        watershed blobs of ``eval.outlines``); the image is None for a batch of cached taps.

    Returns:
      A dict of plain floats (``miou``, ``iou_bg``, ``iou_fish``, ``mae``, ``rmse``, ``game``,
      ``game_l{0..3}``, ``game_l{0..3}_ref``, ``num_images``, box figures when ``boxes``,
      ``eval_seconds``, ``images_per_second``), ``confusion`` (2x2 nested list, cf[pred][true]),
      ``per_habitat`` ({habitat: dict of the same floats}) and, when asked, ``per_image`` (list of
      dicts). Every process returns the same split-wide values.
    """
    t0 = time.perf_counter()
    extents = bool(extents and boxes)
    step = _make_eval_step(model, mesh, with_prob=extents)
    multiple = local_batch_multiple(mesh)
    rows: dict[str, list] = collections.defaultdict(list)

    def dispatch(batch):
        prep = _prepare_batch(batch, multiple)
        args = (prep["inputs"], prep["valid_px"], prep["labels"])
        if mesh is not None:
            args = tuple(jax.tree.map(lambda a: shd.to_global({"x": a}, mesh)["x"], args))
        return batch, prep, step(*args)

    def collect(batch, prep, out):
        pred, cf, *prob = (shd.to_host(o, mesh) for o in out)
        n_real = prep["n_real"]
        valid = np.asarray(batch.get("valid", np.ones((n_real,), bool)), bool).reshape(n_real)
        pad = batch.get("pad")
        ids = np.asarray(batch.get("id", [str(i) for i in range(n_real)]))
        habitats = np.asarray(batch.get("habitat", [""] * n_real))
        counts = np.asarray(batch.get("count", np.full((n_real,), -1)))
        points = batch.get("points")
        for i in range(n_real):
            if not valid[i]:
                continue
            h, w = valid_extent(None if pad is None else np.asarray(pad[i], bool), *pred.shape[1:])
            p = pred[i, :h, :w]
            if boxes:
                bx = _image_boxes(batch, i)
                gt_points = box_centre_points(bx, (h, w))
                true_count = len(bx)
            else:
                if points is None:
                    raise KeyError("batch has no 'points' entry; GAME needs ground-truth points")
                gt_points = (np.asarray(points[i])[:h, :w] == 1).astype(np.int32)
                true_count = int(counts[i]) if counts[i] >= 0 else int(gt_points.sum())
            pred_count, games, pp = _image_row(p, gt_points, true_count)
            rows["cf"].append(cf[i])
            rows["true"].append(true_count)
            rows["pred"].append(pred_count)
            rows["games"].append(games)
            if boxes:
                hits, inside, n_pred = _box_stats(bx, pp)
                rows["box"].append([len(bx), hits, inside, n_pred])
            if extents:
                fish = prob[0][i, :h, :w]
                if pad is not None:
                    fish = np.where(np.asarray(pad[i], bool)[:h, :w], fish, 0.0)
                image = batch.get("image")
                rgb = None if image is None else denormalize(np.asarray(image[i])[:h, :w])
                labels = (instance_fn or outlines.instance_fn(outlines.InstanceSettings()))(
                    fish, rgb
                )
                rows["extent"].append(instances.image_record(labels, fish, bx))
            rows["id"].append(str(ids[i]))
            rows["habitat"].append(str(habitats[i]))

    pending = None
    for batch in batches:
        current = dispatch(batch)  # async: the device works while the host labels the last batch
        if pending is not None:
            collect(*pending)
        pending = current
    if pending is not None:
        collect(*pending)

    numeric = {
        "cf": np.asarray(rows["cf"], np.int64).reshape(-1, 2, 2),
        "true": np.asarray(rows["true"], np.int64).reshape(-1),
        "pred": np.asarray(rows["pred"], np.int64).reshape(-1),
        "games": np.asarray(rows["games"], np.float64).reshape(-1, _N_GAME),
    }
    if boxes:
        numeric["box"] = np.asarray(rows["box"], np.int64).reshape(-1, 4)
    # Every process's rows, exactly (multi-host; float64 stays float64), dealt back into the
    # source's order (each process read source[process_index::process_count]): the figures and
    # the per-image rows are those of a single process, row for row.
    numeric = shd.gather_arrays(numeric, interleave=True)
    strings = {k: shd.gather_list(rows[k], interleave=True) for k in ("id", "habitat")}
    records = shd.gather_list(rows["extent"], interleave=True) if extents else []
    if len(strings["id"]) == 0:
        raise ValueError("evaluation got no images: the split is empty or every row was padding")

    def summary(sel):
        return _summary(
            numeric["cf"][sel],
            numeric["true"][sel],
            numeric["pred"][sel],
            numeric["games"][sel],
            numeric["box"][sel] if boxes else None,
        )

    everything = np.ones(len(strings["id"]), bool)
    result: dict[str, Any] = summary(everything)
    result["confusion"] = numeric["cf"].sum(axis=0).tolist()
    habitats = np.asarray(strings["habitat"])
    result["per_habitat"] = {h: summary(habitats == h) for h in sorted(set(strings["habitat"]))}
    if extents:
        result.update(instances.extent_metrics(records))
    if per_image:
        result["per_image"] = []
        for j, image_id in enumerate(strings["id"]):
            miou, iou_fish = per_image_iou(numeric["cf"][j])
            row = {
                "id": image_id,
                "habitat": strings["habitat"][j],
                "true_count": int(numeric["true"][j]),
                "pred_count": int(numeric["pred"][j]),
                "abs_error": int(abs(numeric["true"][j] - numeric["pred"][j])),
                "miou": miou,
                "iou_fish": iou_fish,
                "game_l3": float(numeric["games"][j, 3]),
            }
            if boxes:
                row["num_boxes"], row["box_hits"] = (int(v) for v in numeric["box"][j, :2])
            if extents:
                row.update(instances.image_row(records[j]))
            result["per_image"].append(row)
    seconds = time.perf_counter() - t0
    result["eval_seconds"] = seconds
    result["images_per_second"] = len(strings["id"]) / seconds if seconds > 0 else math.nan
    return result
