"""Evaluation throughput (images/second) of ``alcfcn_jax.eval.evaluation.evaluate``.

Measures, on random-weight models and random images of a chosen size: the whole evaluation
(sharded forward pass + on-device confusion + host blob labelling, counting and GAME) and the
model's forward pass alone, so the host share is visible. Also the per-fish measurement
(``measure.instance_labels`` + ``measure_fish``) rate on a synthetic probability map.
Defaults: the tiny backbone at 96x160 on a CPU; the ResNet-38 A-LCFCN at DeepFish's 256x455 on an
accelerator. Prints one JSON object.

Usage: ``python benchmarks/evaluation.py [--backbone resnet38] [--size 256,455] [--n 16]
[--batch 8]``
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import ml_collections
import numpy as np
from flax import nnx


def _batches(n: int, batch: int, size: tuple[int, int], seed: int = 0):
    """``n`` random images in batches, with masks and points shaped like the eval pipeline's."""
    rng = np.random.default_rng(seed)
    h, w = size
    out = []
    for start in range(0, n, batch):
        b = min(batch, n - start)
        mask = np.zeros((b, h, w), np.int32)
        pts = np.full((b, h, w), 255, np.int32)
        for i in range(b):
            for _ in range(3):  # three rectangular "fish" per image
                y, x = rng.integers(0, h - 12), rng.integers(0, w - 24)
                mask[i, y : y + 10, x : x + 20] = 1
                pts[i, y + 5, x + 10] = 1
        out.append(
            {
                "image": rng.normal(0, 1, (b, h, w, 3)).astype(np.float32),
                "mask": mask,
                "points": pts,
                "count": (pts == 1).sum(axis=(1, 2)).astype(np.int32),
                "habitat": np.asarray(["h"] * b),
                "id": np.asarray([f"im{start + i}" for i in range(b)]),
                "valid": np.ones((b,), bool),
            }
        )
    return out


def run(
    backbone: str | None = None,
    size: tuple[int, int] | None = None,
    n: int = 16,
    batch: int | None = None,
    repeats: int = 2,
) -> dict:
    """Runs the measurements; returns a dict of figures."""
    from alcfcn_jax import sharding as shd
    from alcfcn_jax.eval import evaluation, measure
    from alcfcn_jax.models import build_model

    on_cpu = jax.devices()[0].platform == "cpu"
    backbone = backbone or ("tiny" if on_cpu else "resnet38")
    size = tuple(size or ((96, 160) if on_cpu else (256, 455)))
    mesh = shd.make_mesh()
    n_dev = mesh.devices.size
    batch = batch or n_dev
    batch = -(-batch // n_dev) * n_dev
    n = max(n, batch)
    model_cfg = ml_collections.ConfigDict(
        {"name": "alcfcn", "backbone": backbone, "n_classes": 2, "with_affinity": True}
    )
    model_cfg.update(trunk_mode="two_pass", beta=8.0, logt=4, radius=5, rw_method="dense")
    model_cfg.update(dtype="float32", weights="", weights_allow_missing=())
    model = build_model(model_cfg, rngs=nnx.Rngs(0))
    batches = _batches(n, batch, size)

    evaluation.evaluate(model, batches[:1], mesh=mesh)  # compile
    t = time.perf_counter()
    for _ in range(repeats):
        res = evaluation.evaluate(model, batches, mesh=mesh)
    eval_rate = repeats * n / (time.perf_counter() - t)

    fwd = evaluation.make_forward(model, mesh=mesh)
    images = [shd.to_global({"x": b["image"]}, mesh)["x"] for b in batches if len(b["id"]) == batch]
    jax.block_until_ready(fwd(images[0]))
    t = time.perf_counter()
    for _ in range(repeats):
        for x in images:
            out = fwd(x)
        jax.block_until_ready(out)
    fwd_rate = repeats * len(images) * batch / (time.perf_counter() - t)

    # Per-fish measurement on a 256x455 map with 6 elongated fish, two of them touching.
    yy, xx = np.mgrid[0:256, 0:455]
    fish = np.zeros((256, 455), bool)
    for k, (cy, cx) in enumerate(
        [(60, 80), (60, 118), (150, 200), (200, 320), (90, 380), (30, 250)]
    ):
        fish |= ((xx - cx) / 22.0) ** 2 + ((yy - cy) / (6.0 + k % 2)) ** 2 <= 1
    prob = np.where(fish, 0.9, 0.05)
    t = time.perf_counter()
    for _ in range(10):
        labels = measure.instance_labels(prob)
        rows = measure.measure_fish(labels, prob, original_size=(1080, 1920))
    measure_rate = 10 / (time.perf_counter() - t)
    return {
        "device": str(jax.devices()[0].device_kind),
        "num_devices": n_dev,
        "backbone": backbone,
        "image_size": list(size),
        "batch_size": batch,
        "images": n,
        "evaluate_images_per_s": round(eval_rate, 2),
        "forward_only_images_per_s": round(fwd_rate, 2),
        "host_share_of_eval_time": round(max(0.0, 1 - eval_rate / fwd_rate), 3),
        "measure_maps_per_s_256x455": round(measure_rate, 2),
        "measure_fish_found": len(rows),
        "check_miou": round(float(res["miou"]), 4),
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default=None, help="tiny | resnet38 | efficientnet_lite0")
    ap.add_argument("--size", default=None, help="H,W (default 96,160 on CPU, 256,455 else)")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    sz = tuple(int(v) for v in a.size.split(",")) if a.size else None
    print(json.dumps(run(a.backbone, sz, a.n, a.batch, a.repeats), indent=1))
