"""Miniature synthetic DeepFish trees in the exact official layout.

The tree has ``Segmentation/`` and ``Localization/`` with ``{train,val,test}.csv``, JPEG frames,
0/255 PNG masks and one-pixel-per-fish point PNGs, ``valid/`` (with fish) and ``empty/`` IDs
over several habitats. Fish are bright, striped ellipses with a tail on a noisy blue-green
background, of varied size and orientation; some frames have two touching fish (one FishSeg
blob but two FishLoc clicks) and fish cut by the frame border. Some FishLoc training IDs are
FishSeg val/test IDs, so the overlap removal has something to remove.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import tempfile

import numpy as np
from PIL import Image

HABITATS = ("7117", "7398", "9866", "9908")
SPECIES = ("Caranx_sexfasciatus", "Lutjanus_argentimaculatus", "Acanthopagrus_palmaris")


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    """Size and content of a synthetic tree.

    Attributes:
      height, width: frame size in pixels (landscape like DeepFish's 1080x1920).
      n_habitats: how many habitat codes to use (at most 4).
      seg_sizes: number of FishSeg (train, val, test) frames.
      loc_sizes: number of FishLoc (train, val, test) frames.
      empty_every: every n-th frame has no fish.
      max_fish: most fish in one frame.
      seed: content seed.
    """

    height: int = 96
    width: int = 160
    n_habitats: int = 3
    seg_sizes: tuple[int, int, int] = (8, 4, 4)
    loc_sizes: tuple[int, int, int] = (10, 4, 4)
    empty_every: int = 4
    max_fish: int = 4
    seed: int = 0

    def key(self) -> str:
        """A short stable hash of the spec (names the cache folder)."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.sha1(blob).hexdigest()[:12]


def _fish(h: int, w: int, cy: float, cx: float, length: float, angle: float) -> np.ndarray:
    """Boolean mask of one fish: an ellipse body plus a triangular tail, rotated by ``angle``."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c, s = np.cos(angle), np.sin(angle)
    u = (xx - cx) * c + (yy - cy) * s  # along the body
    v = -(xx - cx) * s + (yy - cy) * c  # across
    a, b = length / 2, length / 5
    body = (u / a) ** 2 + (v / b) ** 2 <= 1.0
    t = -(u + a * 0.85)  # tail starts just behind the body
    tail = (t >= 0) & (t <= length * 0.3) & (np.abs(v) <= 0.2 * length * t / (length * 0.3) + 1)
    return body | tail


def _frame(rng: np.random.Generator, spec: SyntheticSpec, n_fish: int):
    """One frame: (uint8 image, 0/1 mask, list of (y, x) click points)."""
    h, w = spec.height, spec.width
    base = np.array([20, 70, 90], np.float32) + rng.normal(0, 8, 3)
    img = np.broadcast_to(base, (h, w, 3)).copy()
    img += np.linspace(0, 25, h, dtype=np.float32)[:, None, None]  # light from above
    img += rng.normal(0, 10, (h, w, 3))
    mask = np.zeros((h, w), bool)
    clicks: list[tuple[int, int]] = []
    angles: list[float] = []
    short = min(h, w)
    for k in range(n_fish):
        length = rng.uniform(0.18, 0.45) * short
        angle = rng.uniform(0, 2 * np.pi)
        if k == 1 and clicks and rng.random() < 0.5:
            # Touching pair: beside the previous fish, one body length away, same direction.
            py, px = clicks[-1]
            cy, cx = py + rng.uniform(-0.3, 0.3) * length, px + 0.8 * length
            angle = angles[-1]
        elif rng.random() < 0.2:
            # Cut by the border.
            cy, cx = rng.uniform(0, h), rng.choice([0.05 * w, 0.95 * w])
        else:
            cy, cx = rng.uniform(0.15 * h, 0.85 * h), rng.uniform(0.1 * w, 0.9 * w)
        fish = _fish(h, w, cy, cx, length, angle) & ~mask
        if fish.sum() < 6:
            continue
        angles.append(angle)
        tone = rng.uniform(150, 230)
        yy, xx = np.nonzero(fish)
        stripes = 25 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 0.9)
        col = np.array([tone, tone * 0.9, tone * 0.6], np.float32)
        img[yy, xx] = col + stripes[:, None] + rng.normal(0, 6, (len(yy), 3))
        mask |= fish
        # Click: the visible fish pixel nearest its body centre (annotators click the fish).
        j = np.argmin((yy - cy) ** 2 + (xx - cx) ** 2)
        clicks.append((int(yy[j]), int(xx[j])))
    return np.clip(img, 0, 255).astype(np.uint8), mask.astype(np.uint8), clicks


def write_tree(root: str | os.PathLike, spec: SyntheticSpec = SyntheticSpec()) -> pathlib.Path:
    """Writes a synthetic DeepFish tree under ``root`` (created; must not hold a tree yet).

    Returns:
      ``root`` as a path.
    """
    root = pathlib.Path(root)
    rng = np.random.default_rng(spec.seed)
    habitats = HABITATS[: max(1, min(spec.n_habitats, len(HABITATS)))]
    n_seg = sum(spec.seg_sizes)
    # FishLoc train reuses two FishSeg val/test frames (removed at read time), like the real set.
    n_loc_new = sum(spec.loc_sizes) - 2
    frames = []
    for i in range(n_seg + n_loc_new):
        empty = i % spec.empty_every == spec.empty_every - 1
        hab = habitats[i % len(habitats)]
        species = SPECIES[i % len(SPECIES)]
        fid = f"{'empty' if empty else 'valid'}/{hab}_{species}_f{i:06d}"
        n = 0 if empty else int(rng.integers(1, spec.max_fish + 1))
        img, mask, clicks = _frame(rng, spec, n)
        if not empty and not clicks:
            # Every fish was too small to place: keep the frame labelled honestly as empty.
            fid = fid.replace("valid/", "empty/", 1)
        frames.append((fid, img, mask, clicks))

    seg = frames[:n_seg]
    tr, va, _ = spec.seg_sizes
    seg_split = {"train": seg[:tr], "val": seg[tr : tr + va], "test": seg[tr + va :]}
    loc = frames[n_seg:]
    ltr, lva, _ = spec.loc_sizes
    overlap = [seg_split["val"][0], seg_split["test"][0]]
    loc_split = {
        "train": loc[: ltr - 2] + overlap,
        "val": loc[ltr - 2 : ltr - 2 + lva],
        "test": loc[ltr - 2 + lva :],
    }
    for sub, splits in (("Segmentation", seg_split), ("Localization", loc_split)):
        for split, items in splits.items():
            _write_split(root / sub, split, items, with_counts=sub == "Localization")
    return root


def _write_split(base: pathlib.Path, split: str, items, with_counts: bool) -> None:
    rows = []
    for fid, img, mask, clicks in items:
        ip, mp = base / "images" / f"{fid}.jpg", base / "masks" / f"{fid}.png"
        ip.parent.mkdir(parents=True, exist_ok=True)
        mp.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(ip, quality=92)
        if with_counts:
            pm = np.zeros(mask.shape, np.uint8)
            for y, x in clicks:
                pm[y, x] = 255
            Image.fromarray(pm).save(mp)
            rows.append([fid, int(bool(clicks)), len(clicks)])
        else:
            Image.fromarray(mask * 255).save(mp)
            rows.append([fid, int(mask.any())])
    base.mkdir(parents=True, exist_ok=True)
    with open(base / f"{split}.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["ID", "labels", "counts"] if with_counts else ["ID", "labels"])
        wr.writerows(rows)


def ensure_tree(
    cache_dir: str | os.PathLike, spec: SyntheticSpec = SyntheticSpec()
) -> pathlib.Path:
    """Returns ``<cache_dir>/synthetic_<spec hash>``, writing it first if absent.

    Idempotent and safe against concurrent writers: the tree is written to a temporary folder
    and renamed into place, so a reader never sees half a tree.
    """
    cache_dir = pathlib.Path(cache_dir).expanduser()
    final = cache_dir / f"synthetic_{spec.key()}"
    if (final / "spec.json").is_file():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=".tmp_synthetic_", dir=cache_dir))
    try:
        write_tree(tmp, spec)
        (tmp / "spec.json").write_text(json.dumps(dataclasses.asdict(spec), indent=1))
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "spec.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def default_cache_dir() -> pathlib.Path:
    """``$ALCFCN_CACHE`` or ``~/.cache/alcfcn_jax``."""
    return pathlib.Path(os.environ.get("ALCFCN_CACHE", "~/.cache/alcfcn_jax")).expanduser()
