"""Overlay pictures with numpy and PIL only (no matplotlib): heat maps, masks, blobs, points.

Every function takes and returns uint8 RGB arrays (H,W,3) unless said otherwise; PNGs are written
atomically (temporary file in the same directory, then ``os.replace``), so a crash never leaves a
half-written picture behind.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np
import scipy.ndimage as ndi
from PIL import Image, ImageDraw, ImageFont

# Anchor colours of matplotlib's "viridis" (public colour values), interpolated linearly: a
# perceptually ordered heat map that stays readable in greyscale print.
_VIRIDIS = np.array(
    [
        [68, 1, 84],
        [72, 40, 120],
        [62, 74, 137],
        [49, 104, 142],
        [38, 130, 142],
        [31, 158, 137],
        [53, 183, 121],
        [109, 205, 89],
        [180, 222, 44],
        [253, 231, 37],
    ],
    np.float64,
)

FISH_COLOR = (255, 64, 32)
GT_COLOR = (40, 220, 80)
PRED_POINT_COLOR = (255, 230, 0)
GT_POINT_COLOR = (0, 200, 255)


def heatmap(values: np.ndarray, vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """Maps a (H,W) float array to a viridis-like (H,W,3) uint8 picture."""
    v = np.asarray(values, np.float64)
    span = vmax - vmin if vmax > vmin else 1.0
    t = np.clip((np.nan_to_num(v, nan=vmin) - vmin) / span, 0.0, 1.0) * (len(_VIRIDIS) - 1)
    lo = np.floor(t).astype(np.int64)
    hi = np.minimum(lo + 1, len(_VIRIDIS) - 1)
    frac = (t - lo)[..., None]
    rgb = _VIRIDIS[lo] * (1.0 - frac) + _VIRIDIS[hi] * frac
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def blend(image: np.ndarray, mask: np.ndarray, color: Sequence[int], alpha: float = 0.5):
    """Tints ``image`` with ``color`` where ``mask`` is true."""
    out = np.asarray(image, np.float64).copy()
    m = np.asarray(mask, bool)
    out[m] = out[m] * (1.0 - alpha) + np.asarray(color, np.float64) * alpha
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def outline(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """Inner boundary pixels of a boolean or label mask, ``thickness`` pixels wide."""
    m = np.asarray(mask)
    if m.dtype == bool:
        inner = ndi.binary_erosion(m, iterations=thickness, border_value=0)
        return m & ~inner
    # Label images: a pixel is on a boundary when any 8-neighbour has another label.
    edge = np.zeros(m.shape, bool)
    padded = np.pad(m, 1, mode="edge")
    h, w = m.shape
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            edge |= padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] != m
    edge &= m > 0
    if thickness > 1:
        edge = ndi.binary_dilation(edge, iterations=thickness - 1) & (m > 0)
    return edge


def label_colors(n: int) -> np.ndarray:
    """``n`` well separated saturated colours (golden-ratio hue steps), (n,3) uint8."""
    cols = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((0.08 + i * 0.61803398875) % 1.0, 0.85, 1.0)
        cols.append((int(r * 255), int(g * 255), int(b * 255)))
    return np.asarray(cols, np.uint8).reshape(n, 3)


def color_labels(image: np.ndarray, labels: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Tints each labelled region of ``image`` with its own colour and outlines it."""
    labels = np.asarray(labels)
    n = int(labels.max()) if labels.size else 0
    out = np.asarray(image, np.uint8).copy()
    if n == 0:
        return out
    cols = label_colors(n)
    fg = labels > 0
    tint = cols[np.maximum(labels, 1) - 1]
    out = out.astype(np.float64)
    out[fg] = out[fg] * (1 - alpha) + tint[fg] * alpha
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    edge = outline(labels)
    out[edge] = cols[labels[edge] - 1]
    return out


def draw_points(
    image: np.ndarray,
    points: np.ndarray,
    color: Sequence[int],
    *,
    marker: str = "cross",
    radius: int = 3,
) -> np.ndarray:
    """Draws a marker at every non-zero pixel of a (H,W) point map (or at (K,2) y,x rows)."""
    pts = np.asarray(points)
    if pts.shape == tuple(image.shape[:2]):
        yx = np.argwhere(pts > 0)
    else:
        yx = pts.reshape(-1, 2)
    pil = Image.fromarray(np.asarray(image, np.uint8))
    draw = ImageDraw.Draw(pil)
    col = tuple(int(c) for c in color)
    for y, x in yx:
        if marker == "circle":
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], outline=col, width=1)
        else:
            draw.line([x - radius, y, x + radius, y], fill=col, width=1)
            draw.line([x, y - radius, x, y + radius], fill=col, width=1)
    return np.asarray(pil)


