"""Where a train step's time goes, part by part: the frames default and the reference's step.

    python -m benchmarks.step_profile [--batch=8] [--repeats=5] [--preset=alcfcn_ref] \
        [--loss_splits=N] [--trace]
    python -m benchmarks.step_profile --preset=reference --batch=1 --trace

The step is ``configs/frames.py``'s (default preset ``alcfcn_ref``: frozen EfficientNet-Lite0
trunk read from the feature cache, decoder activation branch, 128-feature affinity branch, sparse
random walk, LCFCN loss with its host callback, Adam), at the frames' size (304x541), on the
first ``batch`` training frames shipped in the package with their real clicks. The heads are the
shipped model's (trained), so the probabilities, and with them the blobs the host labels, are
those of a trained model (random heads give one blob per image or thousands). ``--preset=reference``
profiles ``configs/deepfish.py``'s A-LCFCN instead: ResNet-38d trained end to end (no cache,
random weights: the ImageNet ones are not reachable here) on the same frames at short side 256,
batch 1 as the reference trains. Timed, each separately jitted on the same batch (median of
``repeats`` after a compiling call):

  * ``step``: the whole train step, as training builds it (``train.loss_splits`` auto unless
    ``--loss_splits``; the figure ``loss_splits`` says which);
  * ``forward_walk`` / ``forward_nowalk``: the forward (heads from the cached taps, or the whole
    model), with and without the random walk;
  * ``grad_no_host``: forward + backward of a loss with fixed weight maps (the LCFCN loss's BCE
    without its host callback): the device side of the step without the optimizer;
  * ``host_targets``: ``lcfcn_targets.batch_maps`` on the same probabilities, on the host alone
    (connected components, watershed, the dense maps), threaded as in the step
    (``host_targets_core_s``: the CPU time of all its threads);
  * ``data``: putting one batch (cached taps, fp16 in memory, or images) on the devices;
  * ``memory``: the device allocator's peak where the backend reports one (GPU, TPU) and the
    process's peak resident memory.

``step_gflop`` is XLA's count of the step's floating-point operations (``cost_analysis``): with
``grad_no_host`` it gives the rate the device part runs at. The difference
``step - grad_no_host - host_targets`` is the optimizer, the callback's transfers
and what does not overlap. ``--trace`` adds ``trace``: the step's own operations from an XLA
profile, in core milliseconds per step by part (network forward/backward, the walk's affinity
matrix and steps, the full-resolution maps and loss, optimizer, the host callback's duration;
``benchmarks/xla_trace.py``). Results: ``benchmarks/results/step_profile_<device>[_<preset>]
[_splits<N>].json`` (no preset suffix for the default preset).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from alcfcn_jax import sharding as shd
from benchmarks.common import host_info, time_calls

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
# ``--preset=reference``: configs/deepfish.py (ResNet-38d, batch 1 as the reference trains) on the
# shipped frames scaled to the reference's short side (256; 256x456 for these 16:9 frames).
REFERENCE_SHORT_SIDE = 256


def _frames(batch: int, short_side: int | None = None):
    from alcfcn_jax.data import SAMPLE_DIR, boxes
    from alcfcn_jax.data import preprocess as pp

    prep = pp.Preprocessing(short_side or 304, "crop")
    images, points = [], []
    files = sorted((SAMPLE_DIR / "train" / "images").glob("*.jpg"))
    for f in files:
        labels = SAMPLE_DIR / "train" / "labels" / (f.stem + ".txt")
        yolo = boxes.read_yolo(labels)
        if len(yolo) == 0:
            continue
        raw = Image.open(f).convert("RGB")
        out = prep.apply(raw)
        img = out.image
        h, w = img.shape[:2]
        pts = np.zeros((h, w), np.int32)
        for cx, cy, _, _ in yolo:
            top, _, left, _ = out.region
            sy, sx = out.scale
            y, x = (cy * raw.height - top) * sy, (cx * raw.width - left) * sx
            if 0 <= y < h and 0 <= x < w:
                pts[int(y), int(x)] = 1
        images.append(img)
        points.append(pts)
        if len(images) == batch:
            break
    return np.stack(images).astype(np.float32), np.stack(points)


def _memory() -> dict:
    """Peak memory: the device's allocator peak where it reports one (GPU, TPU), and this
    process's peak resident set (on the CPU backend the device's arrays live there too)."""
    import resource

    out = {"process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        out["device_peak_mb"] = round(stats["peak_bytes_in_use"] / 2**20)
    return out


def run(
    batch: int, repeats: int, preset: str, loss_splits: int | None = None, trace: bool = False
) -> dict:
    from flax import nnx

    import configs.frames
    from alcfcn_jax.apps import shipped
    from alcfcn_jax.losses import lcfcn_targets
    from alcfcn_jax.losses.lcfcn import weighted_bce
    from alcfcn_jax.models.outputs import fish_probability
    from alcfcn_jax.train import inputs, loop
    from alcfcn_jax.train import state as train_state
    from alcfcn_jax.train import step as train_step

    reference = preset == "reference"
    if reference:
        import configs.deepfish

        config = configs.deepfish.get_config("alcfcn")
    else:
        config = configs.frames.get_config(preset)
    images, points = _frames(batch, REFERENCE_SHORT_SIDE if reference else None)
    out: dict = {
        "host": host_info(),
        "preset": preset,
        "batch": batch,
        "size": list(images.shape[1:3]),
    }
    mesh = shd.make_mesh()
    out["devices"] = mesh.devices.size
    with jax.set_mesh(mesh):
        # The reference's ResNet-38d has no weights here (random, as its trunk trains); the frames
        # heads are the shipped model's, so the host labels a trained model's blobs.
        trained = None if reference else shipped.load()[0]
        graphs, state = train_state.create_train_state(config, mesh, model=trained)
        model = nnx.merge(graphs.model, state["model"])
        host_batch = {"points": points, "mask": np.full(points.shape, 255, np.int32)}
        if reference:
            host_batch["image"] = images
        else:
            extract = inputs.make_extract(model)
            host_batch.update(
                {f"taps/{k}": np.asarray(v).astype(np.float16) for k, v in extract(images).items()}
            )

        def to_device():
            b = train_step.prepare_batch(
                {
                    k: v.astype(np.float32) if k.startswith("taps/") else v
                    for k, v in host_batch.items()
                }
            )
            return shd.to_global(b, mesh)

        t0 = time.perf_counter()
        for _ in range(repeats):
            jax.block_until_ready(to_device())
        out["data_s"] = (time.perf_counter() - t0) / repeats
        dev_batch = to_device()

        if loss_splits is not None:
            config.train.loss_splits = loss_splits
        kwargs = loop.train_step_kwargs(
            config,
            int(config.train.num_steps),
            model=model,
            per_device_batch=batch // mesh.devices.size,
        )
        out["loss_splits"] = kwargs["loss_splits"]
        step = train_step.make_train_step(graphs, mesh, **kwargs)
        cost = step.lower(state, dev_batch).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        out["step_gflop"] = float(cost.get("flops", float("nan"))) / 1e9
        times = []
        s = state
        s, m = step(s, dev_batch)
        jax.block_until_ready(m)
        for _ in range(repeats):
            t0 = time.perf_counter()
            s, m = step(s, dev_batch)
            jax.block_until_ready(m)
            times.append(time.perf_counter() - t0)
        out["step_s"] = float(np.median(times))
        if trace:
            from benchmarks.xla_trace import profile_parts

            out["trace"], (s, _) = profile_parts(
                step,
                (s, dev_batch),
                repeats,
                full_res=images.shape[1:3],
                advance=lambda result, args: (result[0], args[1]),
            )

        gdef, mstate = graphs.model, s["model"]

        def fwd(st, b, walk):
            m_ = nnx.merge(gdef, st)
            return train_step.forward(m_, b, train=True, walk=walk)

        for walk in (True, False):
            f = jax.jit(lambda st, b, walk=walk: fwd(st, b, walk))
            _, ts = time_calls(f, (mstate, dev_batch), repeats)
            out[f"forward_{'walk' if walk else 'nowalk'}_s"] = float(np.median(ts))

        probs = np.asarray(
            fish_probability(jax.jit(lambda st, b: fwd(st, b, True))(mstate, dev_batch))
        )
        fg = (points == 1).astype(np.int32)
        maps = lcfcn_targets.batch_maps(probs, fg, per_term=False)
        w_fg, w_bg = jnp.asarray(maps[:, 0]), jnp.asarray(maps[:, 1])

        def loss(m_, b):
            p = fish_probability(train_step.forward(m_, b, train=True, walk=True))
            return jnp.mean(weighted_bce(p, w_fg, w_bg))

        # nnx transforms: a model with dropout advances its RNG count inside the gradient.
        g = nnx.jit(nnx.grad(loss, argnums=nnx.DiffState(0, graphs.wrt)))
        _, ts = time_calls(g, (nnx.merge(gdef, mstate), dev_batch), repeats)
        out["grad_no_host_s"] = float(np.median(ts))

        ts, cpu = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            lcfcn_targets.batch_maps(probs, fg, per_term=True)
            ts.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        out["host_targets_s"] = float(np.median(ts))
        # CPU time of all the process's threads: the host's share of the cores.
        out["host_targets_core_s"] = float(np.median(cpu))
        import scipy.ndimage as ndi

        out["blobs_per_image"] = float(
            np.mean([ndi.label(p > 0.5, structure=np.ones((3, 3)))[1] for p in probs])
        )
    out["rest_s"] = out["step_s"] - out["grad_no_host_s"] - out["host_targets_s"]
    out["memory"] = _memory()
    out["loadavg_after"] = host_info()["loadavg"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--preset", default="alcfcn_ref")
    parser.add_argument(
        "--loss_splits", type=int, default=None, help="override train.loss_splits (0 = auto)"
    )
    parser.add_argument("--trace", action="store_true", help="add the XLA profile by part")
    args = parser.parse_args()
    result = run(args.batch, args.repeats, args.preset, args.loss_splits, args.trace)
    RESULTS.mkdir(exist_ok=True)
    device = jax.devices()[0].platform
    suffix = "" if args.preset == "alcfcn_ref" else f"_{args.preset}"
    if args.loss_splits is not None:
        suffix += f"_splits{args.loss_splits}"
    (RESULTS / f"step_profile_{device}{suffix}.json").write_text(
        json.dumps(result, indent=1) + "\n"
    )
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
