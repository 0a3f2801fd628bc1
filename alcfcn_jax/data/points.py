"""Bring your own data: a folder of images plus one CSV of clicks.

Layout: ``<data_dir>/images/<name>.<ext>`` (``preprocess.IMAGE_EXTENSIONS``) and ``<data_dir>/points.csv`` (or
``data_cfg.points_csv``) with header ``image,x,y``: one row per clicked fish, ``image`` the file
name inside ``images/``, ``x``/``y`` pixel coordinates in the image as stored (x to the right,
y down; fractional values allowed). An image without fish gets one row with empty ``x`` and
``y`` (``frame7.jpg,,``). Every image must be listed (an unlisted one raises rather than being
silently taken as empty). An optional ``habitat`` column groups per-habitat results (default:
the name up to the first ``_``). Splits: the fixed hash rule of :mod:`alcfcn_jax.data.boxes`.

Duplicate clicks: a row repeating an earlier row's image, x and y is dropped with one warning
naming the CSV lines (the count is the number of distinct clicks); distinct clicks that fall on
one pixel after resizing keep a pixel each (``preprocess.place_points``), so ``count`` always
equals the number of point pixels.
"""

from __future__ import annotations

import csv
import math
import pathlib
from collections import defaultdict
from typing import Any

import numpy as np

from alcfcn_jax.data import preprocess as pp
from alcfcn_jax.data.boxes import in_val, list_images
from alcfcn_jax.data.errors import BadExamples, DataError, logger
from alcfcn_jax.data.source import MappedSource


def read_clicks(path: pathlib.Path) -> tuple[dict[str, list[tuple[float, float]]], dict[str, str]]:
    """Reads the clicks CSV: ({image: [(x, y), ...]}, {image: habitat}).

    Raises:
      DataError: missing file, missing columns, or a non-numeric / half-empty coordinate; the
        message names the file and line.
    """
    if not path.is_file():
        raise DataError(f"{path}: clicks CSV not found (expected header 'image,x,y')")
    clicks: dict[str, list[tuple[float, float]]] = defaultdict(list)
    first_line: dict[tuple[str, float, float], int] = {}
    duplicates: list[str] = []
    habitats: dict[str, str] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in ("image", "x", "y") if c not in header]
        if missing:
            raise DataError(
                f"{path}: missing column(s) {missing}; expected header 'image,x,y' "
                f"(optional 'habitat'), found {header}"
            )
        for n, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            name = row["image"]
            if not name:
                raise DataError(f"{path}, line {n}: empty image name")
            clicks.setdefault(name, [])
            if row.get("habitat"):
                habitats[name] = row["habitat"]
            if row["x"] == "" and row["y"] == "":
                continue  # an image declared fish-free
            try:
                x, y = float(row["x"]), float(row["y"])
            except ValueError:
                x = y = math.nan
            if not (math.isfinite(x) and math.isfinite(y)):
                raise DataError(
                    f"{path}, line {n}: x and y must both be numbers (or both empty for an image "
                    f"without fish), got x={row['x']!r}, y={row['y']!r}"
                )
            if (name, x, y) in first_line:
                duplicates.append(f"line {n} = line {first_line[name, x, y]} ({name})")
                continue
            first_line[name, x, y] = n
            clicks[name].append((x, y))
    if duplicates:
        logger.warning(
            "%s: dropped %d duplicate click row(s) (same image, x and y as an earlier row; a "
            "fish is counted once): %s",
            path,
            len(duplicates),
            "; ".join(duplicates[:5]) + (" ..." if len(duplicates) > 5 else ""),
        )
    return dict(clicks), habitats


def _check_clicks(xy: np.ndarray, W: int, H: int, img_path, csv_path) -> None:
    if len(xy):
        out_of = (xy[:, 0] < 0) | (xy[:, 0] >= W) | (xy[:, 1] < 0) | (xy[:, 1] >= H)
        if out_of.any():
            x, y = xy[np.argmax(out_of)]
            raise DataError(
                f"{csv_path}: click ({x}, {y}) for {img_path.name} is outside the image "
                f"(width {W}, height {H}; expected 0 <= x < {W}, 0 <= y < {H})"
            )


