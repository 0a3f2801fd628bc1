"""Pseudo instances of the training frames scored against their boxes (a diagnostic).

    python -m benchmarks.pseudo_mask_quality --workdir=runs/alcfcn_ref --data_dir=$D \
        [--limit=150] [--variants=click_blobs,click_grabcut,blots,blots_grabcut]

The pseudo-mask writer turns a stage-1 model's map of each training frame, with the frame's
clicks, into instances; stage 2 and the affinity labels learn from them. This scores those
instances against the frames' true boxes with the extent figures of ``evaluate.py``
(``eval/instances.py``), on ``--limit`` training frames spread evenly over the split. The boxes
are used here alone, to compare the ways of drawing instances from clicks, never for training.
Variants (``config.instances.pseudo_masks`` and ``outline``):

  * ``click_blobs``: ``click_instances`` as cut (``outline=blobs``);
  * ``click_grabcut``: ``click_instances`` grown by GrabCut (the masks of ``:alcfcn_outlines``);
  * ``blots``: point blots and expanding distance fields (``eval/point_blots.py``);
  * ``blots_grabcut``: the blots grown by GrabCut.

Results: ``benchmarks/results/pseudo_mask_quality.json`` and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np

from benchmarks.common import variant_list
from benchmarks.outline_variants import KEYS

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
VARIANTS = ("click_blobs", "click_grabcut", "blots", "blots_grabcut")


def run(workdir: str, data_dir: str, limit: int, variants: list[str]) -> dict:
    from alcfcn_jax.apps import run_config
    from alcfcn_jax.data import preprocess as pp
    from alcfcn_jax.eval import evaluation, inference, outlines, report
    from alcfcn_jax.eval import instances as inst
    from alcfcn_jax.eval.point_blots import point_blots
    from alcfcn_jax.models import outputs
    from alcfcn_jax.train.config import resolve

    config = run_config.get_config(workdir)
    config.data.data_dir = data_dir
    config.data.flip = False
    config = resolve(config)
    restored = inference.restore(config, workdir, "best")
    forward = evaluation.make_forward(restored.model)
    source = restored.source(report.resolve_split(restored.data_cfg, "train"))
    picks = np.linspace(0, len(source) - 1, min(limit, len(source))).astype(int)
    grabcut = outlines.InstanceSettings(outline="grabcut")
    records: dict[str, list] = {v: [] for v in variants}
    seconds = dict.fromkeys(variants, 0.0)
    for i in picks:
        ex = source[int(i)]
        image = np.asarray(ex["image"], np.float32)
        size = image.shape[:2]
        logits = forward(image[None])
        prob = np.asarray(outputs.fish_probability(outputs.upsample_logits(logits, size)))[0]
        if ex.get("pad") is not None:
            prob = prob * np.asarray(ex["pad"], bool)
        rgb = pp.denormalize(image)
        points = np.asarray(ex["points"])
        true_boxes = np.asarray(ex["boxes"], np.float32).reshape(-1, 4)
        for v in variants:
            t0 = time.perf_counter()
            if v.startswith("click"):
                labels = outlines.click_instances(prob, points, grabcut)
            else:
                labels = point_blots(rgb, prob, points)
            if v.endswith("grabcut"):
                labels = outlines.outline(labels, rgb, grabcut)
            seconds[v] += time.perf_counter() - t0
            records[v].append(inst.image_record(labels, prob, true_boxes))
    rows = {}
    for v in variants:
        m = inst.extent_metrics(records[v])
        rows[v] = {k: float(m[k]) for k in KEYS}
        rows[v]["seconds_per_image"] = seconds[v] / len(picks)
    return {"workdir": workdir, "split": "train", "images": len(picks), "variants": rows}


def table(result: dict) -> str:
    lines = [
        "| variant | " + " | ".join(KEYS) + " | s / image |",
        "|" + "---|" * (len(KEYS) + 2),
    ]
    for v, r in result["variants"].items():
        cells = " | ".join(f"{r[k]:.3f}" for k in KEYS)
        lines.append(f"| {v} | {cells} | {r['seconds_per_image']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--limit", type=int, default=150)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    variants = variant_list(parser, args.variants, VARIANTS)
    result = run(args.workdir, args.data_dir, args.limit, variants)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pseudo_mask_quality.json").write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))


if __name__ == "__main__":
    main()
