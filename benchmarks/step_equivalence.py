"""Does the train step as training now builds it compute the same step as before, step by step?

    python -m benchmarks.step_equivalence [--steps=50] [--batch=8]

Two compilations of the frames default's step (``configs/frames.py``, cached taps of the frames
shipped in the package, their real clicks, fresh heads as training starts): the *old* one as
296b361 computed it (the kernel gradient of every convolution by taps, ``set_conv_impl("taps")``,
and the loss over the whole batch, ``loss_splits=1``) and the *new* one as training builds it
now (``"auto"`` convolution paths, ``train.loss_splits`` auto). The old step drives the state
(``state_{t+1} = old(state_t, batch_t)``); at every step the new one runs on the same state and
batch. Per step: the relative difference of the losses and the largest difference of the updated
parameters relative to the largest update.

LCFCN's targets are discontinuous in the probabilities (blobs at p > 0.5, argmax/argmin pixels,
watershed lines): a float32 rounding difference that moves one pixel across 0.5 changes a blob
and the loss by a finite amount. Two runs of whole trainings therefore part ways after a few
steps (``benchmarks.step_side_by_side``'s logged losses), and only a step-by-step comparison on
one trajectory shows whether the two compute the same function. A step whose loss differs by more
than ``TOLERANCE`` is counted as a flip. Results: ``benchmarks/results/step_equivalence.json``.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from alcfcn_jax import sharding as shd
from benchmarks.common import host_info

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
# float32 rounding of a loss summed over ~1.3 M pixels: relative differences below this are
# rounding; above it a blob or an argmax pixel changed.
TOLERANCE = 1e-4


def run(steps: int, batch: int) -> dict:
    from flax import nnx

    import configs.frames
    from alcfcn_jax.ops import conv as conv_ops
    from alcfcn_jax.train import inputs, loop
    from alcfcn_jax.train import state as train_state
    from alcfcn_jax.train import step as train_step
    from benchmarks.step_profile import _frames

    config = configs.frames.get_config("alcfcn_ref")
    n_frames = min(steps * batch, 200)
    images, points = _frames(n_frames)
    n_frames = len(images) - len(images) % batch
    mesh = shd.make_mesh(1)
    out: dict = {"host": host_info(), "steps": steps, "batch": batch, "frames": n_frames}
    with jax.set_mesh(mesh):
        graphs, state = train_state.create_train_state(config, mesh)
        model = nnx.merge(graphs.model, state["model"])
        extract = inputs.make_extract(model)
        kwargs = loop.train_step_kwargs(
            config, int(config.train.num_steps), model=model, per_device_batch=batch
        )
        out["new_loss_splits"] = kwargs["loss_splits"]

        # The taps of every batch first, as the feature cache stores them (float16): the steps
        # donate the state the extractor reads.
        host_batches = []
        for i in range(0, n_frames, batch):
            pts = points[i : i + batch]
            taps = extract(images[i : i + batch])
            host_batches.append(
                {
                    "points": pts,
                    "mask": np.full(pts.shape, 255, np.int32),
                    **{f"taps/{k}": np.asarray(v).astype(np.float16) for k, v in taps.items()},
                }
            )

        def batch_at(t: int):
            host = host_batches[t % len(host_batches)]
            host = {
                k: v.astype(np.float32) if k.startswith("taps/") else v for k, v in host.items()
            }
            return shd.to_global(train_step.prepare_batch(host), mesh)

        first = batch_at(0)
        compiled = {}
        previous = conv_ops.set_conv_impl("taps")
        try:
            old_kwargs = {**kwargs, "loss_splits": 1}
            compiled["old"] = (
                train_step.make_train_step(graphs, mesh, **old_kwargs).lower(state, first).compile()
            )
            conv_ops.set_conv_impl("auto")
            compiled["new"] = (
                train_step.make_train_step(graphs, mesh, **kwargs).lower(state, first).compile()
            )
        finally:
            conv_ops.set_conv_impl(previous)

        rows = []
        for t in range(steps):
            b = batch_at(t)
            copy = jax.tree.map(jnp.copy, state)
            new_state, new_m = compiled["new"](copy, b)
            before = jax.tree.map(np.asarray, nnx.filter_state(state["model"], nnx.Param))
            state, old_m = compiled["old"](state, b)
            old_p = nnx.filter_state(state["model"], nnx.Param)
            new_p = nnx.filter_state(new_state["model"], nnx.Param)
            upd = max(
                float(np.max(np.abs(np.asarray(a) - b0)))
                for a, b0 in zip(jax.tree.leaves(old_p), jax.tree.leaves(before))
            )
            diff = max(
                float(np.max(np.abs(np.asarray(a) - np.asarray(c))))
                for a, c in zip(jax.tree.leaves(old_p), jax.tree.leaves(new_p))
            )
            lo, ln = float(old_m["loss"]), float(new_m["loss"])
            rows.append(
                {
                    "step": t + 1,
                    "loss_old": lo,
                    "loss_new": ln,
                    "loss_rel_diff": abs(ln - lo) / max(abs(lo), 1e-12),
                    "param_diff_over_update": diff / max(upd, 1e-30),
                }
            )
    rel = np.array([r["loss_rel_diff"] for r in rows])
    out["tolerance"] = TOLERANCE
    out["flips"] = int(np.sum(rel > TOLERANCE))
    out["loss_rel_diff_median"] = float(np.median(rel))
    out["loss_rel_diff_max_within_tolerance"] = float(np.max(rel[rel <= TOLERANCE], initial=0.0))
    out["param_diff_over_update_median"] = float(
        np.median([r["param_diff_over_update"] for r in rows])
    )
    out["rows"] = rows
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    result = run(args.steps, args.batch)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "step_equivalence.json").write_text(json.dumps(result, indent=1) + "\n")
    summary = {k: v for k, v in result.items() if k != "rows"}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
