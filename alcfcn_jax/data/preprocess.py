"""Host-side preprocessing shared by every reader (numpy + PIL, no JAX).

Reproduces the reference loader (reference spec 5.2-5.3): torchvision ``Resize(256)`` on PIL
images (short side to 256, long side ``int(256 * long / short)``, PIL bilinear which antialiases
when downscaling), masks and point maps with PIL nearest, ImageNet normalisation at load, and one
point per 8-connected mask blob at the int-truncated centroid.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.ndimage as ndi
import skimage.measure
from PIL import Image

from alcfcn_jax.data.errors import DataError
from alcfcn_jax.labels import IGNORE

logger = logging.getLogger("alcfcn_jax.data")

# The one list of image file extensions of the project (case-insensitive): box and click folders,
# ``predict`` and every listing of images use it.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
LETTERBOX_MODES = ("crop", "mask", "none")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def resized_size(height: int, width: int, short_side: int | None) -> tuple[int, int]:
    """Output (H, W) of torchvision ``Resize(short_side)``; ``None`` keeps the size.

    The long side is truncated, not rounded (1080x1920 at 256 -> 256x455).
    """
    if short_side is None:
        return height, width
    if width <= height:
        return int(short_side * height / width), int(short_side)
    return int(short_side), int(short_side * width / height)


def load_image(source: str | pathlib.Path | bytes, name: str | None = None) -> Image.Image:
    """Decodes an image file (or encoded bytes) to an RGB PIL image.

    Raises:
      DataError: the file is missing or cannot be decoded; the message names it.
    """
    label = name or str(source)
    try:
        if isinstance(source, bytes):
            img = Image.open(io.BytesIO(source))
        else:
            img = Image.open(source)
        img.load()
    except FileNotFoundError as e:
        raise DataError(f"{label}: image file not found") from e
    except Exception as e:  # PIL raises several types for corrupt files
        raise DataError(f"{label}: cannot decode image ({type(e).__name__}: {e})") from e
    return to_rgb8(img, label)


# 16-bit greyscale modes: scaled to 8 bits by their full range (v / 257), not clipped.
_MODES_16 = ("I;16", "I;16B", "I;16L", "I;16N")


def check_image(path: pathlib.Path, short_side: int | None = None) -> tuple[int, int]:
    """Checks that an image file decodes, cheaply, and returns its stored (H, W).

    JPEGs are decoded at 1/8 scale (``draft``: every byte is still read, so truncation and
    corrupt data show), other formats verified (PNG checksums); modes with no 8-bit meaning are
    refused as :func:`to_rgb8` would.

    Raises:
      DataError: missing, undecodable or unsupported file; the message names it.
    """
    try:
        with Image.open(path) as im:
            size = (im.height, im.width)
            mode = im.mode
            if im.format == "JPEG":
                im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
                im.load()
            else:
                im.verify()
    except FileNotFoundError as e:
        raise DataError(f"{path}: image file not found") from e
    except Exception as e:  # noqa: BLE001 - PIL raises several types for corrupt files
        raise DataError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from e
    if mode.startswith("F"):
        raise DataError(
            f"{path}: image mode {mode!r} (floating point or 32-bit) has no defined 8-bit "
            "scaling; export it as an 8-bit or 16-bit image"
        )
    return size


def to_rgb8(img: Image.Image, label: str = "image") -> Image.Image:
    """An 8-bit RGB copy of a decoded image.

    8-bit modes (L, P, RGB, RGBA, CMYK, ...) convert as PIL does. 16-bit greyscale (PNG/TIFF
    ``I;16*``, or mode ``I`` with values in 0..65535) is scaled by its full range,
    ``round(v / 257)``, so 65535 -> 255 and mid-grey stays mid-grey (PIL's own conversion clips
    everything above 255 to white).

    Raises:
      DataError: a mode with no defined 8-bit meaning (floating point, or 32-bit integers outside
        0..65535); the message names the file and asks for an 8- or 16-bit export.
    """
    if img.mode in ("RGB",):
        return img
    if img.mode in _MODES_16 or img.mode == "I":
        arr = np.asarray(img).astype(np.int64)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise DataError(
                f"{label}: 32-bit integer image with values {arr.min()}..{arr.max()} (expected an "
                "8-bit or 16-bit image); export it as 8-bit RGB"
            )
        u8 = np.round(arr / 257.0).astype(np.uint8)
        return Image.fromarray(u8, "L").convert("RGB")
    if img.mode.startswith(("F", "I")):
        raise DataError(
            f"{label}: image mode {img.mode!r} (floating point or 32-bit) has no defined 8-bit "
            "scaling; export it as an 8-bit or 16-bit image"
        )
    return img.convert("RGB")


def list_image_files(folder: pathlib.Path, what: str) -> list[pathlib.Path]:
    """Sorted image files of ``folder`` (by :data:`IMAGE_EXTENSIONS`); every other file there
    is reported in one warning (count and first names), never skipped silently."""
    files, others = [], []
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        (files if p.suffix.lower() in IMAGE_EXTENSIONS else others).append(p)
    if others:
        logger.warning(
            "%s: ignoring %d file(s) that are not images (%s): %s",
            what,
            len(others),
            ", ".join(IMAGE_EXTENSIONS),
            ", ".join(p.name for p in others[:5]) + (" ..." if len(others) > 5 else ""),
        )
    return files


def place_points(shape: tuple[int, int], yx: np.ndarray, name: str = "") -> np.ndarray:
    """Distinct clicks as distinct pixels: the rule wherever clicks become point pixels.

    A click that lands on the pixel of an earlier one after resizing (two fish closer than a
    pixel of the resized image) moves to the nearest free pixel (Chebyshev rings, first free in
    row-major order), so the point map holds exactly one pixel per counted fish; a warning names
    the image. Exact duplicate clicks are removed by the readers before this (see
    ``data.points.read_clicks``).
    """
    yx = np.asarray(yx, np.int64).reshape(-1, 2)
    h, w = shape
    taken: set[tuple[int, int]] = set()
    out = yx.copy()
    moved = 0
    for i, (y, x) in enumerate(yx):
        if (int(y), int(x)) not in taken:
            taken.add((int(y), int(x)))
            continue
        found = None
        for r in range(1, max(h, w)):
            for dy in range(-r, r + 1):
                for dx in range(-r, r + 1):
                    if max(abs(dy), abs(dx)) != r:
                        continue
                    yy, xx = int(y) + dy, int(x) + dx
                    if 0 <= yy < h and 0 <= xx < w and (yy, xx) not in taken:
                        found = (yy, xx)
                        break
                if found:
                    break
            if found:
                break
        if found is None:
            raise DataError(f"{name}: more clicks ({len(yx)}) than pixels ({h}x{w})")
        taken.add(found)
        out[i] = found
        moved += 1
    if moved:
        logger.warning(
            "%s: %d click(s) fell on the pixel of another after resizing to %dx%d; each was moved "
            "to the nearest free pixel so the point map keeps one pixel per fish",
            name or "image",
            moved,
            h,
            w,
        )
    return out.astype(np.int32)


def load_gray(path: str | pathlib.Path, what: str) -> np.ndarray:
    """Reads a mask or point-map PNG as a 2-D uint8 array (any channel non-zero counts).

    Raises:
      DataError: missing or undecodable file.
    """
    try:
        img = Image.open(path)
        img.load()
    except FileNotFoundError as e:
        raise DataError(f"{path}: {what} file not found") from e
    except Exception as e:
        raise DataError(f"{path}: cannot decode {what} ({type(e).__name__}: {e})") from e
    arr = np.asarray(img)
    if arr.ndim == 3:
        # Palette/RGB PNGs: a pixel is set if any channel is (alpha ignored).
        arr = arr[..., :3].max(axis=-1) if arr.shape[-1] >= 3 else arr[..., 0]
    return arr.astype(np.uint8)


def resize_image(img: Image.Image, short_side: int | None) -> Image.Image:
    """Resizes an RGB PIL image so its short side is ``short_side`` (PIL bilinear)."""
    h, w = resized_size(img.height, img.width, short_side)
    if (h, w) == (img.height, img.width):
        return img
    return img.resize((w, h), Image.BILINEAR)


def resize_nearest(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resizes a 2-D uint8 label array to (H, W) with PIL nearest, as torchvision does."""
    if arr.shape == tuple(size):
        return arr
    return np.asarray(Image.fromarray(arr).resize((size[1], size[0]), Image.NEAREST))


