"""Random-walk refinement benchmark: dense vs sparse, forward and forward + backward.

    python -m benchmarks.random_walk                # full run (several minutes on 2 CPU cores)
    python -m benchmarks.random_walk --quick        # 256x455 only, no threshold sweep

Prints JSON: per image size, jit'd ``refine`` time (forward; forward + backward w.r.t. logits and
affinity features) and XLA's compiled memory estimate, for ``method="dense"`` where the N x N
matrices fit and ``method="sparse"``; plus the dense/sparse crossover sweep that sets
``alcfcn_jax.ops.random_walk.AUTO_DENSE_MAX_NODES``. Inputs: 448 feature channels, 2 classes,
beta 8, logt 4, radius 5 (the A-LCFCN configuration).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from alcfcn_jax.ops import random_walk as rw
from benchmarks.common import compiled_memory, host_info, print_json, time_jitted

SIZES = ((256, 455), (512, 910), (1080, 1920))
# Grid sizes (h8, w8) of the crossover sweep, around the DeepFish training grid (32 x 57).
SWEEP_GRIDS = ((6, 10), (8, 12), (12, 20), (16, 28), (24, 43), (32, 57))
CHANNELS = 448
CLASSES = 2
# Dense fwd+bwd runs ~12 N x N matmuls (2 N^3 flops each) and holds several N x N float32
# matrices: at 512x910 (N = 7296) that is ~9 TFLOP, many minutes per run on a 2-core CPU, and at
# 1080x1920 (N = 32400) each matrix alone is 3.9 GiB. Larger grids are skipped with a note.
DENSE_MAX_NODES = 2048


def _inputs(hh: int, ww: int, batch: int = 1):
    k1, k2 = jax.random.split(jax.random.key(0))
    logits = jax.random.normal(k1, (batch, hh, ww, CLASSES), jnp.float32)
    feats = 0.1 * jax.random.normal(k2, (batch, -(-hh // 8), -(-ww // 8), CHANNELS), jnp.float32)
    return logits, feats


def _fns(method: str):
    def fwd(logits, feats):
        return rw.refine(logits, feats, method=method)

    def loss(logits, feats):
        return jnp.sum(jnp.sin(rw.refine(logits, feats, method=method)))

    return fwd, jax.value_and_grad(loss, argnums=(0, 1))


def measure(hh: int, ww: int, method: str, repeats: int = 3) -> dict:
    """Times forward and forward+backward ``refine`` at one image size."""
    logits, feats = _inputs(hh, ww)
    fwd, fwd_bwd = _fns(method)
    return {
        "fwd": time_jitted(fwd, logits, feats, repeats=repeats),
        "fwd_bwd": time_jitted(fwd_bwd, logits, feats, repeats=repeats),
        "fwd_bwd_memory": compiled_memory(fwd_bwd, logits, feats),
    }


def sweep_threshold(grids=SWEEP_GRIDS, repeats: int = 2) -> dict:
    """Forward+backward time of dense vs sparse over node counts; reports the crossover."""
    rows = []
    for h8, w8 in grids:
        logits, feats = _inputs(8 * h8, 8 * w8)
        row = {"grid": [h8, w8], "nodes": h8 * w8}
        for method in ("dense", "sparse"):
            row[f"{method}_fwd_bwd_s"] = time_jitted(
                _fns(method)[1], logits, feats, repeats=repeats
            )["min_s"]
        rows.append(row)
    dense_wins = [r["nodes"] for r in rows if r["dense_fwd_bwd_s"] <= r["sparse_fwd_bwd_s"]]
    return {
        "rows": rows,
        "largest_grid_where_dense_is_faster": max(dense_wins) if dense_wins else None,
        "configured_AUTO_DENSE_MAX_NODES": rw.AUTO_DENSE_MAX_NODES,
    }


def run(quick: bool = False, dense_max_nodes: int = DENSE_MAX_NODES) -> dict:
    """Runs the benchmark and returns its figures (for ``benchmarks/run.py``).

    Args:
        quick: only the 256x455 size and no crossover sweep.
        dense_max_nodes: largest stride-8 grid (nodes) on which the dense walk is timed.
    """
    result = {"host": host_info(), "sizes": {}}
    for hh, ww in SIZES[:1] if quick else SIZES:
        nodes = (-(-hh // 8)) * (-(-ww // 8))
        entry = {"nodes": nodes}
        if nodes <= dense_max_nodes:
            entry["dense"] = measure(hh, ww, "dense")
        else:
            gib = 4 * nodes * nodes / 2**30
            entry["dense"] = {
                "skipped": f"N={nodes} > dense_max_nodes={dense_max_nodes}: each N x N float32 "
                f"matrix is {gib:.2f} GiB and each of the ~12 fwd+bwd matmuls costs "
                f"{2 * nodes**3 / 1e12:.2f} TFLOP"
            }
        entry["sparse"] = measure(hh, ww, "sparse")
        result["sizes"][f"{hh}x{ww}"] = entry
    if not quick:
        result["auto_threshold"] = sweep_threshold()
    result["host_after"] = host_info()["loadavg"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256x455 only, no sweep")
    parser.add_argument("--dense-max-nodes", type=int, default=DENSE_MAX_NODES)
    args = parser.parse_args()
    print_json(run(quick=args.quick, dense_max_nodes=args.dense_max_nodes))


if __name__ == "__main__":
    main()
