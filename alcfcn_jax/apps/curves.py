"""Learning curves of training runs: validation figures against steps, as one PNG.

    python -m alcfcn_jax.apps.curves --out=docs/learning_curves.png \
        runs/lcfcn:LCFCN runs/alcfcn:A-LCFCN [--metrics=val_mae,val_box_hit_rate] [--table]

Reads each run's ``metrics.jsonl`` (the ``val`` rows), draws one panel per metric with a line
per run, and for ``val_mae`` a dashed line at the median-count baseline when a run logged one.
``--table`` also prints a markdown table: per run, the validation row with the lowest count MAE
(the checkpoint that ``select_metric="mae"`` keeps) and the last one. Plain PIL, so it needs
nothing beyond the package's dependencies.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from alcfcn_jax.eval.viz import _font, label_colors
from alcfcn_jax.io import save_png_atomic

TITLES = {
    "val_mae": "validation count MAE (lower is better)",
    "val_box_hit_rate": "box hit rate (higher is better)",
    "val_box_precision": "box precision (higher is better)",
    "val_game_l3": "GAME(L=3) (lower is better)",
    "val_miou": "mIoU (higher is better)",
}


def read_run(
    workdir: str | pathlib.Path,
) -> tuple[dict[str, list[tuple[int, float]]], float | None]:
    """({metric: [(step, value), ...]} of the ``val`` rows, the median baseline MAE or None)."""
    curves: dict[str, list[tuple[int, float]]] = {}
    baseline = None
    path = pathlib.Path(workdir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.jsonl (is {workdir} a training workdir?)")
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row.get("kind") == "baseline":
            baseline = row.get("median_baseline_mae", baseline)
        if row.get("kind") != "val":
            continue
        for k, v in row.items():
            if isinstance(v, (int, float)) and k.startswith("val_") and math.isfinite(v):
                curves.setdefault(k, []).append((int(row["step"]), float(v)))
    for k in curves:  # a resumed run may log a step twice: keep the last
        curves[k] = sorted(dict(curves[k]).items())
    return curves, baseline


def plot(
    runs: Sequence[tuple[str, dict[str, list[tuple[int, float]]], float | None]],
    metrics: Sequence[str],
    *,
    panel: tuple[int, int] = (560, 330),
) -> Image.Image:
    """One panel per metric (side by side), a coloured line per run, a legend below."""
    pw, ph = panel
    margin_l, margin_r, margin_t, margin_b = 64, 16, 34, 40
    legend_h = 22 * len(runs) + 10
    img = Image.new("RGB", (pw * len(metrics), ph + legend_h), "white")
    draw = ImageDraw.Draw(img)
    font, small = _font(15), _font(12)
    colors = [tuple(int(c) for c in col) for col in label_colors(max(len(runs), 1))]
    for m, metric in enumerate(metrics):
        x0, y0 = m * pw + margin_l, margin_t
        x1, y1 = (m + 1) * pw - margin_r, ph - margin_b
        draw.text((m * pw + 8, 8), TITLES.get(metric, metric), fill="black", font=font)
        series = [r[1].get(metric, []) for r in runs]
        values = [v for s in series for _, v in s]
        baselines = [r[2] for r in runs if metric == "val_mae" and r[2] is not None]
        values += baselines
        if not values:
            draw.text((x0, (y0 + y1) // 2), "no data", fill="gray", font=font)
            continue
        steps = [st for s in series for st, _ in s] or [0, 1]
        smax = max(steps) or 1
        vmin, vmax = min(values + [0.0]), max(values)
        if "hit_rate" in metric or "precision" in metric or "iou" in metric:
            vmin, vmax = 0.0, 1.0
        vmax = vmax if vmax > vmin else vmin + 1.0

        def to_xy(step, value, box=(x0, y0, x1, y1), smax=smax, lo=vmin, hi=vmax):
            bx0, by0, bx1, by1 = box
            return bx0 + (bx1 - bx0) * step / smax, by1 - (by1 - by0) * (value - lo) / (hi - lo)

        draw.rectangle((x0, y0, x1, y1), outline=(160, 160, 160))
        for t in np.linspace(vmin, vmax, 5):
            _, y = to_xy(0, t)
            draw.line((x0, y, x1, y), fill=(230, 230, 230))
            draw.text((x0 - 56, y - 7), f"{t:.2f}", fill="black", font=small)
        for t in np.linspace(0, smax, 5):
            x, _ = to_xy(t, vmin)
            draw.text((x - 14, y1 + 6), f"{int(t)}", fill="black", font=small)
        draw.text(((x0 + x1) // 2 - 14, y1 + 22), "step", fill="black", font=small)
        for b in baselines[:1]:
            _, y = to_xy(0, b)
            for xs in range(int(x0), int(x1), 12):
                draw.line((xs, y, min(xs + 6, x1), y), fill=(90, 90, 90), width=2)
            draw.text((x1 - 150, y - 16), f"always median {b:.2f}", fill=(90, 90, 90), font=small)
        for s, col in zip(series, colors):
            pts = [to_xy(st, v) for st, v in s]
            if len(pts) > 1:
                draw.line(pts, fill=col, width=3)
            for x, y in pts:
                draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=col)
    for i, ((label, _, _), col) in enumerate(zip(runs, colors)):
        y = ph + 6 + 22 * i
        draw.rectangle((12, y + 3, 36, y + 13), fill=col)
        draw.text((44, y), label, fill="black", font=font)
    return img


TABLE_COLUMNS = (
    ("MAE", "val_mae"),
    ("GAME(1)", "val_game_l1"),
    ("GAME(2)", "val_game_l2"),
    ("GAME(3)", "val_game_l3"),
    ("hit rate", "val_box_hit_rate"),
    ("precision", "val_box_precision"),
)


def table(runs: Sequence[tuple[str, dict[str, list[tuple[int, float]]], float | None]]) -> str:
    """Markdown rows: each run's lowest-MAE validation row (``best``) and its last one."""
    head = "| run | row | step | " + " | ".join(n for n, _ in TABLE_COLUMNS) + " |"
    lines = [head, "|" + "---|" * (3 + len(TABLE_COLUMNS))]
    for label, curves, baseline in runs:
        mae = curves.get("val_mae", [])
        if not mae:
            lines.append(f"| {label} | no validation rows |" + " |" * (1 + len(TABLE_COLUMNS)))
            continue
        best_step = min(mae, key=lambda sv: (sv[1], sv[0]))[0]
        for name, step in (("best", best_step), ("last", mae[-1][0])):
            cells = []
            for _, key in TABLE_COLUMNS:
                value = dict(curves.get(key, [])).get(step)
                cells.append("" if value is None else f"{value:.3f}")
            lines.append(f"| {label} | {name} | {step} | " + " | ".join(cells) + " |")
        if baseline is not None:
            lines.append(
                f"| {label} | always median | | {baseline:.3f} |" + " |" * (len(TABLE_COLUMNS) - 1)
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> pathlib.Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", help="WORKDIR[:LABEL] of each run")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--metrics", default="val_mae,val_box_hit_rate,val_box_precision")
    parser.add_argument("--table", action="store_true", help="also print a markdown table")
    args = parser.parse_args(argv)
    runs = []
    for spec in args.runs:
        workdir, _, label = spec.partition(":")
        curves, baseline = read_run(workdir)
        runs.append((label or pathlib.Path(workdir).name, curves, baseline))
    image = plot(runs, [m for m in args.metrics.split(",") if m])
    path = save_png_atomic(image, args.out)
    if args.table:
        print(table(runs))
    print(path)
    return path


if __name__ == "__main__":
    main()