def draw_boxes(image: np.ndarray, boxes: np.ndarray, color: Sequence[int]) -> np.ndarray:
    """Draws (K,4) x0,y0,x1,y1 rectangles."""
    pil = Image.fromarray(np.asarray(image, np.uint8))
    draw = ImageDraw.Draw(pil)
    for x0, y0, x1, y1 in np.asarray(boxes, np.float64).reshape(-1, 4):
        if np.isfinite([x0, y0, x1, y1]).all():
            draw.rectangle([x0, y0, x1, y1], outline=tuple(int(c) for c in color), width=1)
    return np.asarray(pil)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text`` shortened with an ellipsis so it fits in ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def tile_grid(
    tiles: Sequence[tuple[str, np.ndarray]],
    *,
    columns: int = 3,
    title_px: int = 14,
    header: str = "",
    min_height: int = 192,
) -> Image.Image:
    """Arranges titled (H,W,3) tiles of one size in a grid, returned as a PIL image.

    Small tiles are enlarged by an integer factor (nearest neighbour, so pixels stay visible)
    until they are at least ``min_height`` tall; ``header`` is a line across the top.
    """
    if not tiles:
        raise ValueError("tile_grid needs at least one tile")
    h0, w0 = tiles[0][1].shape[:2]
    zoom = max(1, -(-min_height // max(h0, 1)))
    h, w = h0 * zoom, w0 * zoom
    rows = -(-len(tiles) // columns)
    cell_h = h + title_px + 4
    top = title_px + 6 if header else 0
    canvas = Image.new("RGB", (columns * w + (columns - 1) * 2, top + rows * cell_h), (24, 24, 24))
    draw = ImageDraw.Draw(canvas)
    font = _font(title_px - 2)
    if header:
        draw.text(
            (3, 2), _fit(draw, header, font, canvas.width - 6), fill=(255, 255, 255), font=font
        )
    for k, (title, tile) in enumerate(tiles):
        if tile.shape[:2] != (h0, w0):
            raise ValueError(f"tile {title!r} is {tile.shape[:2]}, expected {(h0, w0)}")
        r, c = divmod(k, columns)
        x, y = c * (w + 2), top + r * cell_h
        draw.text((x + 2, y + 1), _fit(draw, title, font, w - 4), fill=(235, 235, 235), font=font)
        pic = Image.fromarray(np.asarray(tile, np.uint8))
        if zoom > 1:
            pic = pic.resize((w, h), Image.NEAREST)
        canvas.paste(pic, (x, y + title_px + 2))
    return canvas


def eval_panel(
    image: np.ndarray,
    *,
    pred: np.ndarray,
    pred_points: np.ndarray,
    gt_mask: np.ndarray | None = None,
    gt_points: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
    fish_prob: np.ndarray | None = None,
    cam_prob: np.ndarray | None = None,
    title: str = "",
) -> Image.Image:
    """The evaluation overlay of one image as a titled grid.

    Tiles: the image; ground truth (mask tinted green, points, boxes); prediction (tinted red);
    predicted blobs (one colour each) with predicted points (yellow crosses) and true points (cyan
    circles); and, when given, the fish probability before (``cam_prob``) and after the random walk
    (``fish_prob``).
    """
    img = np.asarray(image, np.uint8)
    gt = img.copy()
    if gt_mask is not None:
        known = np.asarray(gt_mask) != 255
        gt = blend(gt, (np.asarray(gt_mask) == 1) & known, GT_COLOR, 0.5)
        gt[outline((np.asarray(gt_mask) == 1) & known)] = GT_COLOR
    if boxes is not None:
        gt = draw_boxes(gt, boxes, GT_COLOR)
    if gt_points is not None:
        gt = draw_points(gt, gt_points, GT_POINT_COLOR, marker="circle")
    pred_tile = blend(img, np.asarray(pred) == 1, FISH_COLOR, 0.5)
    labels = ndi.label(np.asarray(pred) == 1, structure=np.ones((3, 3)))[0]
    blobs = color_labels(img, labels)
    if gt_points is not None:
        blobs = draw_points(blobs, gt_points, GT_POINT_COLOR, marker="circle")
    blobs = draw_points(blobs, pred_points, PRED_POINT_COLOR, marker="cross")
    n_pred = int(np.count_nonzero(pred_points))
    n_gt = int(np.count_nonzero(gt_points)) if gt_points is not None else None
    tiles = [
        ("image", img),
        ("ground truth" + (f" ({n_gt} fish)" if n_gt is not None else ""), gt),
        ("prediction", pred_tile),
        (f"blobs + points ({n_pred} pred)", blobs),
    ]
    if cam_prob is not None:
        tiles.append(("activation (before RW)", heatmap(cam_prob)))
    if fish_prob is not None:
        name = "after random walk" if cam_prob is not None else "fish probability"
        tiles.append((name, heatmap(fish_prob)))
    return tile_grid(tiles, columns=3 if len(tiles) > 4 else 2, header=title)
