"""Train-step throughput of A-LCFCN (ResNet-38d, 256x455) and the host-callback share of a step.

``python -m benchmarks.train_step [--steps N] [--height H --width W] [--backbone B]`` prints JSON;
``run()`` returns the same dict. For each trunk mode (``two_pass``, the reference, and
``single_pass``) it builds the full train step of ``configs/deepfish.py`` (random init, batch one
image per device on every local device), compiles it, and times ``steps`` steps on random images
with a few clicked fish each:

* ``steps_per_second``, ``images_per_second`` (global batch / step time);
* ``host_callback_s_per_step``: wall seconds spent inside the LCFCN host callback per step
  (summed over the per-shard calls) and ``host_callback_share`` = that / step time. Calls of
  different shards may overlap in time, so on several devices the share can exceed what the
  callback adds to the step.

``torch_reference`` (CPU, one device, torch installed; ``--no_reference`` skips it): the same
step of the PyTorch replica of the reference (``benchmarks/torch_reference.py``: two trunk passes,
the dead FCN8-VGG16 forward, dense random walk, LCFCN loss, Adam) timed right after ours in the
same process, and ``<mode>_over_reference`` = our median step time / the reference's.

Not a test: on a 2-core CPU one ResNet-38d step at 256x455 takes tens of seconds.
"""

from __future__ import annotations

import argparse
import threading
import time
from typing import Any

import jax
import numpy as np

from benchmarks.common import host_info, print_json


class _CallbackTimer:
    """Wraps the LCFCN host function to accumulate the wall time spent in it."""

    def __init__(self) -> None:
        from alcfcn_jax.losses import lcfcn

        self._module = lcfcn
        self._inner = lcfcn._host_maps
        self._lock = threading.Lock()
        self.seconds = 0.0
        self.calls = 0

    def __enter__(self) -> _CallbackTimer:
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return self._inner(*args, **kwargs)
            finally:
                with self._lock:
                    self.seconds += time.perf_counter() - t0
                    self.calls += 1

        self._module._host_maps = timed
        return self

    def __exit__(self, *exc) -> None:
        self._module._host_maps = self._inner

    def reset(self) -> None:
        with self._lock:
            self.seconds, self.calls = 0.0, 0


def _batch(n: int, h: int, w: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random normalised images with 1-6 clicked fish each, unlabelled elsewhere."""
    rng = np.random.default_rng(seed)
    points = np.full((n, h, w), 255, np.int32)
    for i in range(n):
        for _ in range(1 + i % 6):
            points[i, rng.integers(h), rng.integers(w)] = 1
    return {
        "image": rng.normal(size=(n, h, w, 3)).astype(np.float32),
        "points": points,
        "mask": np.full((n, h, w), 255, np.int32),
    }


def _one_mode(config, *, steps: int, height: int, width: int) -> dict[str, Any]:
    from alcfcn_jax import sharding as shd
    from alcfcn_jax.train import state as train_state
    from alcfcn_jax.train import step as train_step

    mesh = shd.make_mesh()
    n = mesh.devices.size
    batch = _batch(n, height, width)
    with jax.set_mesh(mesh), _CallbackTimer() as timer:
        graphs, state = train_state.create_train_state(config, mesh)
        step = train_step.make_train_step(
            graphs, mesh, loss_name=config.loss.name, learning_rate=float(config.optim.lr)
        )
        global_batch = shd.to_global(batch, mesh)
        t0 = time.perf_counter()
        state, metrics = step(state, global_batch)
        jax.block_until_ready(metrics)
        compile_s = time.perf_counter() - t0
        timer.reset()
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            state, metrics = step(state, global_batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t0)
        callback_s = timer.seconds / steps
    step_s = float(np.median(times))
    return {
        "global_batch": n,
        "first_step_s": round(compile_s, 3),
        "step_s_median": round(step_s, 4),
        "step_s_min": round(float(np.min(times)), 4),
        "steps_per_second": round(1.0 / step_s, 4),
        "images_per_second": round(n / step_s, 4),
        "host_callback_s_per_step": round(callback_s, 4),
        "host_callback_share": round(callback_s / step_s, 4),
        "loss": float(metrics["loss"]),
    }


def run(
    *,
    steps: int = 3,
    height: int = 256,
    width: int = 455,
    backbone: str = "resnet38",
    trunk_modes: tuple[str, ...] = ("two_pass", "single_pass"),
    rw_method: str | None = None,
    reference: bool = True,
) -> dict[str, Any]:
    """Times the A-LCFCN train step; returns a JSON-able dict (see the module docstring)."""
    import configs.deepfish

    result: dict[str, Any] = {
        "benchmark": "train_step",
        **host_info(),
        "n_devices": jax.device_count(),
        "image_size": [height, width],
        "backbone": backbone,
        "rw_method": rw_method,
        "timed_steps": steps,
        "modes": {},
    }
    for mode in trunk_modes:
        config = configs.deepfish.get_config()
        config.model.backbone = backbone
        config.model.trunk_mode = mode
        if rw_method is not None:
            config.model.rw_method = rw_method
        result["rw_method"] = config.model.rw_method
        result["modes"][mode] = _one_mode(config, steps=steps, height=height, width=width)
    if reference:
        result["torch_reference"] = _reference(result["modes"], steps=steps, h=height, w=width)
    return result


def _reference(modes: dict[str, Any], *, steps: int, h: int, w: int) -> dict[str, Any]:
    """The PyTorch replica of the reference step (benchmarks/torch_reference.py), same run.

    Only meaningful against our CPU figures (the reference ran on CPU) and for one image per step.
    """
    if jax.default_backend() != "cpu" or jax.device_count() != 1:
        return {"skipped": "the reference comparison needs the CPU backend with one device"}
    try:
        import torch  # noqa: F401
    except ImportError:
        return {"skipped": "torch is not installed (pip install -e '.[torch]')"}
    from benchmarks import torch_reference

    ref = torch_reference.run(h, w, steps, count_flops=False)
    keep = ("step_s_median", "step_s_min", "phase_s_median", "torch", "num_threads")
    out = {k: ref[k] for k in keep if k in ref}
    for mode, figures in modes.items():
        out[f"{mode}_over_reference"] = round(figures["step_s_median"] / ref["step_s_median"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=455)
    parser.add_argument("--backbone", default="resnet38")
    parser.add_argument("--rw_method", default=None, help="default: the config's")
    parser.add_argument("--trunk_modes", default="two_pass,single_pass")
    parser.add_argument("--no_reference", action="store_true", help="skip the PyTorch replica")
    args = parser.parse_args()
    print_json(
        run(
            steps=args.steps,
            height=args.height,
            width=args.width,
            backbone=args.backbone,
            rw_method=args.rw_method,
            trunk_modes=tuple(m for m in args.trunk_modes.split(",") if m),
            reference=not args.no_reference,
        )
    )


if __name__ == "__main__":
    main()
