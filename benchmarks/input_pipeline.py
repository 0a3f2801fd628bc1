"""Input-pipeline throughput on DeepFish-sized (1920x1080) frames, on this machine's CPU.

Writes a synthetic DeepFish tree of full-size frames into a temporary folder, then measures
(images/second): the direct reader (JPEG decode + resize to 256x455 + normalise), TFDS
preparation, reading prepared examples through ``tfds.data_source``, and the grain training
pipeline (batches of the TFDS source, threads + prefetch). Prints one JSON object.

Usage: ``python benchmarks/input_pipeline.py [--n 24] [--batch 4] [--threads 4]``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time

from alcfcn_jax.data import default_data_config, get_source, synthetic
from alcfcn_jax.data import pipeline as pl


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 2)


def run(n: int = 24, batch: int = 4, threads: int = 4, steps: int = 30) -> dict:
    """Runs the measurements; returns a dict of figures (images/s unless named otherwise)."""
    logging.getLogger("absl").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        spec = synthetic.SyntheticSpec(
            height=1080, width=1920, seg_sizes=(n, 2, 2), loc_sizes=(4, 2, 2), max_fish=3
        )
        t = time.perf_counter()
        root = synthetic.write_tree(os.path.join(tmp, "tree"), spec)
        write_s = time.perf_counter() - t
        cfg = default_data_config("deepfish")
        cfg.data_dir, cfg.tfds_dir = str(root), os.path.join(tmp, "tfds")
        cfg.config_name = "fish_seg"

        cfg.reader = "raw"
        raw = get_source(cfg, "train")
        raw[0]
        t = time.perf_counter()
        for i in range(len(raw)):
            ex = raw[i]
        raw_rate = _rate(len(raw), time.perf_counter() - t)
        shape = list(ex["image"].shape)

        cfg.reader = "tfds"
        t = time.perf_counter()
        src = get_source(cfg, "train")  # prepares all three splits of fish_seg
        prep_rate = _rate(sum(spec.seg_sizes), time.perf_counter() - t)
        src[0]
        t = time.perf_counter()
        for i in range(len(src)):
            src[i]
        tfds_rate = _rate(len(src), time.perf_counter() - t)

        it = pl.train_iterator(src, batch_size=batch, seed=0, flip=True, worker_threads=threads)
        next(it)
        t = time.perf_counter()
        for _ in range(steps):
            b = next(it)
        pipe_rate = _rate(steps * batch, time.perf_counter() - t)
    return {
        "cpu_count": os.cpu_count(),
        "frame": [1080, 1920],
        "example_image_shape": shape,
        "batch_shape": list(b["image"].shape),
        "synthetic_tree_write_s": round(write_s, 2),
        "raw_reader_images_per_s": raw_rate,
        "tfds_prepare_images_per_s": prep_rate,
        "tfds_source_images_per_s": tfds_rate,
        "grain_pipeline_images_per_s": pipe_rate,
        "grain_threads": threads,
        "batch_size": batch,
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--steps", type=int, default=30)
    a = ap.parse_args()
    print(json.dumps(run(a.n, a.batch, a.threads, a.steps), indent=1))
