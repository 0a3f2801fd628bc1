"""LCFCN host targets: faithful reference port vs the fast implementation, on the 256x455 fixture.

    python -m benchmarks.lcfcn_targets          # prints JSON

Measures (median and min over interleaved repeats, milliseconds):
* ``reference_port_ms``: ``reference/lcfcn_numpy.compute_loss`` (statement-by-statement port of the
  PyTorch reference's targets + BCE means), the baseline;
* ``ours_ms``: ``compute_targets`` + the weighted BCE on the host, single-threaded;
* every figure has wall (``median``, ``min``) and process-CPU (``cpu_median``, ``cpu_min``) times;
* ``ours_threaded_ms``: same with the split watersheds running concurrently on a thread pool;
* ``jit_loss_ms``: the jitted device ``lcfcn_loss`` (callback included) on the default backend;
* a per-stage breakdown of one fast call, and a batch of 8 images sequential vs thread pool.
Reference and ours run alternately in one loop so machine load affects both alike.
"""

from __future__ import annotations

import json
import os
import pathlib
import time

import numpy as np

from reference import lcfcn_numpy

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "reference" / "lcfcn_deepfish_size.npz"


def _load():
    with np.load(FIXTURE) as d:
        logits = d["logits"][0].astype(np.float32)
        points = d["points"][0]
    e = np.exp(logits - logits.max(0))
    return (e[1] / e.sum(0)).astype(np.float32), points


def _stats(wall: list[float], cpu: list[float]) -> dict[str, float]:
    w = np.asarray(wall) * 1e3
    c = np.asarray(cpu) * 1e3
    return {
        "median": float(np.median(w)),
        "min": float(w.min()),
        "cpu_median": float(np.median(c)),
        "cpu_min": float(c.min()),
    }


def _interleaved(fns: dict, repeats: int) -> dict[str, dict[str, float]]:
    """Wall and process-CPU time of each function, the functions alternating in one loop.

    CPU time (all threads of this process) is the fairer single-threaded comparison on a shared
    machine; wall time is what a thread pool improves.
    """
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for f in fns.values():  # warm-up (imports, pools, jit)
        f()
    for _ in range(repeats):
        for k, f in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            f()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    return {k: _stats(wall[k], cpu[k]) for k in fns}


def _stage_breakdown(probs, points, repeats: int) -> dict[str, dict[str, float]]:
    from skimage.segmentation import watershed

    from alcfcn_jax.losses import lcfcn_targets as lt
    from alcfcn_jax.ops import components as cc

    tophat = cc.black_tophat_square(probs)
    markers = cc.marker_image(points == 1)
    seg = watershed(tophat, markers)
    blobs, n = cc.label8(probs > 0.5)
    return _interleaved(
        {
            "validate": lambda: lt.validate_inputs(probs, points),
            "label8": lambda: cc.label8(probs > 0.5),
            "blob_bincounts": lambda: (
                cc.blob_sizes(blobs, n),
                np.bincount(blobs.ravel()[points.ravel() == 1], minlength=n + 1),
            ),
            "black_tophat_fast": lambda: cc.black_tophat_square(probs),
            "watershed_one": lambda: watershed(tophat, markers),
            "boundaries_fast": lambda: cc.thick_boundaries(seg),
        },
        repeats,
    )


def run(repeats: int = 15) -> dict:
    """Runs the benchmark and returns the figures (milliseconds)."""
    import jax
    import jax.numpy as jnp

    from alcfcn_jax.losses import lcfcn_targets as lt
    from alcfcn_jax.losses.lcfcn import lcfcn_loss

    ref = lcfcn_numpy
    probs, points = _load()
    pool = lt.default_pool()

    def ours():
        return lt.loss_from_targets(probs, lt.compute_targets(probs, points))

    def ours_threaded():
        return lt.loss_from_targets(probs, lt.compute_targets(probs, points, executor=pool))

    jit_loss = jax.jit(lcfcn_loss)
    p_dev = jnp.asarray(probs[None])
    pts_dev = jnp.asarray(points[None].astype(np.int32))

    single = _interleaved(
        {
            "reference_port_ms": lambda: ref.compute_loss(points, probs),
            "ours_ms": ours,
            "ours_threaded_ms": ours_threaded,
            "jit_loss_ms": lambda: jax.block_until_ready(jit_loss(p_dev, pts_dev)),
        },
        repeats,
    )
    # Identity check on this input, so the timing is of a correct result.
    ref_loss = ref.compute_loss(points, probs)
    our_loss = sum(ours().values())

    # Batch of 8 distinct images: the fixture shifted/flipped.
    batch_p = np.stack([np.roll(probs, 37 * i, axis=1)[:, :: (-1) ** i] for i in range(8)])
    batch_q = np.stack([np.roll(points, 37 * i, axis=1)[:, :: (-1) ** i] for i in range(8)])
    batch = _interleaved(
        {
            "reference_port_sequential_ms": lambda: [
                ref.compute_loss(batch_q[i], batch_p[i]) for i in range(8)
            ],
            "ours_sequential_ms": lambda: lt.compute_targets_batch(batch_p, batch_q, threads=False),
            "ours_thread_pool_ms": lambda: lt.compute_targets_batch(batch_p, batch_q, threads=True),
        },
        max(3, repeats // 3),
    )
    r = single["reference_port_ms"]["median"]
    return {
        "fixture": "lcfcn_deepfish_size (256x455, 7 points, 287 blobs)",
        "repeats": repeats,
        "cpu_count": os.cpu_count(),
        "jax_backend": jax.default_backend(),
        "loss_reference_port": ref_loss,
        "loss_ours": our_loss,
        "single_image": single,
        "ratio_ours_to_reference_median": single["ours_ms"]["median"] / r,
        "ratio_ours_threaded_to_reference_median": single["ours_threaded_ms"]["median"] / r,
        "ratio_ours_to_reference_cpu_median": single["ours_ms"]["cpu_median"]
        / single["reference_port_ms"]["cpu_median"],
        "stages_ms": _stage_breakdown(probs, points, repeats),
        "batch_of_8": batch,
        "batch_speedup_thread_pool_vs_sequential": batch["ours_sequential_ms"]["median"]
        / batch["ours_thread_pool_ms"]["median"],
        "batch_thread_pool_vs_one_image_ours": batch["ours_thread_pool_ms"]["median"]
        / single["ours_ms"]["median"],
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
