"""Folders of images with YOLO box files (e.g. the DeepFish frames Roboflow export).

Layout: ``<dir>/images/<stem>.<ext>`` (any of ``preprocess.IMAGE_EXTENSIONS``) and ``<dir>/labels/<stem>.txt`` with one line
``class cx cy w h`` per fish, normalised to [0, 1] by the stored image size; an empty file is an
image without fish. If ``<dir>`` has ``train/`` and ``val/`` (or ``valid/``) subfolders in that
layout they are the splits; otherwise images go to "val" when a stable hash of their stem falls
below ``val_percent`` (the fixed rule, the same on every machine), and "all" is every image.

Each example: point = the box centre (value 1; every other pixel 255 = unlabelled), count =
number of boxes, ``boxes`` (K, 4) float32 (x0, y0, x1, y1) in pixels of the returned image,
mask unknown (255). Letterboxed frames (black bars above/below or left/right) have their bars
detected per image and cropped off (``letterbox="crop"``) or kept but marked invalid in the
example's ``pad`` mask (``letterbox="mask"``), so the model does not learn from black borders.
"""

from __future__ import annotations

import hashlib
import pathlib
import re
from typing import Any

import numpy as np

from alcfcn_jax.data import preprocess as pp
from alcfcn_jax.data.errors import BadExamples, DataError, logger
from alcfcn_jax.data.source import MappedSource

# Re-exported: the letterbox detector lives with the rest of the preprocessing.
detect_letterbox = pp.detect_letterbox

# The project's one list of image extensions (``data.preprocess.IMAGE_EXTENSIONS``).
IMAGE_SUFFIXES = pp.IMAGE_EXTENSIONS
_ROBOFLOW = re.compile(r"_(jpg|jpeg|png)\.rf\.[0-9a-f]+$")


def frame_id(stem: str) -> str:
    """The original frame name of a Roboflow export stem (drops ``_jpg.rf.<hash>``)."""
    return _ROBOFLOW.sub("", stem)


def in_val(stem: str, val_percent: float) -> bool:
    """The fixed split rule: md5 of the frame name, mod 100, below ``val_percent``."""
    h = int(hashlib.md5(frame_id(stem).encode()).hexdigest()[:8], 16) % 100
    return h < val_percent


def read_yolo(path: pathlib.Path) -> np.ndarray:
    """Reads a YOLO label file to (K, 4) float64 normalised (cx, cy, w, h).

    Raises:
      DataError: a line that is not ``class cx cy w h`` with numbers, a centre outside [0, 1],
        or a non-positive size; the message names the file and line.
    """
    if not path.is_file():
        raise DataError(f"{path}: label file not found (expected one YOLO line per fish)")
    boxes = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            vals = [float(p) for p in parts]
        except ValueError:
            vals = []
        if len(vals) != 5:
            raise DataError(
                f"{path}, line {n}: expected 'class cx cy w h' (5 numbers), got {line.strip()!r}"
            )
        _, cx, cy, w, h = vals
        if not (0.0 <= cx <= 1.0 and 0.0 <= cy <= 1.0):
            raise DataError(
                f"{path}, line {n}: box centre ({cx}, {cy}) is outside the image [0, 1]"
            )
        if not (0 < w <= 1.0 and 0 < h <= 1.0):
            raise DataError(
                f"{path}, line {n}: box width and height must be in (0, 1] (normalised by the "
                f"image size), got {w}, {h}"
            )
        boxes.append((cx, cy, w, h))
    return np.asarray(boxes, np.float64).reshape(-1, 4)


