"""Fish instances and their outlines: the one definition used by evaluate, predict and instances.

A model's fish probability becomes instances in two steps, set by ``config.instances``
(:data:`INSTANCE_DEFAULTS`; :class:`InstanceSettings`):

1. **Cut** (``method``): blobs of ``p(fish) > threshold`` split into fish by the distance-transform
   watershed (``watershed``, ``eval.measure.instance_labels``), or assigned by the WISE embedding
   branch (``embedding``, models trained with one; ``apps.instances`` runs it).
2. **Outline** (``outline``): ``blobs`` keeps the cut as it is. The LCFCN loss trains one blob per
   fish around its middle, about 20 pixels across whatever the fish's size (on the real
   validation frames a 60-pixel fish gets a box of 0.4 its area, a 10-pixel fish one of 1.8
   times): ``grabcut`` grows (or trims) each instance to the edges of the fish in the image with
   GrabCut (Rother et al. 2004, OpenCV's implementation): in a window around the instance (its box
   grown by ``grabcut_margin`` times its height and width, plus 4 pixels, on each side),
   colour models (Gaussian mixtures) of fish and water are fitted and the pixels labelled by a graph
   cut, ``grabcut_iters`` rounds. The instance's pixels start as probable fish and the instance
   shrunk by one pixel as certain fish (so an instance can grow any amount but lose only its
   outer ring: blobs larger than a tiny fish stay too large); the window's border and the other
   instances are certain water; the rest is probable water. The new instance is the fish region that touches the old
   one; instances are grown in order and a pixel already taken stays with the first (OpenCV's
   random generator is seeded per instance, so the outlines do not depend on what ran before).
   When GrabCut
   cannot fit its models (no water or no fish pixel in the window) the instance stays as cut.

``instance_fn`` is used on maps at the model's input size (after the letterbox crop and resize
that training used), the image given as uint8 RGB.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import scipy.ndimage as ndi

from alcfcn_jax.eval import measure

METHODS = ("watershed", "embedding")
OUTLINES = ("blobs", "grabcut", "transport")
SEEDS = ("activation", "refined")
PSEUDO_MASKS = ("argmax", "click_instances", "point_blots")

# config.instances: what each key means is in InstanceSettings.
INSTANCE_DEFAULTS: dict[str, Any] = {
    "method": "watershed",
    "outline": "blobs",
    "threshold": 0.5,
    "split": True,
    "split_h": 2.0,
    "min_area": 1,
    "seeds": "activation",
    "grabcut_margin": 1.0,
    "grabcut_iters": 4,
    "pseudo_masks": "argmax",
}


@dataclasses.dataclass(frozen=True)
class InstanceSettings:
    """How fish probability becomes fish instances (module docstring).

    Attributes:
      method: ``watershed`` or ``embedding`` (the cut).
      outline: ``blobs`` (as cut), ``grabcut`` (grown to the fish's edges in the image) or
        ``transport`` (pixels shared out by optimal transport with area budgets,
        ``eval/transport.py``; measured, not kept).
      threshold: fish where ``p(fish) > threshold``.
      split: split touching fish (watershed); ``split_h``: least neck depth (pixels) for a split.
      min_area: drop instances with fewer pixels (after the cut).
      seeds: the embedding's object locations (``activation`` map or ``refined`` map).
      grabcut_margin: GrabCut window = instance box grown by this times its size on each side.
      grabcut_iters: GrabCut rounds.
      pseudo_masks: what the pseudo-mask writer writes for a training image: ``argmax`` (the
        model's fish pixels, the reference), ``click_instances`` (:func:`click_instances`, then
        the outline step: one outlined instance per click) or ``point_blots`` (point blots and
        expanding distance fields, ``eval/point_blots.py``, then the outline step; measured, not
        kept).
    """

    method: str = "watershed"
    outline: str = "blobs"
    threshold: float = 0.5
    split: bool = True
    split_h: float = 2.0
    min_area: int = 1
    seeds: str = "activation"
    grabcut_margin: float = 1.0
    grabcut_iters: int = 4
    pseudo_masks: str = "argmax"

    def __post_init__(self):
        for name, allowed in (
            ("method", METHODS),
            ("outline", OUTLINES),
            ("seeds", SEEDS),
            ("pseudo_masks", PSEUDO_MASKS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"instances.{name} must be one of {allowed}, got {getattr(self, name)!r}"
                )
        if not 0.0 < float(self.threshold) < 1.0:
            raise ValueError(f"instances.threshold must be in (0, 1), got {self.threshold}")
        if self.grabcut_margin < 0 or self.grabcut_iters < 1 or self.min_area < 1:
            raise ValueError(
                "instances.grabcut_margin must be >= 0, grabcut_iters >= 1 and min_area >= 1, "
                f"got {self.grabcut_margin}, {self.grabcut_iters}, {self.min_area}"
            )

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | Any | None) -> InstanceSettings:
        """From ``config.instances`` (a ConfigDict or mapping; missing keys: the defaults)."""
        if section is None:
            return cls()
        values = dict(section.items()) if hasattr(section, "items") else dict(section)
        unknown = set(values) - set(INSTANCE_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown config.instances key(s): {sorted(unknown)}")
        return cls(**{**INSTANCE_DEFAULTS, **values})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def cut(self, prob: np.ndarray) -> np.ndarray:
        """The watershed cut of ``prob`` with these settings (``eval.measure.instance_labels``)."""
        return measure.instance_labels(
            prob,
            threshold=self.threshold,
            split=self.split,
            split_h=self.split_h,
            min_area=self.min_area,
        )


def instance_window(
    box: tuple[slice, slice], shape: tuple[int, ...], margin: float
) -> tuple[slice, slice]:
    """An instance's window: its bounding ``box`` (``ndi.find_objects`` slices) grown by
    ``margin`` times its height and width, plus 4 pixels, on each side, within ``shape``."""
    h, w = box[0].stop - box[0].start, box[1].stop - box[1].start
    my, mx = int(margin * h) + 4, int(margin * w) + 4
    return (
        slice(max(0, box[0].start - my), min(shape[0], box[0].stop + my)),
        slice(max(0, box[1].start - mx), min(shape[1], box[1].stop + mx)),
    )


def grabcut_outlines(
    image: np.ndarray, labels: np.ndarray, *, margin: float = 1.0, iters: int = 4
) -> np.ndarray:
    """Each instance of ``labels`` grown to the fish's edges in ``image`` (module docstring).

    Args:
      image: (H,W,3) uint8 RGB.
      labels: (H,W) int instance labels (0 = water).
      margin: window = instance box grown by ``margin`` x its height / width (+4 px) per side.
      iters: GrabCut rounds.

    Returns:
      (H,W) int32 labels, instances 1..n in raster order of their first pixel.
    """
    import cv2

    labels = np.asarray(labels).astype(np.int32)
    image = np.asarray(image)
    if image.shape[:2] != labels.shape or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"image (H,W,3) and labels (H,W) needed, got {image.shape}, {labels.shape}"
        )
    out = np.zeros_like(labels)
    if labels.max() == 0:
        return out
    bgr = np.ascontiguousarray(image[..., ::-1].astype(np.uint8))
    for k, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        rows, cols = instance_window(sl, labels.shape, margin)
        y0, y1, x0, x1 = rows.start, rows.stop, cols.start, cols.stop
        window = labels[y0:y1, x0:x1]
        mine = window == k
        mask = np.full(window.shape, cv2.GC_PR_BGD, np.uint8)
        mask[mine] = cv2.GC_PR_FGD
        mask[ndi.binary_erosion(mine)] = cv2.GC_FGD
        mask[(window > 0) & ~mine] = cv2.GC_BGD
        mask[[0, -1], :] = cv2.GC_BGD
        mask[:, [0, -1]] = cv2.GC_BGD
        fish = mine
        cv2.setRNGSeed(k)  # GrabCut's k-means start: the same outline on every run
        try:
            cv2.grabCut(
                bgr[y0:y1, x0:x1],
                mask,
                None,
                np.zeros((1, 65)),
                np.zeros((1, 65)),
                int(iters),
                cv2.GC_INIT_WITH_MASK,
            )
            grown = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
            parts, _ = ndi.label(grown, structure=np.ones((3, 3), bool))
            touching = np.unique(parts[mine & grown])
            touching = touching[touching > 0]
            if touching.size:
                fish = np.isin(parts, touching)
        except cv2.error:
            pass  # models could not be fitted (one class empty): the instance stays as cut
        free = out[y0:y1, x0:x1] == 0
        out[y0:y1, x0:x1][fish & free] = k
    return measure.relabel_raster(out)


def click_instances(
    prob: np.ndarray, points: np.ndarray, settings: InstanceSettings, *, seed_radius: int = 2
) -> np.ndarray:
    """Instances that respect the clicks of a training image: one per click, none without one.

    The cut of ``settings`` (watershed blobs of ``prob > threshold``), then: an instance holding
    no click is dropped (a false positive by the labels); one holding several clicks is split
    between them by a watershed on ``-prob`` from the clicks; a click outside every instance
    gets a seed of its own, the (2r+1)^2 square around it (pixels still free), for the outline
    step to grow.

    Args:
      prob: (H,W) fish probability.
      points: (H,W) click map (1 = a click).
      settings: the cut's threshold, split and minimum area.
      seed_radius: ``r`` above.

    Returns:
      (H,W) int32 labels, one instance per click, numbered in raster order.
    """
    import skimage.segmentation

    prob = np.asarray(prob, np.float64)
    cut = settings.cut(prob)
    ys, xs = np.nonzero(np.asarray(points) == 1)
    owner = cut[ys, xs]
    out = np.zeros_like(cut)
    next_id = 1
    for k, sl in enumerate(ndi.find_objects(cut), start=1):
        clicks = np.nonzero(owner == k)[0]
        if sl is None or clicks.size == 0:
            continue
        region = cut[sl] == k
        if clicks.size == 1:
            out[sl][region] = next_id
        else:
            markers = np.zeros(region.shape, np.int32)
            markers[ys[clicks] - sl[0].start, xs[clicks] - sl[1].start] = np.arange(
                1, clicks.size + 1
            )
            split = skimage.segmentation.watershed(-prob[sl], markers, mask=region, connectivity=2)
            out[sl][region] = split[region] + next_id - 1
        next_id += clicks.size
    for c in np.nonzero(owner == 0)[0]:
        r0, c0 = max(0, ys[c] - seed_radius), max(0, xs[c] - seed_radius)
        window = out[r0 : ys[c] + seed_radius + 1, c0 : xs[c] + seed_radius + 1]
        window[window == 0] = next_id
        next_id += 1
    return measure.relabel_raster(out)


def outline(
    labels: np.ndarray,
    image: np.ndarray | None,
    settings: InstanceSettings,
    prob: np.ndarray | None = None,
) -> np.ndarray:
    """Step 2 of the module docstring on cut ``labels`` (``image``: (H,W,3) uint8 RGB, needed by
    ``grabcut`` and ``transport``; ``prob``: the (H,W) fish probability, needed by
    ``transport``)."""
    if settings.outline == "blobs":
        return labels
    if image is None:
        raise ValueError(f"instances.outline={settings.outline!r} needs the image")
    if settings.outline == "transport":
        from alcfcn_jax.eval.transport import transport_outlines

        if prob is None:
            raise ValueError("instances.outline='transport' needs the fish probability")
        return transport_outlines(image, labels, prob, margin=settings.grabcut_margin)
    return grabcut_outlines(
        image, labels, margin=settings.grabcut_margin, iters=settings.grabcut_iters
    )


def pseudo_mask(
    prob: np.ndarray, image: np.ndarray, points: np.ndarray, settings: InstanceSettings
) -> np.ndarray:
    """(H,W) 0/1 pseudo mask of a training image for ``pseudo_masks='click_instances'`` (the
    outlined :func:`click_instances`) or ``'point_blots'`` (the outlined
    ``eval.point_blots.point_blots``); ``image``: (H,W,3) uint8 RGB."""
    if settings.pseudo_masks == "point_blots":
        from alcfcn_jax.eval.point_blots import point_blots

        labels = point_blots(image, prob, points, threshold=settings.threshold)
    else:
        labels = click_instances(prob, points, settings)
    return (outline(labels, image, settings, prob) > 0).astype(np.uint8)


def instance_fn(settings: InstanceSettings) -> Callable[..., np.ndarray]:
    """``fn(prob (H,W), image (H,W,3) uint8 RGB or None) -> labels (H,W) int32`` for the
    ``watershed`` cut followed by the outline step (the embedding cut needs the model's
    embedding: ``apps.instances.make_instance_fn``)."""
    if settings.method != "watershed":
        raise ValueError(
            f"instances.method={settings.method!r} needs the model's embedding; "
            "use apps.instances.make_instance_fn"
        )

    def fn(prob: np.ndarray, image: np.ndarray | None = None) -> np.ndarray:
        return outline(settings.cut(prob), image, settings, prob)

    return fn