def normalize(img_u8: np.ndarray) -> np.ndarray:
    """uint8 (H,W,3) -> float32 ImageNet-normalised, as ToTensor + Normalize."""
    return (img_u8.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def denormalize(img: np.ndarray) -> np.ndarray:
    """Inverse of :func:`normalize`, returning uint8 (for overlays)."""
    return np.clip((img * IMAGENET_STD + IMAGENET_MEAN) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def binarize_mask(mask: np.ndarray, path: str) -> np.ndarray:
    """Maps a 0/255 (or 0/1) mask to 0/1 uint8.

    Raises:
      DataError: values other than 0, 1 and 255 (e.g. a JPEG-compressed or grey-level mask).
    """
    bad = np.setdiff1d(np.unique(mask), [0, 1, 255])
    if bad.size:
        raise DataError(
            f"{path}: mask values must be 0 (background) and 255 or 1 (fish); found {bad[:5]}"
        )
    return (mask > 0).astype(np.uint8)


def mask_points(mask: np.ndarray, placement: str = "centroid") -> np.ndarray:
    """One (y, x) point per 8-connected blob of a 0/1 mask.

    Args:
      mask: (H, W) 0/1 array.
      placement: ``"centroid"`` = the int-truncated region centroid (the reference's choice; may
        fall outside a non-convex blob) or ``"edt_max"`` = the blob pixel farthest from the
        background (the paper's wording; always inside the blob; image borders count as
        background; ties go to the first pixel in row-major order).

    Returns:
      (K, 2) int32 array of (y, x), blobs in label order.
    """
    labels, n = skimage.measure.label(mask > 0, connectivity=2, return_num=True)
    if n == 0:
        return np.zeros((0, 2), np.int32)
    if placement == "centroid":
        ys, xs = np.nonzero(labels)
        lab = labels[ys, xs]
        cnt = np.bincount(lab, minlength=n + 1)[1:]
        cy = np.bincount(lab, weights=ys, minlength=n + 1)[1:] / cnt
        cx = np.bincount(lab, weights=xs, minlength=n + 1)[1:] / cnt
        return np.stack([cy.astype(np.int64), cx.astype(np.int64)], 1).astype(np.int32)
    if placement == "edt_max":
        dist = ndi.distance_transform_edt(np.pad(mask > 0, 1))[1:-1, 1:-1]
        pos = ndi.maximum_position(dist, labels, np.arange(1, n + 1))
        return np.asarray(pos, np.int32).reshape(n, 2)
    raise ValueError(f"point_placement must be 'centroid' or 'edt_max', got {placement!r}")


def background_points(mask: np.ndarray, n: int, seed: int = 1) -> np.ndarray:
    """``n`` background points drawn as the reference's ``get_points_from_mask`` does.

    A row is drawn from the list of background-pixel rows (so rows weigh by how much background
    they hold), then a column among that row's background pixels, with numpy's legacy generator
    seeded with ``seed`` (the reference seeds 1). Returns (n, 2) int32 (y, x); empty if there is
    no background.
    """
    ys, xs = np.nonzero(mask == 0)
    if n <= 0 or ys.size == 0:
        return np.zeros((0, 2), np.int32)
    rng = np.random.RandomState(seed)
    out = np.empty((n, 2), np.int32)
    for i in range(n):
        y = rng.choice(ys)
        x = rng.choice(xs[ys == y])
        out[i] = (y, x)
    return out


def point_map(
    shape: tuple[int, int], fish: np.ndarray, background: np.ndarray | None = None
) -> np.ndarray:
    """(H, W) int32 map: 1 at fish points, 0 at background points, 255 elsewhere.

    Background points are written first so a fish point wins a (rare) collision, as in the
    reference where bg points are only drawn from background pixels.
    """
    pts = np.full(shape, IGNORE, np.int32)
    if background is not None and len(background):
        pts[background[:, 0], background[:, 1]] = 0
    if len(fish):
        pts[fish[:, 0], fish[:, 1]] = 1
    return pts


def scale_points(points: np.ndarray, src: tuple[int, int], dst: tuple[int, int]) -> np.ndarray:
    """Maps integer (y, x) pixels from a (H, W) frame to another: ``int(y * h / H)``.

    This is the reference's FishLoc rule for point maps of the full-resolution frame.
    """
    if len(points) == 0 or tuple(src) == tuple(dst):
        return np.asarray(points, np.int32).reshape(-1, 2)
    p = np.asarray(points, np.float64)
    y = (p[:, 0] * dst[0] / src[0]).astype(np.int64)
    x = (p[:, 1] * dst[1] / src[1]).astype(np.int64)
    return np.stack([y, x], 1).astype(np.int32)


def habitat_of(image_id: str) -> str:
    """DeepFish habitat code of an ID (``valid/7117_Lutjanus_..`` -> ``"7117"``)."""
    name = image_id.split("/")[-1]
    return name.split("_")[0]


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


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How a stored image becomes the model's input; one definition for training, evaluation,
    pseudo masks and ``predict`` (recorded with every checkpoint).

    ``letterbox``: "crop" (detect black bars and cut them off), "mask" (keep them, mark them
    invalid) or "none"; then the short side is resized to ``short_side`` (None: kept), PIL
    bilinear, and the pixels ImageNet-normalised.
    """

    short_side: int | None = None
    letterbox: str = "none"

    def __post_init__(self) -> None:
        if self.letterbox not in LETTERBOX_MODES:
            raise DataError(
                f"data.letterbox must be one of {LETTERBOX_MODES}, got {self.letterbox!r}"
            )

    @classmethod
    def from_data_config(cls, data_cfg: Any) -> Preprocessing:
        """The preprocessing a complete data config (or its dict, as a checkpoint records it)
        describes (datasets without ``letterbox``: none)."""
        cfg = dict(data_cfg.items()) if hasattr(data_cfg, "items") else dict(data_cfg)
        short = cfg["image_short_side"]
        letterbox = cfg.get("letterbox", "none")
        return cls(None if short is None else int(short), str(letterbox or "none"))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessing:
        short = d.get("short_side")
        return cls(None if short is None else int(short), str(d.get("letterbox", "none")))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def apply(self, img: Image.Image) -> PreparedImage:
        """The model input of an RGB PIL image, with the geometry to map results back."""
        arr = np.asarray(img)
        H, W = arr.shape[:2]
        region = (0, H, 0, W)
        if self.letterbox in ("crop", "mask"):
            region = detect_letterbox(arr)
        valid = None
        if self.letterbox == "crop":
            top, bottom, left, right = region
            img = img.crop((left, top, right, bottom))
        elif self.letterbox == "mask":
            valid = np.zeros((H, W), bool)
            valid[region[0] : region[1], region[2] : region[3]] = True
            region = (0, H, 0, W)
        out = resize_image(img, self.short_side)
        if valid is not None:
            valid = resize_nearest(valid.astype(np.uint8), (out.height, out.width)).astype(bool)
        return PreparedImage(normalize(np.asarray(out, np.uint8)), region, valid)


@dataclasses.dataclass
class PreparedImage:
    """A model input and where it came from.

    Attributes:
      image: (h, w, 3) float32 ImageNet-normalised.
      region: (top, bottom, left, right) of the stored image that ``image`` shows (the part
        inside cropped letterbox bars; the whole image otherwise).
      valid: (h, w) bool picture pixels ("mask" letterbox mode), or None (all).
    """

    image: np.ndarray
    region: tuple[int, int, int, int]
    valid: np.ndarray | None = None

    @property
    def scale(self) -> tuple[float, float]:
        """(sy, sx): model-input pixels per stored-image pixel."""
        top, bottom, left, right = self.region
        return self.image.shape[0] / (bottom - top), self.image.shape[1] / (right - left)
