"""How large the fish of a YOLO box folder are at a given input resolution, in stride-8 cells.

    python -m alcfcn_jax.data.box_stats --data_dir=/data/deepfish_frames --short_sides=202,304,404

A model at output stride 8 sees a fish as the cells its box covers; one that covers a single
cell is hard to find and easy to merge with a neighbour. For each candidate short side (after the
letterbox crop) this prints the percentiles of the box side sqrt(w * h) in cells and the share of
fish under 2 cells, which is how ``configs/frames.py`` chose its resolution (docs/results.md).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import numpy as np

from alcfcn_jax.data import boxes as bx
from alcfcn_jax.data.preprocess import Preprocessing, load_image

STRIDE = 8


def fish_sizes(data_dir: str, *, letterbox: str = "crop", limit: int = 0) -> dict[str, np.ndarray]:
    """Box sides sqrt(w*h) in stored pixels, the picture's short side, per fish."""
    import pathlib

    root = pathlib.Path(data_dir).expanduser()
    files = bx.list_images(root)
    if limit:
        files = files[:: max(1, len(files) // limit)]
    sides, shorts = [], []
    prep = Preprocessing(None, letterbox)
    for path in files:
        boxes = bx.read_yolo(root / "labels" / f"{path.stem}.txt")
        if not len(boxes):
            continue
        img = load_image(path)
        top, bottom, left, right = prep.apply(img).region
        w = boxes[:, 2] * img.width
        h = boxes[:, 3] * img.height
        sides.append(np.sqrt(w * h))
        shorts.append(np.full(len(boxes), min(bottom - top, right - left), np.float64))
    return {"side": np.concatenate(sides), "short": np.concatenate(shorts)}


def table(sizes: dict[str, np.ndarray], short_sides: Sequence[int]) -> list[dict[str, float]]:
    """Per short side: percentiles (10/25/50/75/90) of fish sides in cells, share under 2 cells."""
    rows = []
    for s in short_sides:
        cells = sizes["side"] * (s / sizes["short"]) / STRIDE
        row = {"short_side": s}
        for q in (10, 25, 50, 75, 90):
            row[f"p{q}_cells"] = round(float(np.percentile(cells, q)), 2)
        row["share_under_2_cells"] = round(float((cells < 2).mean()), 3)
        rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> list[dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--short_sides", default="202,304,404")
    parser.add_argument("--letterbox", default="crop")
    parser.add_argument("--limit", type=int, default=0, help="read about this many images (0: all)")
    args = parser.parse_args(argv)
    sizes = fish_sizes(args.data_dir, letterbox=args.letterbox, limit=args.limit)
    rows = table(sizes, [int(s) for s in args.short_sides.split(",")])
    print(json.dumps({"fish": int(len(sizes["side"])), "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