def list_images(folder: pathlib.Path) -> list[pathlib.Path]:
    """Sorted image files of ``folder/images``.

    Raises:
      DataError: the folder is missing or holds no images.
    """
    img_dir = folder / "images"
    if not img_dir.is_dir():
        raise DataError(f"{img_dir}: folder not found (expected images/ and labels/ in {folder})")
    files = pp.list_image_files(img_dir, str(img_dir))
    if not files:
        raise DataError(f"{img_dir}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return files


def report_orphan_labels(folder: pathlib.Path, images: list[pathlib.Path]) -> list[str]:
    """Warns (count and first names) about label files with no image; returns their names."""
    labels = folder / "labels"
    if not labels.is_dir():
        return []
    stems = {p.stem for p in images}
    orphans = sorted(p.name for p in labels.glob("*.txt") if p.stem not in stems)
    if orphans:
        logger.warning(
            "%s: %d label file(s) have no image in %s and are ignored: %s",
            labels,
            len(orphans),
            folder / "images",
            ", ".join(orphans[:5]) + (" ..." if len(orphans) > 5 else ""),
        )
    return orphans


def load_example(
    img_path: pathlib.Path,
    boxes_norm: np.ndarray,
    *,
    short_side: int | None,
    letterbox: str,
) -> dict[str, Any]:
    """One example from an image and its normalised YOLO boxes (see module doc)."""
    img = pp.load_image(img_path)
    H, W = img.height, img.width
    prepared = pp.Preprocessing(short_side, letterbox).apply(img)
    top, bottom, left, right = prepared.region
    # Boxes in stored-image pixels (continuous coordinates, pixel i covers [i, i+1)), then in
    # the picture region.
    cx, cy = boxes_norm[:, 0] * W - left, boxes_norm[:, 1] * H - top
    bw, bh = boxes_norm[:, 2] * W, boxes_norm[:, 3] * H
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
    H, W = bottom - top, right - left
    if letterbox == "crop":
        # A box reaching into a bar keeps only its picture part.
        boxes = np.clip(boxes, 0, [W, H, W, H])
    h, w = prepared.image.shape[:2]
    sy, sx = prepared.scale
    boxes = (boxes * np.array([sx, sy, sx, sy])).astype(np.float32)
    ys = np.clip(np.floor(np.clip(cy, 0, H - 1e-6) * sy), 0, h - 1).astype(np.int64)
    xs = np.clip(np.floor(np.clip(cx, 0, W - 1e-6) * sx), 0, w - 1).astype(np.int64)
    fish = pp.place_points((h, w), np.stack([ys, xs], 1), str(img_path))
    ex = {
        "image": prepared.image,
        "points": pp.point_map((h, w), fish),
        "mask": np.full((h, w), pp.IGNORE, np.int32),
        "count": np.int32(len(boxes_norm)),
        "habitat": pp.habitat_of(frame_id(img_path.stem)),
        "id": frame_id(img_path.stem),
        "boxes": boxes.reshape(-1, 4),
    }
    if prepared.valid is not None:
        ex["pad"] = prepared.valid
    return ex


def split_folder(root: pathlib.Path, split: str, val_percent: float) -> tuple[pathlib.Path, Any]:
    """(folder, filter) for a split: a split subfolder, or the hash rule over ``root``."""
    names = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
    for sub in names.get(split, (split,)):
        if (root / sub / "images").is_dir():
            return root / sub, None
    if split == "all":
        return root, None
    if split == "train":
        return root, lambda stem: not in_val(stem, val_percent)
    if split == "val":
        return root, lambda stem: in_val(stem, val_percent)
    raise DataError(
        f"{root}: no split folder {split!r} (with images/ inside) and {split!r} is not one of "
        "'train', 'val', 'all' (the fixed hash-rule splits)"
    )


def box_source(
    root: str | pathlib.Path,
    split: str,
    *,
    val_percent: float,
    skip_bad_examples: bool,
    short_side: int | None,
    letterbox: str,
) -> MappedSource:
    """A source over a YOLO folder's split (labels are parsed and checked up front).

    Raises:
      DataError: missing folder, image without label file, malformed label line, or (on
        access) an undecodable image; with ``skip_bad_examples`` these are warned about,
        counted and left out instead (images are then fully decoded once up front).
    """
    root = pathlib.Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: box folder not found (expected images/ and labels/ inside)")
    folder, keep = split_folder(root, split, float(val_percent))
    all_files = list_images(folder)
    report_orphan_labels(folder, all_files)
    files = [p for p in all_files if keep is None or keep(p.stem)]
    skip = bool(skip_bad_examples)
    bad = BadExamples(skip, f"boxes {folder}")
    items = []
    for p in files:
        try:
            boxes = read_yolo(folder / "labels" / f"{p.stem}.txt")
            if skip:
                pp.load_image(p)
        except DataError as e:
            bad.handle(e)
            continue
        items.append((p, boxes))
    bad.summarize()
    short = short_side
    return MappedSource(
        items,
        lambda it: load_example(it[0], it[1], short_side=short, letterbox=letterbox),
        f"boxes[{split}] {folder}",
        fingerprint=lambda it: hashlib.sha256(it[0].read_bytes()).hexdigest(),
        settings={"reader": "boxes", **pp.Preprocessing(short, letterbox).to_dict()},
        label_count=lambda it: len(it[1]),
        check=lambda it: pp.resized_size(*pp.check_image(it[0]), short),
        example_id=lambda it: frame_id(it[0].stem),
    )