def check_example(item, short_side: int | None) -> tuple[int, int]:
    """Cheap check of one item (image header and data, clicks in bounds); model-input (h, w)."""
    img_path, xy, _, csv_path = item
    H, W = pp.check_image(img_path)
    _check_clicks(xy, W, H, img_path, csv_path)
    return pp.resized_size(H, W, short_side)


def load_example(
    img_path: pathlib.Path, xy: np.ndarray, habitat: str, csv_path: pathlib.Path, *, short_side
) -> dict[str, Any]:
    """One example from an image and its (x, y) clicks.

    Raises:
      DataError: undecodable image, or a click outside it (names the CSV and the image).
    """
    img = pp.load_image(img_path)
    H, W = img.height, img.width
    _check_clicks(xy, W, H, img_path, csv_path)
    img = pp.resize_image(img, short_side)
    h, w = img.height, img.width
    ys = np.minimum((xy[:, 1] * h / H).astype(np.int64), h - 1) if len(xy) else np.zeros(0, int)
    xs = np.minimum((xy[:, 0] * w / W).astype(np.int64), w - 1) if len(xy) else np.zeros(0, int)
    fish = pp.place_points((h, w), np.stack([ys, xs], 1), f"{csv_path}: {img_path.name}")
    return {
        "image": pp.normalize(np.asarray(img, np.uint8)),
        "points": pp.point_map((h, w), fish),
        "mask": np.full((h, w), pp.IGNORE, np.int32),
        "count": np.int32(len(xy)),
        "habitat": habitat,
        "id": img_path.stem,
    }


def click_source(
    root: str | pathlib.Path,
    split: str,
    *,
    points_csv: str,
    val_percent: float,
    skip_bad_examples: bool,
    short_side: int | None,
) -> MappedSource:
    """A source over an images folder and its clicks CSV (see module doc).

    Raises:
      DataError: missing folder/CSV, CSV rows naming absent images, images absent from the CSV,
        bad coordinates; with ``skip_bad_examples`` per-image problems are warned about and
        counted instead (images are then validated up front).
    """
    root = pathlib.Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: folder not found (expected images/ and points.csv inside)")
    csv_path = pathlib.Path(points_csv or root / "points.csv")
    clicks, habitats = read_clicks(csv_path)
    files = list_images(root)
    names = {p.name for p in files}
    absent = sorted(set(clicks) - names)
    if absent:
        raise DataError(f"{csv_path}: rows name images not in {root / 'images'}: {absent[:5]}")
    vp = float(val_percent)
    if split == "train":
        files = [p for p in files if not in_val(p.stem, vp)]
    elif split == "val":
        files = [p for p in files if in_val(p.stem, vp)]
    elif split != "all":
        raise DataError(f"points dataset splits are 'train', 'val' and 'all', got {split!r}")
    short = short_side
    skip = bool(skip_bad_examples)
    bad = BadExamples(skip, f"points {csv_path}")
    items = []
    for p in files:
        try:
            if p.name not in clicks:
                raise DataError(
                    f"{csv_path}: image {p.name} has no row; add '{p.name},,' if it has no fish"
                )
            xy = np.asarray(clicks[p.name], np.float64).reshape(-1, 2)
            item = (p, xy, habitats.get(p.name, pp.habitat_of(p.stem)), csv_path)
            if skip:
                load_example(*item, short_side=short)
        except DataError as e:
            bad.handle(e)
            continue
        items.append(item)
    bad.summarize()
    return MappedSource(
        items,
        lambda it: load_example(*it, short_side=short),
        f"points[{split}] {root}",
        check=lambda it: check_example(it, short),
        example_id=lambda it: it[0].stem,
    )
