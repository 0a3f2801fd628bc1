"""Forward and forward+backward cost of the segmentation networks at DeepFish size (256x455).

Measures, per network: jit compile time, steady-state time per image of an eval forward pass and
of a training forward+backward pass (dropout on, gradients w.r.t. all ``nnx.Param``), and memory:
XLA's static buffer assignment of the compiled step (arguments + outputs + temporaries; the peak
the executable needs) and, on accelerators, the device allocator's peak.

Networks: ResNet-38d A-LCFCN in ``two_pass`` (reference) and ``single_pass`` mode, the LCFCN
baseline (no affinity), EfficientNet-Lite0 A-LCFCN and FCN8-VGG16 (skipped with a note if their
modules are missing).

Usage:
  python -m benchmarks.model_step [--repeats 2] [--height 256] [--width 455] [--batch 1]
                                  [--only resnet38_two_pass,fcn8_vgg16]
Prints one JSON object; ``run()`` returns the same dict.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from alcfcn_jax.models import build_model
from benchmarks.common import time_calls
from configs.deepfish import model_config

_BASE = model_config().to_dict()

NETWORKS: dict[str, dict[str, Any]] = {
    "resnet38_two_pass": dict(_BASE),
    "resnet38_single_pass": dict(_BASE, trunk_mode="single_pass"),
    "resnet38_lcfcn_no_affinity": dict(_BASE, with_affinity=False),
    "efficientnet_lite0_two_pass": dict(_BASE, backbone="efficientnet_lite0"),
    "efficientnet_lite0_single_pass": dict(
        _BASE, backbone="efficientnet_lite0", trunk_mode="single_pass"
    ),
    "fcn8_vgg16": dict(_BASE, name="fcn8_vgg16", with_affinity=False),
}


def _memory(compiled) -> dict[str, int] | None:
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    arg = int(analysis.argument_size_in_bytes)
    out = int(analysis.output_size_in_bytes)
    tmp = int(analysis.temp_size_in_bytes)
    alias = int(analysis.alias_size_in_bytes)
    return {
        "argument_bytes": arg,
        "output_bytes": out,
        "temp_bytes": tmp,
        "total_bytes": arg + out + tmp - alias,
    }


def _device_peak() -> int | None:
    stats = jax.devices()[0].memory_stats()
    return None if not stats else int(stats.get("peak_bytes_in_use", 0)) or None


def bench_network(
    cfg: dict[str, Any], *, height: int, width: int, batch: int, repeats: int
) -> dict[str, Any]:
    """Benchmarks one network configuration; returns its figures (times in seconds per image)."""
    t0 = time.perf_counter()
    model = build_model(cfg, rngs=nnx.Rngs(params=0, dropout=1))
    build_s = time.perf_counter() - t0
    graphdef, state = nnx.split(model)
    n_params = sum(int(v.size) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    del model
    x = jax.random.normal(jax.random.key(0), (batch, height, width, 3), jnp.float32)

    def forward(st, im):
        return nnx.merge(graphdef, st)(im, train=False)

    def step_fn(st, im):
        m = nnx.merge(graphdef, st)

        def loss(mm):
            # Any scalar of the output exercises the full backward pass (incl. the random walk).
            return jnp.mean(jax.nn.log_softmax(mm(im, train=True), axis=-1)[..., 1])

        return nnx.value_and_grad(loss, argnums=nnx.DiffState(0, nnx.Param))(m)

    fwd = jax.jit(forward)
    step = jax.jit(step_fn)
    out: dict[str, Any] = {"trainable_params": n_params, "build_s": round(build_s, 3)}
    for label, fn in (("forward", fwd), ("forward_backward", step)):
        try:
            compiled = fn.lower(state, x).compile()
            first, times = time_calls(compiled, (state, x), repeats)
        except Exception as e:  # noqa: BLE001 - report a broken network, keep benchmarking
            out[label] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0]}"}
            continue
        out[label] = {
            "first_call_s": round(first, 3),
            "per_image_s": [round(t / batch, 4) for t in times],
            "per_image_min_s": round(min(times) / batch, 4) if times else None,
            "xla_memory": _memory(compiled),
        }
    out["device_peak_bytes"] = _device_peak()
    return out


def run(
    *,
    height: int = 256,
    width: int = 455,
    batch: int = 1,
    repeats: int = 2,
    only: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Runs the benchmark over ``NETWORKS`` (or the ``only`` subset) and returns a JSON-able dict."""
    names = list(NETWORKS) if not only else list(only)
    unknown = [n for n in names if n not in NETWORKS]
    if unknown:
        raise ValueError(f"unknown networks {unknown}; choose from {list(NETWORKS)}")
    result: dict[str, Any] = {
        "device": str(jax.devices()[0].device_kind),
        "platform": jax.devices()[0].platform,
        "host": platform.processor() or platform.machine(),
        "jax": jax.__version__,
        "input": [batch, height, width, 3],
        "repeats": repeats,
        "networks": {},
    }
    for name in names:
        try:
            result["networks"][name] = bench_network(
                NETWORKS[name], height=height, width=width, batch=batch, repeats=repeats
            )
        except ModuleNotFoundError as e:  # network written elsewhere and not present
            result["networks"][name] = {"skipped": f"module missing: {e}"}
        print(json.dumps({name: result["networks"][name]}), flush=True)
    nets = result["networks"]
    two, one = nets.get("resnet38_two_pass", {}), nets.get("resnet38_single_pass", {})
    ratios = {
        k: round(one[k]["per_image_min_s"] / two[k]["per_image_min_s"], 3)
        for k in ("forward", "forward_backward")
        if "per_image_min_s" in one.get(k, {}) and "per_image_min_s" in two.get(k, {})
    }
    if ratios:
        result["single_over_two_pass"] = ratios
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=455)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", type=str, default="", help="comma-separated network names")
    args = parser.parse_args()
    only = tuple(n for n in args.only.split(",") if n) or None
    print(
        json.dumps(
            run(
                height=args.height,
                width=args.width,
                batch=args.batch,
                repeats=args.repeats,
                only=only,
            ),
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
