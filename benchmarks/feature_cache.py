"""Head-only training with and without the frozen-trunk feature cache.

    python -m benchmarks.feature_cache [--sizes=128x227,304x541] [--batch=8]

For the models of ``configs/frames.py`` (undilated EfficientNet-Lite0 tapped at s3/s5/s6,
decoder head; ``alcfcn``: with the affinity branch, its loss and the sparse random walk;
``lcfcn``: without) and the model the demo used before (``dilated_fc8``: dilated Lite0, ``fc8``
on its 1280-channel head, affinity branch and walk), a train step with the trunk frozen (LCFCN
loss and its host callback included) is timed on:

* ``uncached``: the images (the trunk's forward pass runs inside every step);
* ``uncached_xla_convs``: the same with XLA's own convolutions (``ops.conv.set_conv_impl("xla")``),
  i.e. the uncached step as it ran before the depthwise convolutions were rewritten;
* ``cached``: the trunk's taps (``model.from_taps``), what training on the cache runs;

plus ``extract_s_per_image``, the one-time cost of the cache per image (a variant). Figures are
medians of ``--repeats`` steps after a compiling one, random weights, random clicks.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from alcfcn_jax import sharding as shd
from alcfcn_jax.ops import conv as conv_ops
from alcfcn_jax.train import inputs, loop
from alcfcn_jax.train import state as train_state
from alcfcn_jax.train import step as train_step
from benchmarks.common import host_info, print_json

MODELS = ("frames_alcfcn", "frames_lcfcn", "dilated_fc8")


def _config(model: str):
    import configs.frames
    from configs.deepfish import model_config

    config = configs.frames.get_config("lcfcn" if model == "frames_lcfcn" else "alcfcn")
    if model == "dilated_fc8":
        config.model = model_config(
            backbone="efficientnet_lite0", trunk_mode="single_pass", rw_method="auto"
        )
        config.loss.affinity_weight = 0.0
    config.model.weights = ""  # timing only: random weights
    return config


def _batch(batch: int, h: int, w: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    points = np.full((batch, h, w), 255, np.int32)
    for i in range(batch):
        for _ in range(1 + i % 4):
            points[i, rng.integers(h), rng.integers(w)] = 1
    return {
        "image": rng.normal(size=(batch, h, w, 3)).astype(np.float32),
        "points": points,
        "mask": np.full((batch, h, w), 255, np.int32),
    }


def _time_steps(config, batch_np, repeats: int, *, cached: bool, impl: str) -> dict[str, float]:
    previous = conv_ops.set_conv_impl(impl)
    try:
        mesh = shd.make_mesh(1)
        with jax.set_mesh(mesh):
            graphs, state = train_state.create_train_state(config, mesh)
            step = train_step.make_train_step(
                graphs, mesh, **loop.train_step_kwargs(config, int(config.train.num_steps))
            )
            batch = dict(batch_np)
            extract_s = None
            if cached:
                from flax import nnx

                model = nnx.merge(graphs.model, state["model"])
                extract = inputs.make_extract(model)
                extract(batch["image"])  # compile
                t0 = time.perf_counter()
                taps = extract(batch["image"])
                extract_s = (time.perf_counter() - t0) / len(batch["image"])
                del batch["image"]
                batch.update({f"taps/{k}": np.asarray(v, np.float32) for k, v in taps.items()})
            batch = shd.to_global(batch, mesh)
            t0 = time.perf_counter()
            state, m = step(state, batch)
            jax.block_until_ready(m)
            compile_s = time.perf_counter() - t0
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                state, m = step(state, batch)
                jax.block_until_ready(m)
                times.append(time.perf_counter() - t0)
    finally:
        conv_ops.set_conv_impl(previous)
    out = {
        "first_s": round(compile_s, 2),
        "median_s": round(float(np.median(times)), 4),
        "steps_per_s": round(1.0 / float(np.median(times)), 3),
    }
    if extract_s is not None:
        out["extract_s_per_image"] = round(extract_s, 4)
    return out


def run(sizes=((128, 227), (304, 541)), batch: int = 8, repeats: int = 5) -> dict:
    """Times the three step kinds for each model and image size; returns the figures."""
    out = {"host": host_info(), "batch": batch, "repeats": repeats, "runs": []}
    for model in MODELS:
        config = _config(model)
        for h, w in sizes:
            if model == "dilated_fc8" and h > 128:
                continue  # the previous demo trained at short side 128
            row = {"model": model, "size": f"{h}x{w}"}
            data = _batch(batch, h, w)
            for name, cached, impl in (
                ("cached", True, "auto"),
                ("uncached", False, "auto"),
                ("uncached_xla_convs", False, "xla"),
            ):
                row[name] = _time_steps(config, data, repeats, cached=cached, impl=impl)
                print(model, h, w, name, row[name], flush=True)
            c = row["cached"]["median_s"]
            row["speedup"] = round(row["uncached"]["median_s"] / c, 2)
            row["speedup_vs_xla_convs"] = round(row["uncached_xla_convs"]["median_s"] / c, 2)
            out["runs"].append(row)
    out["loadavg_after"] = host_info()["loadavg"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="128x227,304x541")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    sizes = tuple(tuple(int(v) for v in s.split("x")) for s in args.sizes.split(","))
    print_json(run(sizes, args.batch, args.repeats))


if __name__ == "__main__":
    main()
