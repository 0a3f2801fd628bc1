"""Convolution forward + backward: XLA's own gradient vs ``ops/conv.py`` (kernel gradient by taps).

``python -m benchmarks.conv [--repeats 3]`` prints JSON; ``run()`` returns the same dict
(``benchmarks/results/conv_cpu.json`` holds the last run). For the distinct convolution shapes of
ResNet-38d at 256x455 (stride-8 grid 32x57) and of the frames decoder it times one jitted forward +
backward (gradients w.r.t. input and kernel) with ``set_conv_impl("xla")`` and with
``set_conv_impl("taps")``, and reports GFLOP/s (3 x the forward's 2*N*Ho*Wo*k*k*Cin*Cout) and the
speed-up of the taps. Never part of the test suite.
"""

from __future__ import annotations

import argparse
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alcfcn_jax.ops import conv as conv_ops
from benchmarks.common import host_info, print_json, time_jitted

# (name, Cin, Cout, kernel, stride, dilation, input H, input W, batch): ResNet-38d at 256x455
# (batch 1, as the reference trains), then the frames decoder's convolutions on the stride-8 grid
# of a batch of 8 at 304x541 (the 3x3 ones at widths 64-192 place ``ops.conv.SMALL_KXK_PAIRS``).
SHAPES = (
    ("conv1a", 3, 64, 3, 1, 1, 256, 455, 1),
    ("b2_conv_branch2a", 64, 128, 3, 2, 1, 256, 455, 1),
    ("b2_1_conv_3x3", 128, 128, 3, 1, 1, 128, 228, 1),
    ("b3_conv_branch2a", 128, 256, 3, 2, 1, 128, 228, 1),
    ("b3_1_conv_3x3", 256, 256, 3, 1, 1, 64, 114, 1),
    ("b4_1_conv_3x3", 512, 512, 3, 1, 1, 32, 57, 1),
    ("b5_1_conv_3x3_d2", 512, 1024, 3, 1, 2, 32, 57, 1),
    ("b7_conv_branch2b1_d4", 1024, 2048, 3, 1, 4, 32, 57, 1),
    ("b7_conv_branch1_1x1", 2048, 4096, 1, 1, 1, 32, 57, 1),
    ("decoder_fuse_1x1", 288, 96, 1, 1, 1, 40, 68, 8),
    ("decoder_conv_3x3_w64", 64, 64, 3, 1, 1, 40, 68, 8),
    ("decoder_conv_3x3_w96", 96, 96, 3, 1, 1, 40, 68, 8),
    ("decoder_conv_3x3_w128", 128, 128, 3, 1, 1, 40, 68, 8),
    ("decoder_conv_3x3_w192", 192, 192, 3, 1, 1, 40, 68, 8),
)


def _one(cin: int, cout: int, k: int, s: int, d: int, h: int, w: int, n: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(n, h, w, cin)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(k, k, cin, cout)) * 0.01, jnp.float32)
    pad = d * (k // 2)
    padding = ((pad, pad), (pad, pad))
    ho = (h + 2 * pad - d * (k - 1) - 1) // s + 1
    wo = (w + 2 * pad - d * (k - 1) - 1) // s + 1
    flops = 3 * 2 * n * ho * wo * k * k * cin * cout

    def loss(xx, kk):
        y = conv_ops.conv_general_dilated(
            xx, kk, (s, s), padding, rhs_dilation=(d, d), dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return jnp.sum(y * y)

    out: dict[str, Any] = {"gflop": round(flops / 1e9, 2)}
    previous = conv_ops.set_conv_impl("xla")
    try:
        for impl in ("xla", "taps"):
            conv_ops.set_conv_impl(impl)  # read at trace time, so each jit below is traced anew
            t = time_jitted(jax.grad(loss, argnums=(0, 1)), x, kernel, repeats=repeats)
            out[impl] = {"fwd_bwd_min_s": t["min_s"], "gflops": round(flops / t["min_s"] / 1e9, 1)}
    finally:
        conv_ops.set_conv_impl(previous)
    out["speedup"] = round(out["xla"]["fwd_bwd_min_s"] / out["taps"]["fwd_bwd_min_s"], 2)
    return out


def run(repeats: int = 3) -> dict[str, Any]:
    """Times every shape in ``SHAPES`` with both implementations; returns a JSON-able dict."""
    result: dict[str, Any] = {"benchmark": "conv", **host_info(), "shapes": {}}
    for name, cin, cout, k, s, d, h, w, n in SHAPES:
        result["shapes"][name] = _one(cin, cout, k, s, d, h, w, n, repeats)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    print_json(run(parser.parse_args().repeats))


if __name__ == "__main__":
    main()
