"""Post-processing variants of one trained model's fish map, scored against the true boxes.

    python -m benchmarks.outline_variants --workdir=runs/alcfcn_ref --data_dir=$D [--split=val]
        [--limit=0] [--variants=blobs,flip,scales,hysteresis,pamr,transport,grabcut,...]

The model's best checkpoint runs once per image (and once on the mirrored image for the flip
variants); every variant turns the fish probability into instances, cut by the watershed
(``eval.measure.instance_labels``), and is scored by ``eval.instances`` (the figures of
``evaluate.py``). Variants:

  * ``blobs``: the map as it is (``instances.outline=blobs``);
  * ``flip``: the mean of the probabilities of the image and of its mirror image;
  * ``scales``: the mean of the probabilities of the image resized by 0.75, 1 and 1.5 (bilinear),
    each map brought back to the image's size;
  * ``hysteresis``: blobs of p > 0.5 grown into p > 0.25 (watershed on -p within p > 0.25);
  * ``pamr``: the probability refined by PAMR (``ops/pamr.py``: 10 iterations, dilations
    1, 2, 4, 8, 12, 24) before the cut;
  * ``transport``: the cut re-drawn by optimal transport with area budgets
    (``instances.outline=transport``, ``eval/transport.py``);
  * ``grabcut``: the cut grown to the fish's edges (``instances.outline=grabcut``);
  * ``flip_grabcut``, ``scales_grabcut``, ``pamr_grabcut``: the two combined.

"instances MAE" is the mean |instances - true count| per image. Results:
``benchmarks/results/outline_variants.json`` (or ``--output``; with each variant's figures by
fish size, ``eval.instances.SIZE_CLASSES``) and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import cv2
import numpy as np

from benchmarks.common import variant_list

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
VARIANTS = (
    "blobs",
    "flip",
    "scales",
    "hysteresis",
    "pamr",
    "transport",
    "grabcut",
    "flip_grabcut",
    "scales_grabcut",
    "pamr_grabcut",
)
SCALES = (0.75, 1.0, 1.5)
KEYS = (
    "ap50",
    "ap50_95",
    "best_iou_median",
    "box_coverage_median",
    "pixel_precision",
    "length_in_range",
    "length_error_median",
    "one_instance_share",
)


def hysteresis(prob: np.ndarray, high: float = 0.5, low: float = 0.25) -> np.ndarray:
    import skimage.segmentation as seg

    from alcfcn_jax.eval import measure

    core = measure.instance_labels(prob, threshold=high)
    if core.max() == 0:
        return core
    return seg.watershed(-prob, core, mask=prob > low, connectivity=2)


def pamr_probability(image: np.ndarray, prob: np.ndarray) -> np.ndarray:
    import jax.numpy as jnp

    from alcfcn_jax.ops import pamr

    two = np.stack([1.0 - prob, prob], -1)[None]
    rgb = image.astype(np.float32)[None] / 255.0
    out = pamr.pamr(jnp.asarray(rgb), jnp.asarray(two), iters=10, dilations=(1, 2, 4, 8, 12, 24))
    return np.asarray(out)[0, ..., 1]


def run(workdir: str, data_dir: str, split: str, limit: int, variants: list[str]) -> dict:
    from alcfcn_jax.apps import run_config
    from alcfcn_jax.data import preprocess as pp
    from alcfcn_jax.eval import evaluation, inference, measure, outlines, report
    from alcfcn_jax.eval import instances as inst
    from alcfcn_jax.models import outputs
    from alcfcn_jax.train.config import resolve

    config = run_config.get_config(workdir)
    config.data.data_dir = data_dir
    config = resolve(config)
    restored = inference.restore(config, workdir, "best")
    forward = evaluation.make_forward(restored.model)
    source = restored.source(report.resolve_split(restored.data_cfg, split))
    n = len(source) if not limit else min(limit, len(source))
    records: dict[str, list] = {v: [] for v in variants}
    seconds = dict.fromkeys(variants, 0.0)
    count_errors: dict[str, list] = {v: [] for v in variants}
    grabcut = outlines.InstanceSettings(outline="grabcut")
    transport = outlines.InstanceSettings(outline="transport")
    t_forward = 0.0

    def probability(image: np.ndarray, scale: float = 1.0, flip: bool = False) -> np.ndarray:
        size = image.shape[:2]
        if scale != 1.0:
            h, w = round(size[0] * scale), round(size[1] * scale)
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        if flip:
            image = image[:, ::-1]
        logits = forward(np.ascontiguousarray(image[None]))
        p = np.asarray(outputs.fish_probability(outputs.upsample_logits(logits, size)))[0]
        return p[:, ::-1] if flip else p

    for i in range(n):
        ex = source[i]
        image = np.asarray(ex["image"], np.float32)
        size = image.shape[:2]
        valid = np.asarray(ex["pad"], bool) if ex.get("pad") is not None else np.ones(size, bool)
        t0 = time.perf_counter()
        prob = probability(image) * valid
        flipped = scaled = None
        if any(v.startswith("flip") for v in variants):
            flipped = probability(image, flip=True) * valid
        if any(v.startswith("scales") for v in variants):
            others = [probability(image, s) * valid for s in SCALES if s != 1.0]
            scaled = np.mean([prob, *others], axis=0)
        t_forward += time.perf_counter() - t0
        rgb = pp.denormalize(image)
        true_boxes = np.asarray(ex["boxes"], np.float32).reshape(-1, 4)
        for v in variants:
            t0 = time.perf_counter()
            p = prob
            if v.startswith("flip"):
                p = 0.5 * (prob + flipped)
            elif v.startswith("scales"):
                p = scaled
            elif v.startswith("pamr"):
                p = pamr_probability(rgb, prob) * valid
            if v == "hysteresis":
                labels = hysteresis(p)
            else:
                labels = measure.instance_labels(p)
            if v.endswith("grabcut"):
                labels = outlines.outline(labels, rgb, grabcut)
            elif v == "transport":
                labels = outlines.outline(labels, rgb, transport, p)
            seconds[v] += time.perf_counter() - t0
            records[v].append(inst.image_record(labels, p, true_boxes))
            count_errors[v].append(abs(int(labels.max()) - len(true_boxes)))
    rows = {}
    for v in variants:
        m = inst.extent_metrics(records[v])
        rows[v] = {k: float(m[k]) for k in KEYS}
        rows[v]["by_size"] = {k: float(m[k]) for k in inst.SIZE_KEYS}
        rows[v]["instances_mae"] = float(np.mean(count_errors[v]))
        rows[v]["seconds"] = seconds[v]
    return {
        "workdir": workdir,
        "split": split,
        "images": n,
        "checkpoint_step": int(restored.step),
        "forward_seconds": t_forward,
        "variants": rows,
    }


def table(result: dict) -> str:
    head = "| variant | " + " | ".join(KEYS) + " | instances MAE | seconds |"
    lines = [head, "|" + "---|" * (len(KEYS) + 3)]
    for v, r in result["variants"].items():
        lines.append(
            f"| {v} | "
            + " | ".join(f"{r[k]:.3f}" for k in KEYS)
            + f" | {r['instances_mae']:.3f} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument(
        "--output",
        default="",
        help="results file name in benchmarks/results (default outline_variants[_<limit>].json)",
    )
    args = parser.parse_args()
    variants = variant_list(parser, args.variants, VARIANTS)
    result = run(args.workdir, args.data_dir, args.split, args.limit, variants)
    RESULTS.mkdir(exist_ok=True)
    name = args.output or (
        "outline_variants.json" if not args.limit else f"outline_variants_{args.limit}.json"
    )
    (RESULTS / name).write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))


if __name__ == "__main__":
    main()
