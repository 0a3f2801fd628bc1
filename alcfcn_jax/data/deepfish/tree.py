"""Reading a DeepFish tree in the official layout (reference spec 5.1).

```
<root>/Segmentation/{train,val,test}.csv   columns ID, labels
<root>/Segmentation/images/<ID>.jpg        RGB frame
<root>/Segmentation/masks/<ID>.png         fish = 255, background = 0
<root>/Localization/{train,val,test}.csv   columns ID, labels, counts
<root>/Localization/images/<ID>.jpg
<root>/Localization/masks/<ID>.png         one non-zero pixel per clicked fish
```
IDs look like ``valid/7117_Lutjanus_argentimaculatus_adult_2_f000060`` or ``empty/<name>``.

This module turns one ID into a *record*: the preprocessed example in its stored form (uint8
image resized to the configured short side, 0/1 mask, (K, 2) fish points, count, habitat, id).
The TFDS builder stores records; :func:`record_to_example` turns a record into the contract's
example dict. Both the TFDS path and the direct (raw) reader share these functions, so they
produce identical examples.
"""

from __future__ import annotations

import csv
import pathlib
from collections.abc import Iterable
from typing import Any

import numpy as np

from alcfcn_jax.data import preprocess as pp
from alcfcn_jax.data.errors import DataError

SPLITS = ("train", "val", "test")
SUBSETS = {"fish_seg": "Segmentation", "fish_loc": "Localization"}
SEG_COLUMNS = ("ID", "labels")
LOC_COLUMNS = ("ID", "labels", "counts")


def read_csv(path: pathlib.Path, required: Iterable[str]) -> list[dict[str, str]]:
    """Reads a split CSV and checks its header.

    Raises:
      DataError: the file is missing, empty, lacks a required column, or has an empty ID.
    """
    required = tuple(required)
    if not path.is_file():
        raise DataError(f"{path}: split CSV not found (expected columns {', '.join(required)})")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(
                f"{path}: missing column(s) {missing}; expected columns {list(required)}, "
                f"found {header}"
            )
        rows = []
        for i, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            if not row.get("ID"):
                raise DataError(f"{path}, line {i}: empty ID")
            rows.append(row)
    return rows


