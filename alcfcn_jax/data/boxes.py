"""Folders of images with YOLO box files (e.g. the DeepFish frames Roboflow export).

Layout: ``<dir>/images/<stem>.{jpg,jpeg,png}`` and ``<dir>/labels/<stem>.txt`` with one line
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
from alcfcn_jax.data.config import field
from alcfcn_jax.data.errors import BadExamples, DataError
from alcfcn_jax.data.source import MappedSource

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_ROBOFLOW = re.compile(r"_(jpg|jpeg|png)\.rf\.[0-9a-f]+$")


def frame_id(stem: str) -> str:
    """The original frame name of a Roboflow export stem (drops ``_jpg.rf.<hash>``)."""
    return _ROBOFLOW.sub("", stem)


def in_val(stem: str, val_percent: float) -> bool:
    """The fixed split rule: md5 of the frame name, mod 100, below ``val_percent``."""
    h = int(hashlib.md5(frame_id(stem).encode()).hexdigest()[:8], 16) % 100
    return h < val_percent


def detect_letterbox(
    img: np.ndarray, dark: float = 24.0, peak: float = 64.0
) -> tuple[int, int, int, int]:
    """Picture region (top, bottom, left, right; end-exclusive) inside black bars.

    A border row (column) belongs to a bar while its mean is below ``dark`` and its maximum
    below ``peak`` (over pixels and channels); the half-bar rows that resizing and JPEG leave
    at the edge of the picture count as bar. If less than a quarter of the image would remain
    (a very dark frame, not bars) nothing is cropped.
    """
    a = img.astype(np.float32)

    def extent(axis: int) -> tuple[int, int]:
        other = tuple(i for i in range(3) if i != axis)
        is_bar = (a.mean(axis=other) < dark) & (a.max(axis=other) < peak)
        n = is_bar.size
        start = int(np.argmin(is_bar)) if not is_bar.all() else n
        end = n - int(np.argmin(is_bar[::-1])) if not is_bar.all() else 0
        if end - start < n / 4:
            return 0, n
        return start, end

    top, bottom = extent(0)
    left, right = extent(1)
    return top, bottom, left, right


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
        if not (w > 0 and h > 0):
            raise DataError(f"{path}, line {n}: box width and height must be > 0, got {w}, {h}")
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
    files = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{img_dir}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return files


def load_example(
    img_path: pathlib.Path,
    boxes_norm: np.ndarray,
    *,
    short_side: int | None,
    letterbox: str,
) -> dict[str, Any]:
    """One example from an image and its normalised YOLO boxes (see module doc)."""
    img = pp.load_image(img_path)
    arr = np.asarray(img)
    H, W = arr.shape[:2]
    # Boxes in stored-image pixels (continuous coordinates, pixel i covers [i, i+1)).
    cx, cy = boxes_norm[:, 0] * W, boxes_norm[:, 1] * H
    bw, bh = boxes_norm[:, 2] * W, boxes_norm[:, 3] * H
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
    top, bottom, left, right = (0, H, 0, W)
    if letterbox in ("crop", "mask"):
        top, bottom, left, right = detect_letterbox(arr)
    elif letterbox != "none":
        raise DataError(f"data.letterbox must be 'crop', 'mask' or 'none', got {letterbox!r}")
    valid = None
    if letterbox == "crop":
        img = img.crop((left, top, right, bottom))
        boxes = boxes - np.array([left, top, left, top], np.float64)
        cx, cy = cx - left, cy - top
        H, W = bottom - top, right - left
        # A box reaching into a bar keeps only its picture part; its centre moves inside.
        boxes = np.clip(boxes, 0, [W, H, W, H])
    elif letterbox == "mask":
        valid = np.zeros((H, W), bool)
        valid[top:bottom, left:right] = True
    out = pp.resize_image(img, short_side)
    h, w = out.height, out.width
    sy, sx = h / H, w / W
    boxes = (boxes * np.array([sx, sy, sx, sy])).astype(np.float32)
    ys = np.clip(np.floor(np.clip(cy, 0, H - 1e-6) * sy), 0, h - 1).astype(np.int64)
    xs = np.clip(np.floor(np.clip(cx, 0, W - 1e-6) * sx), 0, w - 1).astype(np.int64)
    if letterbox == "crop":
        ys = np.clip(ys, 0, h - 1)
    ex = {
        "image": pp.normalize(np.asarray(out, np.uint8)),
        "points": pp.point_map((h, w), np.stack([ys, xs], 1).astype(np.int32)),
        "mask": np.full((h, w), pp.IGNORE, np.int32),
        "count": np.int32(len(boxes_norm)),
        "habitat": pp.habitat_of(frame_id(img_path.stem)),
        "id": frame_id(img_path.stem),
        "boxes": boxes.reshape(-1, 4),
    }
    if valid is not None:
        valid = pp.resize_nearest(valid.astype(np.uint8), (h, w)).astype(bool)
        ex["pad"] = valid
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


def box_source(data_cfg: Any, root: str | pathlib.Path, split: str) -> MappedSource:
    """A source over a YOLO folder's split (labels are parsed and checked up front).

    Raises:
      DataError: missing folder, image without label file, malformed label line, or (on
        access) an undecodable image; with ``skip_bad_examples`` these are warned about,
        counted and left out instead (images are then fully decoded once up front).
    """
    root = pathlib.Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: box folder not found (expected images/ and labels/ inside)")
    folder, keep = split_folder(root, split, float(field(data_cfg, "val_percent")))
    files = [p for p in list_images(folder) if keep is None or keep(p.stem)]
    skip = bool(field(data_cfg, "skip_bad_examples"))
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
    short = field(data_cfg, "image_short_side")
    letterbox = field(data_cfg, "letterbox")
    return MappedSource(
        items,
        lambda it: load_example(it[0], it[1], short_side=short, letterbox=letterbox),
        f"boxes[{split}] {folder}",
    )