class DeepFishTree:
    """A DeepFish tree on disk: split lists, overlap removal, and per-ID records.

    Args:
      root: the folder holding ``Segmentation/`` and ``Localization/``.

    Raises:
      DataError: ``root`` does not exist.
    """

    def __init__(self, root: str | pathlib.Path) -> None:
        self.root = pathlib.Path(root).expanduser()
        if not self.root.is_dir():
            raise DataError(
                f"{self.root}: DeepFish folder not found; expected a directory holding "
                "Segmentation/{train,val,test}.csv, Segmentation/images, Segmentation/masks and "
                "Localization/{train,val,test}.csv, Localization/images, Localization/masks"
            )

    def _subset_dir(self, subset: str) -> pathlib.Path:
        d = self.root / SUBSETS[subset]
        if not d.is_dir():
            raise DataError(f"{d}: folder not found (DeepFish layout, reference spec 5.1)")
        return d

    def seg_ids(self, split: str) -> list[str]:
        """IDs of a FishSeg split, in CSV order."""
        path = self._subset_dir("fish_seg") / f"{split}.csv"
        return [r["ID"] for r in read_csv(path, SEG_COLUMNS)]

    def loc_rows(self, split: str) -> list[tuple[str, int]]:
        """(ID, count) of a FishLoc split, in CSV order.

        Raises:
          DataError: a count that is not a non-negative integer.
        """
        path = self._subset_dir("fish_loc") / f"{split}.csv"
        out = []
        for i, r in enumerate(read_csv(path, LOC_COLUMNS), start=2):
            try:
                c = int(float(r["counts"]))
            except ValueError:
                c = -1
            if c < 0:
                raise DataError(
                    f"{path}, line {i}: counts must be an integer >= 0, got {r['counts']!r}"
                )
            out.append((r["ID"], c))
        return out

    def eval_ids(self) -> set[str]:
        """All FishSeg val and test IDs (the images every run is evaluated on)."""
        return set(self.seg_ids("val")) | set(self.seg_ids("test"))

    def loc_train_rows(self) -> list[tuple[str, int]]:
        """FishLoc training rows with every FishSeg val/test ID removed (reference spec 5.3)."""
        held_out = self.eval_ids()
        rows = [r for r in self.loc_rows("train") if r[0] not in held_out]
        check_no_overlap((r[0] for r in rows), held_out, what="FishLoc train")
        return rows

    def ids(self, subset: str, split: str) -> list[tuple[str, int | None]]:
        """(ID, CSV count or None) of a subset's split, after overlap removal for FishLoc train."""
        if split not in SPLITS:
            raise DataError(f"unknown DeepFish split {split!r}; expected one of {SPLITS}")
        if subset == "fish_seg":
            return [(i, None) for i in self.seg_ids(split)]
        if subset == "fish_loc":
            return self.loc_train_rows() if split == "train" else self.loc_rows(split)
        raise DataError(f"unknown DeepFish config {subset!r}; expected one of {tuple(SUBSETS)}")

    def record(
        self,
        subset: str,
        image_id: str,
        *,
        count: int | None = None,
        short_side: int | None = 256,
        placement: str = "centroid",
    ) -> dict[str, Any]:
        """Loads and preprocesses one ID into a stored-form record.

        Args:
          subset: ``"fish_seg"`` or ``"fish_loc"``.
          image_id: the CSV ID.
          count: the CSV count (FishLoc), checked against the point map.
          short_side: resize target of the short side, None keeps the size.
          placement: point placement for FishSeg masks (see ``preprocess.mask_points``).

        Returns:
          dict with ``image`` uint8 (h,w,3), ``mask`` uint8 (h,w) 0/1 (FishSeg only), ``points``
          int32 (K,2) (y,x), ``count`` int, ``habitat`` str, ``id`` str.

        Raises:
          DataError: missing/undecodable files, mask or point map of another size than its image,
            mask values other than 0/255, or a point count that disagrees with the CSV.
        """
        base = self._subset_dir(subset)
        img_path = base / "images" / f"{image_id}.jpg"
        lab_path = base / "masks" / f"{image_id}.png"
        img = pp.load_image(img_path)
        full = (img.height, img.width)
        lab = pp.load_gray(lab_path, "mask" if subset == "fish_seg" else "point map")
        if lab.shape != full:
            raise DataError(
                f"{lab_path}: size {lab.shape[1]}x{lab.shape[0]} (WxH) differs from its image "
                f"{img_path} ({full[1]}x{full[0]})"
            )
        img = pp.resize_image(img, short_side)
        size = (img.height, img.width)
        rec: dict[str, Any] = {
            "image": np.asarray(img, np.uint8),
            "habitat": pp.habitat_of(image_id),
            "id": image_id,
        }
        if subset == "fish_seg":
            mask = pp.binarize_mask(pp.resize_nearest(lab, size), str(lab_path))
            pts = pp.mask_points(mask, placement)
            rec.update(mask=mask, points=pts, count=len(np.unique(pts, axis=0)))
        else:
            ys, xs = np.nonzero(lab)
            if count is not None and len(ys) != count:
                raise DataError(
                    f"{lab_path}: point map has {len(ys)} non-zero pixel(s) but the CSV count "
                    f"for {image_id} is {count}"
                )
            pts = pp.place_points(
                size, pp.scale_points(np.stack([ys, xs], 1), full, size), str(lab_path)
            )
            rec.update(points=pts, count=len(ys))
        return rec


def check_no_overlap(
    train_ids: Iterable[str], eval_ids: Iterable[str], what: str = "train"
) -> None:
    """Proves no evaluation image is trained on.

    Raises:
      DataError: an ID is in both sets (the message lists up to five).
    """
    both = sorted(set(train_ids) & set(eval_ids))
    if both:
        raise DataError(
            f"{what} contains {len(both)} evaluation image(s) (FishSeg val/test), e.g. {both[:5]}"
        )


def record_to_example(rec: dict[str, Any], *, bg_points: int = -1) -> dict[str, Any]:
    """Stored-form record -> the contract's example dict (ImageNet-normalised image).

    Args:
      rec: a record from :meth:`DeepFishTree.record` or the TFDS builder (``mask`` may be absent
        or (h,w,1); ``habitat``/``id`` may be bytes).
      bg_points: background points added to mask-derived points: -1 = as many as fish points
        (the reference's FishSeg training), 0 = none, n > 0 = n. Ignored without a mask.
    """
    image = np.asarray(rec["image"])
    h, w = image.shape[:2]
    fish = np.asarray(rec["points"], np.int32).reshape(-1, 2)
    mask = rec.get("mask")
    if mask is not None:
        mask = np.asarray(mask).reshape(h, w).astype(np.int32)
        n_bg = len(fish) if bg_points < 0 else bg_points
        bg = pp.background_points(mask, n_bg)
    else:
        mask = np.full((h, w), pp.IGNORE, np.int32)
        bg = None
    return {
        "image": pp.normalize(image),
        "points": pp.point_map((h, w), fish, bg),
        "mask": mask,
        "count": np.int32(rec["count"]),
        "habitat": _text(rec["habitat"]),
        "id": _text(rec["id"]),
    }


def _text(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.ndarray):
        return _text(v.item())
    return str(v)
